"""Command-line entry point: `raopd [options]` runs the receiver, `raopd replay` decodes a capture.

Options are the settings of `raopd.config` (same names as the config file and the `RAOPD_*`
variables); only the ones actually given are passed on, so they override the file and the
environment without hiding them. Logs go to stderr, one line per record, so stdout can carry
audio (`--output -`). A bad configuration is one line, `raopd: <message>`, and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

# Before numpy is first imported: its OpenBLAS starts a worker thread per core that spins at
# start-up (0.13 s of CPU measured here) and then idles. raopd does no linear algebra worth
# a thread pool, and on a Pi the spare cores belong to the rest of the node.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from raopd import __version__
from raopd.config import (
    CONFIG_FORMATS,
    FIELDS,
    Config,
    describe,
    env_name,
    load_config,
    setting_default_text,
    setting_flags,
    setting_help,
    setting_kind,
    setting_metavar,
    topics,
)
from raopd.errors import ConfigError, RaopError
from raopd.stderr_log import StderrCapture

EXIT_CONFIG = 2
EXIT_DAMAGED = 3  # `raopd replay`: the capture cannot give the whole session
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `cat` in the same place
TRACE = 5  # below DEBUG: raopd's debug output plus third-party libraries' debug output
logging.addLevelName(TRACE, "TRACE")

logger = logging.getLogger("raopd")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2, like config errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"raopd: {message} (see raopd --help)\n")


def _help(key: str, extra: str = "") -> str:
    text = setting_help(key) + extra
    shown = setting_default_text(key)
    return f"{text} (default: {shown}; config key {key}, env {env_name(key)})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one option per setting of `raopd.config`, grouped by topic."""
    parser = _Parser(
        prog="raopd",
        # No abbreviations: with a flag per setting, `send --volume` would be taken for an
        # ambiguous prefix of --volume-curve & co. before the subcommand sees it.
        allow_abbrev=False,
        description="AirPlay 1 (RAOP) receiver: plays what Macs, iPhones and other senders "
        "stream. Settings come from defaults, then the config file, then RAOPD_<KEY> "
        "environment variables, then these options; every option below is also a config "
        "file key and a RAOPD_<KEY> variable (docs/configuration.md).",
        epilog="'raopd replay CAPTURE --output OUT' decodes a recorded session offline; "
        "'raopd send FILE --host H' streams a WAV file to a receiver.",
    )
    parser.add_argument("--version", action="version", version=f"raopd {__version__}")
    general = parser.add_argument_group("Config file and output of this command")
    general.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        type=Path,
        default=argparse.SUPPRESS,
        help="config file: raopd TOML (flat keys) or a shairport-sync.conf, told apart by "
        "content (default: $RAOPD_CONFIG, else none)",
    )
    general.add_argument(
        "--config-format",
        choices=CONFIG_FORMATS,
        default=argparse.SUPPRESS,
        help="what the config file is (default: $RAOPD_CONFIG_FORMAT, else auto: by content)",
    )
    general.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output: -v is --log-level debug, -vv is trace (debug output of the "
        "libraries too); an explicit --log-level wins",
    )
    general.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as TOML (password hidden) and exit",
    )
    # Every setting stores text (or a bool); load_config parses and validates it, so a bad
    # value gets the same message from a flag, a variable or the file.
    for topic, keys in topics():
        group = parser.add_argument_group(topic)
        for key in keys:
            flags = setting_flags(key)
            if setting_kind(key) == "bool":
                group.add_argument(
                    *flags,
                    dest=key,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=_help(key),
                )
                continue
            extra = "; -v/--verbose is a shorthand" if key == "log_level" else ""
            group.add_argument(
                *flags,
                dest=key,
                metavar=setting_metavar(key),
                default=argparse.SUPPRESS,
                help=_help(key, extra),
            )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
        dest="replay_output",
        metavar="OUT",
        type=Path,
        help="where to write the audio: WAV if it ends in .wav, '-' for stdout (the summary "
        "then goes to stderr), else raw S16_LE 44.1 kHz stereo (default: no audio written)",
    )
    _add_send_command(commands)
    return parser


def _add_send_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`raopd send FILE.wav --host H --port P ...`: raopd's own sender (raopd.tools.sender)."""
    send = commands.add_parser(
        "send",
        help="stream a WAV file to an AirPlay 1 receiver (raopd's own sender)",
        description="Stream a 16-bit 44.1 kHz stereo WAV file to an AirPlay 1 (RAOP) receiver "
        "in real time, as an Apple sender would, and print a JSON report of what happened on "
        "the wire. The fault options are for testing receivers.",
    )
    send.add_argument("send_file", metavar="FILE", type=Path, help="the WAV file to play")
    send.add_argument(
        "--host", dest="send_host", metavar="HOST", required=True, help="the receiver's address"
    )
    send.add_argument(
        "--port",
        dest="send_port",
        metavar="PORT",
        type=int,
        default=5000,
        help="RTSP port (default: 5000)",
    )
    send.add_argument(
        "--codec",
        dest="send_codec",
        choices=["alac", "alac-verbatim", "l16"],
        default="alac",
        help="compressed ALAC (default), uncompressed ALAC frames, or L16 PCM",
    )
    send.add_argument(
        "--no-encrypt", dest="send_encrypt", action="store_false", help="send audio in clear"
    )
    send.add_argument(
        "--password", dest="send_password", metavar="SECRET", help="the receiver's password"
    )
    send.add_argument(
        "--volume",
        dest="send_volume",
        metavar="DB",
        type=float,
        default=-15.0,
        help="AirPlay volume in dB, -30..0, -144 mutes (default: -15)",
    )
    send.add_argument(
        "--device-id",
        dest="send_device_id",
        metavar="HEX12",
        help="the receiver's device id (the hex before '@' in its name), to check its "
        "Apple-Response against",
    )
    send.add_argument(
        "--no-verify",
        dest="send_verify",
        action="store_false",
        help="go on even if the receiver's Apple-Response is missing or wrong",
    )
    send.add_argument(
        "--speed",
        dest="send_speed",
        metavar="FACTOR",
        type=float,
        default=1.0,
        help="send this many times faster than real time (for receivers writing files)",
    )
    send.add_argument(
        "--linger",
        dest="send_linger",
        type=float,
        metavar="SECONDS",
        help="wait this long after the last packet before TEARDOWN (default: the latency, "
        "1.75 s); 0 tears down at once",
    )
    for flag, dest, what in (
        ("--drop", "send_drop", "fraction of packets lost on their first send"),
        ("--reorder", "send_reorder", "probability of swapping a packet with the next"),
        ("--duplicate", "send_duplicate", "probability of sending a packet twice"),
    ):
        send.add_argument(
            flag, dest=dest, metavar="P", type=float, default=0.0, help=f"{what} (default: 0)"
        )
    send.add_argument(
        "--seed",
        dest="send_seed",
        metavar="N",
        type=int,
        default=0,
        help="seed for the fault choices",
    )


def _send(args: argparse.Namespace) -> int:
    """Run `raopd send`; prints the report as JSON."""
    import json

    from raopd.tools.sender import SenderOptions, send_file

    try:
        hw_addr = bytes.fromhex(args.send_device_id) if args.send_device_id else None
        options = SenderOptions(
            codec=args.send_codec,
            encrypt=args.send_encrypt,
            password=args.send_password,
            volume=args.send_volume,
            speed=args.send_speed,
            linger=args.send_linger,
            hw_addr=hw_addr,
            verify=args.send_verify,
            drop=args.send_drop,
            reorder=args.send_reorder,
            duplicate=args.send_duplicate,
            seed=args.send_seed,
        )
    except ValueError as exc:
        print(f"raopd send: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    problem = _check_send_options(args)
    if problem:
        print(f"raopd send: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("info")
    try:
        report = asyncio.run(send_file(args.send_file, args.send_host, args.send_port, options))
    except (OSError, RaopError) as exc:
        print(f"raopd send: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report.as_dict()))
    return 0


def _check_send_options(args: argparse.Namespace) -> str | None:
    """What is wrong with `raopd send`'s options, found before connecting to anyone."""
    volume = args.send_volume
    if not (volume == -144.0 or -30.0 <= volume <= 0.0):
        return f"--volume must be from -30 to 0 dB, or -144 (mute), got {volume:g}"
    if args.send_linger is not None and args.send_linger < 0:
        return f"--linger must not be negative, got {args.send_linger:g}"
    if not args.send_file.is_file():
        return f"{args.send_file}: no such file"
    return None


def flags_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The settings the user gave on the command line, keyed by setting name."""
    given = vars(args)
    flags: dict[str, object] = {key: given[key] for key in FIELDS if key in given}
    verbose = int(given.get("verbose", 0))
    if verbose and "log_level" not in flags:
        flags["log_level"] = "debug" if verbose == 1 else "trace"
    return flags


class _OneLineFormatter(logging.Formatter):
    """Keeps each record on one line (tracebacks included) so log collectors keep it whole."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def configure_logging(level: str, stream: object = None) -> None:
    """One stderr handler on the root logger; raopd at `level`, libraries at INFO unless trace."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_raopd", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler._raopd = True  # type: ignore[attr-defined]
    handler.setFormatter(
        _OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root.addHandler(handler)
    numeric = TRACE if level == "trace" else logging.getLevelName(level.upper())
    logging.getLogger("raopd").setLevel(numeric if numeric != TRACE else logging.DEBUG)
    root.setLevel(logging.DEBUG if numeric == TRACE else max(int(numeric), logging.INFO))


def load_from_args(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    """The Config for these parsed arguments and this environment."""
    path: Path | None = getattr(args, "config", None)
    if path is None and environ.get("RAOPD_CONFIG"):
        path = Path(environ["RAOPD_CONFIG"])
    fmt = getattr(args, "config_format", None) or environ.get("RAOPD_CONFIG_FORMAT") or "auto"
    if fmt not in CONFIG_FORMATS:
        raise ConfigError(
            f"RAOPD_CONFIG_FORMAT must be one of {', '.join(CONFIG_FORMATS)}, got {fmt!r}"
        )
    return load_config(flags_from_args(args), environ, path, fmt)


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (`raopd ... | head`): end quietly, as `cat` would.

    Python would otherwise try to flush stdout again at exit and print a second error; point
    stdout at /dev/null so that flush succeeds.
    """
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run raopd; returns the process exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return _replay(args)

    if args.command == "send":
        return _send(args)

    # Logging first, so warnings about the config file come out in the final format.
    configure_logging("info")
    try:
        config = load_from_args(args, dict(os.environ))
    except ConfigError as exc:
        print(f"raopd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:
        print(describe(config))
        sys.stdout.flush()  # a closed pipe shows here, inside main's BrokenPipeError guard
        return 0
    # While the daemon runs, alsa-lib's (and any C library's) stderr lines reach the log
    # through raopd's handler, timestamped and rate-limited, instead of raw on fd 2.
    capture = StderrCapture()
    capture.start()
    try:
        code, fatal = _run_daemon(args, config)
    finally:
        capture.stop()
        configure_logging(config.log_level)  # back on the restored stderr
    if fatal:
        print(f"raopd: {fatal}", file=sys.stderr)
    return code


def _run_daemon(args: argparse.Namespace, config: Config) -> tuple[int, str]:
    """Run the daemon until it stops: (exit code, the fatal error to print or '')."""
    configure_logging(config.log_level)
    if "password" in vars(args):
        logger.warning(
            "--password is visible to every user of this machine (ps, /proc/PID/cmdline); "
            "use --password-file or RAOPD_PASSWORD instead"
        )

    # The daemon pulls in sockets, ALSA and zeroconf: load it only when it is going to run.
    daemon = importlib.import_module("raopd.daemon")

    try:
        asyncio.run(daemon.run(config))
    except ConfigError as exc:  # e.g. an address that cannot be bound is still configuration
        return EXIT_CONFIG, str(exc)
    except (OSError, RaopError) as exc:
        logger.debug("fatal error", exc_info=True)
        return 1, str(exc)
    except KeyboardInterrupt:
        return 130, ""
    return 0, ""


def _replay(args: argparse.Namespace) -> int:
    """Run `raopd replay`: audio to the output, the summary to stdout (stderr if audio is there)."""
    from raopd.replay import replay

    to_stdout = args.replay_output is not None and str(args.replay_output) == "-"
    report = sys.stderr if to_stdout else sys.stdout
    try:
        summary = replay(args.capture, args.replay_output)
    except (OSError, RaopError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"raopd replay: {exc}", file=sys.stderr)
        return 1
    print(summary.render(), file=report)
    report.flush()
    if summary.damage:
        print(f"raopd replay: {summary.damage}", file=sys.stderr)
        return EXIT_DAMAGED
    return 0
