"""Stream parameters from an ANNOUNCE's SDP body (types only in this branch).

This minimal version holds just the dataclasses the media layer needs, as the contract in
docs/architecture.md names them; the full module adds `parse_sdp()` on another branch and
supersedes this file when the two meet.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Codec(enum.Enum):
    """The audio codec named by the SDP `rtpmap` line."""

    ALAC = "AppleLossless"
    L16 = "L16"


@dataclass(frozen=True)
class AlacConfig:
    """The 11 numbers of the ALAC `fmtp` line, in order (ALACSpecificConfig)."""

    frame_length: int
    compatible_version: int
    bit_depth: int
    pb: int
    mb: int
    kb: int
    channels: int
    max_run: int
    max_frame_bytes: int
    avg_bit_rate: int
    sample_rate: int


@dataclass(frozen=True)
class StreamParams:
    """What the receiver needs to decrypt and decode one session's audio."""

    codec: Codec
    frames_per_packet: int = 352
    sample_rate: int = 44100
    channels: int = 2
    bits: int = 16
    alac: AlacConfig | None = None
    rsaaeskey: bytes | None = None
    aesiv: bytes | None = None
    min_latency_frames: int | None = None
    max_latency_frames: int | None = None
