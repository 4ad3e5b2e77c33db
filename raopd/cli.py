"""Command-line entry point: `raopd` runs the receiver, `raopd replay` decodes a capture."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raopd import __version__
from raopd.errors import RaopError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document every option in --help)."""
    parser = argparse.ArgumentParser(
        prog="raopd",
        description="AirPlay 1 (RAOP) receiver: plays what Macs, iPhones and other senders stream.",
    )
    parser.add_argument("--version", action="version", version=f"raopd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    replay = commands.add_parser(
        "replay",
        help="decode a recorded session (pcap) offline and print a summary",
        description="Decode a recorded AirPlay 1 session (classic pcap, e.g. from tcpdump -w) "
        "through raopd's protocol core, write its audio, and print a one-screen summary.",
    )
    replay.add_argument("capture", type=Path, help="the capture file (classic pcap)")
    replay.add_argument(
        "--output",
        "-o",
        type=Path,
        help="where to write the audio: WAV if it ends in .wav, else raw S16_LE 44.1 kHz stereo",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run raopd; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        from raopd.replay import replay

        try:
            summary = replay(args.capture, args.output)
        except (OSError, RaopError) as exc:
            print(f"raopd replay: {exc}", file=sys.stderr)
            return 1
        print(summary.render())
        return 0
    print("raopd: the receiver daemon is not built yet; try 'raopd replay'", file=sys.stderr)
    return 2
