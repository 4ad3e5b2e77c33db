"""Sync accuracy on virtual time: the playout scenarios of tests/core, 10 simulated minutes each.

Prints one JSON object per scenario: clock difference (ppm: sender +ppm/2, DAC -ppm/2 against
the local clock), timing jitter, |sync error| p50/p99/max (true leave time vs the sender's
intended time, after 5 s), the clock estimate's own p99 error, net correction ppm, frames
inserted/dropped, resyncs. The simulation harness is tests/core/fake_dac.py (one place for the
fakes; nothing in raopd/ imports it).

    python benchmarks/sync.py [--seconds 600] [--filter envelope|median|min_rtt|low_rtt_median]
                              [--period FRAMES (default: raopd's ALSA period)]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raopd.config import Config
from tests.core.fake_dac import Scenario, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--filter", default=None)
    parser.add_argument("--jitter-ms", type=float, nargs="*", default=[0.0, 1.0, 5.0, 20.0])
    parser.add_argument(
        "--period", type=int, default=Config().period_frames, help="ALSA period in frames"
    )
    args = parser.parse_args()
    for jitter_ms in args.jitter_ms:
        for ppm in (-200, -50, 0, 50, 200):
            started = time.process_time()
            result = simulate(
                Scenario(
                    sender_ppm=ppm / 2,
                    dac_ppm=-ppm / 2,
                    jitter=jitter_ms / 1e3,
                    seconds=args.seconds,
                    seed=abs(ppm) + 7,
                    filter=args.filter,
                    period=args.period,
                    target=3 * args.period,
                )
            )
            line = {"ppm": ppm, "jitter_ms": jitter_ms, "period": args.period, **result.summary()}
            line["filter"] = result.clock.estimate().filter  # type: ignore[union-attr]
            line["cpu_s"] = round(time.process_time() - started, 2)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
