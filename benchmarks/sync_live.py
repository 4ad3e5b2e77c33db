"""Sync on a paced output with real receivers: two on one sender, one recording, per run.

Scenarios (tests/live_sync.py does the work): raopd + raopd and raopd + shairport-sync
(Debian's 3.3.8), each with a sender whose sync stamps are accurate and one that sends in
100 ms bursts and stamps at burst time (node-airtunes2's way), `--seconds` of noise each.
Prints one JSON line per run: per receiver the true sync error (heard - meant) median/p99/max
after 2 s, bit-exact fraction, and for raopd its own statistics (sync error median/p99/max,
resyncs, corrections, DAC drift); per pair the offset between the receivers (median, p99);
per run what the machine did to the recording (`disturbances`: the longest gap between the
recorder's reads, steps of the sink's clock). A run with a read gap over 0.1 s or any step
was taken while the machine paused, and its figures are the rig's, not the receivers'
(docs/sync.md, section 4).

    sudo python benchmarks/sync_live.py [--seconds 60] [--pairs raopd+raopd raopd+shairport-sync]
                                        [--bursts 0 0.1] [--seeds 1] [--sps-tolerance S]

Needs root (network namespaces), pulseaudio, libasound2-plugins, and for shairport-sync:
shairport-sync, avahi-daemon, dbus.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.live_sync import scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pairs", nargs="*", default=["raopd+raopd", "raopd+shairport-sync"])
    parser.add_argument("--bursts", type=float, nargs="*", default=[0.0, 0.1])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1])
    parser.add_argument(
        "--sps-tolerance",
        type=float,
        default=None,
        help="shairport-sync's drift_tolerance_in_seconds (default: its own, 2 ms)",
    )
    args = parser.parse_args()
    for pair in args.pairs:
        first, second = pair.split("+")
        for burst in args.bursts:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    run = scenario(
                        Path(tmp),
                        (first, second),
                        seconds=args.seconds,
                        burst=burst,
                        seed=seed,
                        sps_tolerance=args.sps_tolerance,
                    )
                print(json.dumps({**run.as_dict(), "seconds": args.seconds, "seed": seed}))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
