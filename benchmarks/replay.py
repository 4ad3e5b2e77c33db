"""Replay each recorded capture through the core and report CPU cost against real time.

Prints one JSON object per capture: capture, audio_s (seconds of audio decoded), cpu_s (process
CPU time of the core's work on the session: RTSP, RSA, AES, ALAC/L16 decoding, jitter buffer,
events, writing nothing), x_realtime (audio_s / cpu_s), and pcap_cpu_s (reading and parsing
the capture file, which the daemon never does, reported apart). The best of a few runs is
reported, so that a one-off disturbance on the machine does not count.

    python benchmarks/replay.py [--runs N] [CAPTURE.pcap ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's raopd, whatever is installed

from raopd.replay import load_capture, run_replay  # noqa: E402

CAPTURES = ROOT / "tests" / "captures"


def measure(capture: Path, runs: int) -> dict[str, object]:
    best = best_load = float("inf")
    frames = 0
    for _ in range(runs):
        start = time.process_time()
        loaded = load_capture(capture)
        loaded_at = time.process_time()
        summary = run_replay(loaded, None)
        done = time.process_time()
        best_load = min(best_load, loaded_at - start)
        best = min(best, done - loaded_at)
        frames = summary.frames_out
    audio_s = frames / 44100
    return {
        "capture": capture.name,
        "audio_s": round(audio_s, 3),
        "cpu_s": round(best, 4),
        "x_realtime": round(audio_s / best, 1) if best > 0 else None,
        "pcap_cpu_s": round(best_load, 4),
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
