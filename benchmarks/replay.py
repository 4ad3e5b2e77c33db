"""Replay each recorded capture through the core and report CPU cost against real time.

Prints one JSON object per capture: capture, audio_s (seconds of audio decoded), cpu_s (process
CPU time for the whole replay: pcap parsing, RTSP, RSA, AES, ALAC/L16 decoding, jitter buffer),
and x_realtime (audio_s / cpu_s). The best of a few runs is reported, so that a one-off
disturbance on the machine does not count.

    python benchmarks/replay.py [--runs N] [CAPTURE.pcap ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raopd.replay import replay

CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "captures"


def measure(capture: Path, runs: int) -> dict[str, object]:
    best = float("inf")
    frames = 0
    for _ in range(runs):
        start = time.process_time()
        summary = replay(capture, None)
        best = min(best, time.process_time() - start)
        frames = summary.frames_out
    audio_s = frames / 44100
    return {
        "capture": capture.name,
        "audio_s": round(audio_s, 3),
        "cpu_s": round(best, 4),
        "x_realtime": round(audio_s / best, 1) if best > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("captures", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    captures = args.captures or sorted(CAPTURES.glob("*.pcap"))
    for capture in captures:
        print(json.dumps(measure(capture, args.runs)), flush=True)


if __name__ == "__main__":
    main()
