"""The one definition of raopd's audio format and AirPlay 1's fixed timing constants.

AirPlay 1 streams are 44.1 kHz; raopd's PCM is int16, shape (frames, OUTPUT_CHANNELS),
from the decoder to the sink (a mono stream is duplicated to both channels at decoding).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FIXED_LATENCY_FRAMES",
    "FRAMES_PER_PACKET",
    "OUTPUT_CHANNELS",
    "SAMPLE_DTYPE",
    "SAMPLE_RATE",
]

SAMPLE_RATE = 44100
"""Frames per second of every AirPlay 1 stream and of raopd's output."""

OUTPUT_CHANNELS = 2
"""Channels of every PCM array after the decoder, and of the output."""

SAMPLE_DTYPE = np.dtype(np.int16)
"""Sample type inside raopd (native order; S16_LE on the wire to ALSA and files)."""

FRAMES_PER_PACKET = 352
"""Frames in a full RTP audio packet when the SDP names no other (Apple senders' value)."""

FIXED_LATENCY_FRAMES = 11025
"""Frames every AP1 sender expects on top of its sync packets' latency (protocol.md §6.2);
also what the receiver reports in RECORD's Audio-Latency header."""
