"""`text/parameters` bodies (SET_PARAMETER / GET_PARAMETER): volume and progress.

A body is lines of `name: value`, CRLF or LF. GET_PARAMETER sends bare names
(`volume\\r\\n`), which come out with an empty value. Names are case-insensitive
and returned lower-cased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raopd.core.seq import RTP_MODULUS, rtp_diff
from raopd.errors import ProtocolError

VOLUME_MUTE = -144.0
VOLUME_MIN = -30.0
VOLUME_MAX = 0.0


def parse_parameters(body: bytes) -> dict[str, str]:
    """`name: value` lines -> {lower-cased name: stripped value}; the first of a repeat wins."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("text/parameters body is not UTF-8") from None
    result: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if not name:
            raise ProtocolError(f"parameter line without a name: {line[:60]!r}")
        result.setdefault(name, value.strip())
    return result


def parse_volume(text: str) -> float:
    """The `volume` value: -144.0 or below is mute, anything else is clamped to -30.0..0.0.

    Out-of-range values are clamped rather than refused: the slider position is
    all that matters, and a sender that overshoots still means "loudest".
    """
    try:
        volume = float(text)
    except ValueError:
        raise ProtocolError(f"volume is not a number: {text[:40]!r}") from None
    if not math.isfinite(volume):
        raise ProtocolError(f"volume is not finite: {text[:40]!r}")
    if volume <= VOLUME_MUTE:
        return VOLUME_MUTE
    return min(max(volume, VOLUME_MIN), VOLUME_MAX)


@dataclass(frozen=True, slots=True)
class Progress:
    """`progress: start/current/end`, three RTP timestamps (32-bit)."""

    start: int
    current: int
    end: int

    def position_frames(self) -> int:
        """Frames played so far: current - start, across a timestamp wrap."""
        return rtp_diff(self.current, self.start)

    def duration_frames(self) -> int:
        """Track length in frames: (end - start) mod 2**32."""
        return (self.end - self.start) % RTP_MODULUS


def parse_progress(text: str) -> Progress:
    """Parse `start/current/end`; values beyond 32 bits are reduced modulo 2**32.

    node-airtunes2 sends an `end` of 88228000000, far past 2**32, so refusing
    large values would refuse a real sender; as RTP timestamps they wrap anyway.
    """
    parts = text.strip().split("/")
    if len(parts) != 3:
        raise ProtocolError(f"progress is not start/current/end: {text[:60]!r}")
    values = []
    for part in parts:
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or len(part) > 20:
            raise ProtocolError(f"progress value is not a non-negative integer: {part[:30]!r}")
        values.append(int(part) % RTP_MODULUS)
    return Progress(values[0], values[1], values[2])
