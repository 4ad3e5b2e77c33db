"""Compare two PCM WAV files frame for frame, ignoring edge digital silence.

A sender pads a stream with digital silence (all-zero frames) before and after
the programme, and a receiver may add some of its own while it starts; neither
is part of the audio. What remains between the first and the last non-zero
frame must be identical, byte for byte, in the same format.

Usage: compare_wav.py ACTUAL.wav EXPECTED.wav   (exit 0 if equal, 1 if not)
Standard library only: it runs on the build host, outside the image.
"""

from __future__ import annotations

import sys
import wave
from dataclasses import dataclass


@dataclass(frozen=True)
class Pcm:
    """Interleaved little-endian PCM with its format."""

    channels: int
    sample_width: int
    rate: int
    data: bytes

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.sample_width


def read_wav(path: str) -> Pcm:
    """Read a whole WAV file."""
    with wave.open(path, "rb") as w:
        return Pcm(
            w.getnchannels(), w.getsampwidth(), w.getframerate(), w.readframes(w.getnframes())
        )


def trim_silence(pcm: Pcm) -> tuple[bytes, int]:
    """Drop leading and trailing all-zero frames; return (data, leading frames dropped).

    A frame is silent only if every byte is zero, so the number of leading
    silent frames is the count of leading zero bytes divided by the frame size
    (rounded down), and likewise from the end (the partial frame stays).
    """
    fb = pcm.frame_bytes
    data = pcm.data[: len(pcm.data) - len(pcm.data) % fb]
    lead = (len(data) - len(data.lstrip(b"\0"))) // fb
    trail = (len(data) - len(data.rstrip(b"\0"))) // fb
    if lead * fb == len(data):
        return b"", lead
    return data[lead * fb : len(data) - trail * fb], lead


def first_difference(a: bytes, b: bytes) -> int:
    """Index of the first differing byte (len of the shorter if one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def main(argv: list[str]) -> int:
    """Compare and report; exit status 0 when the programme audio is identical."""
    actual, expected = read_wav(argv[1]), read_wav(argv[2])
    fmt_a = (actual.channels, actual.sample_width, actual.rate)
    fmt_e = (expected.channels, expected.sample_width, expected.rate)
    if fmt_a != fmt_e:
        print(f"format differs: actual {fmt_a}, expected {fmt_e} (channels, bytes, Hz)")
        return 1
    got, got_lead = trim_silence(actual)
    want, _ = trim_silence(expected)
    fb = expected.frame_bytes
    if got == want:
        print(
            f"identical: {len(want) // fb} frames after trimming "
            f"({got_lead} leading silent frames in the actual output)"
        )
        return 0
    at = first_difference(got, want) // fb
    print(
        f"differ: actual {len(got) // fb} frames, expected {len(want) // fb}, "
        f"first difference at programme frame {at}"
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
