"""raopd's settings: one frozen `Config`, built from four layers.

Precedence, lowest first: built-in defaults < a config file < `RAOPD_<KEY>` environment
variables < command-line flags. Every key is flat and has the same name everywhere: `port` in
the TOML file, `RAOPD_PORT` in the environment, `--port` on the command line.

The config file is either raopd's own TOML (flat keys, no tables) or an existing
`shairport-sync.conf` (libconfig syntax), read as-is for the settings the two programs share;
the rest of a shairport-sync file is named in one warning line per setting and ignored. Which
of the two a file is follows from its content, whatever its name (a TOML file named
`raopd.conf` is TOML), or from an explicit `--config-format`; a file that is neither is an
error that quotes both parsers.

Every problem is a `ConfigError` with one line that says where the bad value came from (flag,
variable, file and line) and what is allowed; unknown keys suggest the closest valid one.

Mapping decisions for shairport-sync files:
- `general.volume_control_profile`: `flat` -> `flat`; `standard` and `dasl_tapered` ->
  `tapered` (raopd has one tapered curve; both shairport-sync tapers make the low half of the
  slider usable, which is what users of either want).
- `general.output_backend`: `alsa` is what raopd does; `stdout` -> `output = "-"`; `pipe` ->
  `output = pipe.name` (shairport-sync's default pipe path if unset); others are unsupported.
- `diagnostics.log_verbosity` 0/1/2+ -> `info`/`debug`/`trace`.
- shairport-sync's yes/no strings are booleans.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import math
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raopd import __version__
from raopd.errors import ConfigError
from raopd.libconfig import Value, parse_libconfig

logger = logging.getLogger(__name__)

DEFAULT_PORT = 5000
DEFAULT_HTTP_PORT = 9798
ENV_PREFIX = "RAOPD_"
# Environment variables with the prefix that are not settings: the CLI reads RAOPD_CONFIG as
# the default of --config.
ENV_RESERVED = frozenset({"RAOPD_CONFIG", "RAOPD_CONFIG_FORMAT"})
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
VOLUME_CURVES = ("tapered", "flat")
MAX_NAME_LENGTH = 50  # what shairport-sync allows; leaves room in the 63-byte mDNS label

Kind = Literal["str", "int", "float", "bool", "path"]
Check = Callable[[Any], str | None]  # returns what is wrong, or None


def _setting(
    default: Any,
    kind: Kind,
    help: str,
    check: Check | None = None,
    shown: str | None = None,
    *,
    topic: str | None = None,
    unit: str = "",
    metavar: str | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A Config field with what parsing, validation, --help and the docs need to know about it.

    `shown` describes the default when the value itself would not say much; `unit` is what
    the number counts (s, dB, frames, ...). `topic` starts a new group in --help and
    docs/configuration.md; a field without one belongs to the group of the field above it,
    so a new setting written under its neighbours lands in the right group. `flag` replaces
    the `--key-name` flag, `aliases` are extra flags that mean the same.
    """
    metadata = {
        "kind": kind,
        "help": help,
        "check": check,
        "shown": shown,
        "topic": topic,
        "unit": unit,
        "metavar": metavar,
        "flag": flag,
        "aliases": aliases,
    }
    return field(default=default, metadata=metadata)


def _int_range(low: int, high: int, note: str = "") -> Check:
    return lambda v: None if low <= v <= high else f"must be an integer from {low} to {high}{note}"


def _float_range(low: float, high: float, unit: str = "", note: str = "") -> Check:
    return lambda v: (
        None
        if math.isfinite(v) and low <= v <= high
        else f"must be from {low} to {high}{unit}{note}"
    )


def _choice(options: tuple[str, ...]) -> Check:
    return lambda v: None if v in options else "must be one of " + ", ".join(options)


def _ip_or_empty(value: str) -> str | None:
    if value == "":
        return None
    try:
        ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return "must be an IP address (or empty for all addresses)"
    return None


def _device_id(value: str | None) -> str | None:
    if value is None or re.fullmatch(r"[0-9A-F]{12}", value):
        return None
    return "must be 12 hex digits (6 bytes, colons allowed), e.g. 0A1B2C3D4E5F"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of the daemon. Field names are the keys of the file, env and flags.

    The order of the fields is the order of --help and docs/configuration.md; `topic=` starts
    a group. After adding or changing a field, run `make docs` (docs/configuration.md and the
    example config of k8s/ are generated from these fields; a test fails when they are stale).
    """

    # identity and network
    name: str = _setting(
        "%H",
        "str",
        "speaker name senders show; %h = host name, %H = host name with a capital first "
        "letter, %v = raopd version; at most 50 characters",
        shown="%H, the host name with a capital first letter",
        topic="Identity and network",
        metavar="NAME",
    )
    port: int = _setting(
        DEFAULT_PORT, "int", "RTSP (TCP) port", _int_range(1, 65535), metavar="PORT"
    )
    address: str = _setting(
        "", "str", "IP address to listen on", _ip_or_empty, shown="all addresses", metavar="IP"
    )
    interface: str = _setting(
        "",
        "str",
        "network interfaces (names or addresses) to advertise on, comma-separated; an "
        "interface that does not exist is an error",
        shown="all but loopback",
        metavar="IFACES",
    )
    device_id: str | None = _setting(
        None,
        "str",
        "the 12 hex digits before '@' in the mDNS name, also used in Apple-Response",
        _device_id,
        shown="derived from a MAC address (else random) once, then kept",
        metavar="HEX12",
    )
    state_dir: Path | None = _setting(  # noqa: RUF009 - _setting returns a dataclass field
        None,
        "path",
        "where a generated device id is kept",
        shown="$XDG_STATE_HOME/raopd, else /var/lib/raopd",
        metavar="DIR",
    )
    http_port: int = _setting(
        DEFAULT_HTTP_PORT,
        "int",
        "HTTP port for the web page, the API (/api/v1), /healthz, /readyz and /metrics (0: off)",
        _int_range(0, 65535),
        metavar="PORT",
    )
    web_event_clients: int = _setting(
        200,
        "int",
        "most clients of the API's event stream (/api/v1/events) at once; more get 503",
        _int_range(1, 1000),
        metavar="N",
    )
    udp_port_base: int = _setting(
        6001,
        "int",
        "first UDP port for the control, timing and audio ports of a session",
        _int_range(1, 65535),
        metavar="PORT",
    )
    udp_port_range: int = _setting(
        # Every RTSP connection holds three ports from accept to close, and senders open two at
        # a time (iTunes' challenge connection, then the session): 10 would allow only three.
        100,
        "int",
        "how many UDP ports from udp_port_base may be used (three per connection)",
        _int_range(3, 65535),
        unit="ports",
        metavar="N",
    )
    # security
    password: str | None = _setting(
        None,
        "str",
        "password senders must give; on the command line it is visible to other users of "
        "the machine (ps): prefer password_file or RAOPD_PASSWORD",
        shown="none",
        topic="Security",
        metavar="SECRET",
    )
    password_file: Path | None = _setting(  # noqa: RUF009 - _setting returns a dataclass field
        None,
        "path",
        "read the password from this file (its first line), e.g. a mounted Kubernetes Secret",
        shown="none",
        metavar="FILE",
    )
    api_token: str | None = _setting(
        None,
        "str",
        "token the HTTP API's control endpoints want as 'Authorization: Bearer <token>' (the "
        "password is accepted too); with neither set, anyone on the LAN may control playback",
        shown="none",
        metavar="TOKEN",
    )
    api_token_for_reading: bool = _setting(
        False,
        "bool",
        "want the token for the API's read-only endpoints too (the page, /healthz, /readyz and "
        "/metrics stay open)",
    )
    # audio output
    device: str = _setting(
        "default", "str", "ALSA PCM to play on", _non_empty, topic="Audio output", metavar="PCM"
    )
    output: str | None = _setting(
        None,
        "str",
        "write audio to this file instead of ALSA: raw S16_LE 44.1 kHz stereo, WAV if it ends "
        "in .wav, '-' for stdout",
        shown="none: play on ALSA",
        metavar="PATH",
    )
    # 2048 frames (46 ms): the output thread wakes once per period, and each wake-up has a
    # cost of its own; against 1024, raopd on ALSA's null device used 1.9-2.0 s of CPU per
    # audio minute instead of 2.4-2.6, with the same sync error on virtual time (worst p99
    # 0.181 against 0.179 ms, benchmarks/sync.py) and the buffer still four periods.
    period_frames: int = _setting(
        2048, "int", "ALSA period size", _int_range(32, 65536), unit="frames", metavar="FRAMES"
    )
    buffer_frames: int = _setting(
        8192,
        "int",
        "ALSA buffer size (at least 2 periods)",
        _int_range(64, 1048576),
        unit="frames",
        metavar="FRAMES",
    )
    # sessions
    allow_session_interruption: bool = _setting(
        False,
        "bool",
        "let a new sender take over from the one playing",
        topic="Sessions",
        aliases=("--allow-interruption",),
    )
    session_timeout: float = _setting(
        60.0,
        "float",
        "silence from a sender before its session ends (0: never)",
        _float_range(0.0, 86400.0, " s"),
        unit="s",
    )
    idle_timeout: float = _setting(
        10.0,
        "float",
        "time a connection that is not playing may go without a complete request",
        _float_range(1.0, 3600.0, " s"),
        unit="s",
    )
    max_connections_per_address: int = _setting(
        4,
        "int",
        "RTSP connections one address may hold (a new one closes its oldest idle one)",
        _int_range(1, 32),
        metavar="N",
    )
    resend: bool = _setting(True, "bool", "ask senders to resend lost packets")
    # timing
    latency_offset: float = _setting(
        0.0,
        "float",
        "added to the sender's latency (+ plays later, - earlier)",
        _float_range(-2.0, 2.0, " s"),
        topic="Timing and sync",
        unit="s",
    )
    drift_tolerance: float = _setting(
        # 0.1 ms, not shairport-sync's 2 ms: the playout widens the band to five times the
        # measured noise of its filtered delay reading (core/playout.py), so this is the floor
        # for a clean reading; a noisy one gets a wider band by itself.
        0.0001,
        "float",
        "sync error tolerated before correcting drift (the least; wider on a noisy device)",
        _float_range(0.0, 1.0, " s"),
        unit="s",
    )
    resync_threshold: float = _setting(
        0.050,
        "float",
        "sync error that triggers a hard resync (0: never)",
        _float_range(0.0, 10.0, " s"),
        unit="s",
    )
    max_correction_ppm: float = _setting(
        500.0,
        "float",
        "largest drift correction",
        _float_range(0.0, 10000.0, " ppm"),
        unit="ppm",
    )
    # volume
    volume_curve: str = _setting(
        "tapered",
        "str",
        "slider-to-dB curve: tapered or flat",
        _choice(VOLUME_CURVES),
        topic="Volume",
        metavar="CURVE",
    )
    volume_range_db: float | None = _setting(
        None,
        "float",
        "attenuation range of the volume slider",
        _float_range(30.0, 150.0, " dB"),
        shown="the mixer's own range, or 60 in software",
        unit="dB",
    )
    volume_max_db: float | None = _setting(
        None,
        "float",
        "loudest level relative to full scale",
        _float_range(-96.0, 24.0, " dB"),
        shown="0 in software, or the mixer's maximum",
        unit="dB",
    )
    ignore_volume: bool = _setting(False, "bool", "ignore volume changes from senders")
    default_volume: float = _setting(
        # Full scale: some senders never send a volume (PipeWire scales the samples itself)
        # and would otherwise be stuck at whatever this is.
        0.0,
        "float",
        "AirPlay volume before a sender sets one (-30..0, -144 = mute)",
        lambda v: (
            None
            if v == -144.0 or -30.0 <= v <= 0.0
            else "must be from -30.0 to 0.0, or -144 (mute)"
        ),
        unit="dB",
    )
    mixer_control: str | None = _setting(
        None,
        "str",
        "ALSA mixer control for hardware volume, e.g. PCM (samples then stay bit-exact)",
        shown="none: volume in software",
        metavar="CONTROL",
    )
    mixer_device: str | None = _setting(
        None, "str", "ALSA mixer device", shown="the card of device", metavar="CTL"
    )
    # metadata to other programs (shairport-sync's `metadata` section)
    metadata_pipe: str | None = _setting(
        None,
        "str",
        "FIFO to write shairport-sync's metadata items to (created if missing)",
        shown="none",
        topic="Metadata to other programs",
        metavar="FIFO",
    )
    metadata_pipe_timeout: float = _setting(
        5.0,
        "float",
        "seconds to wait for a stalled metadata pipe reader before dropping items",
        _float_range(0.0, 60.0, " s"),
    )
    metadata_socket_address: str | None = _setting(
        None,
        "str",
        "address (unicast or multicast) to send metadata items to over UDP",
        shown="none",
    )
    metadata_socket_port: int = _setting(
        5555, "int", "UDP port for metadata_socket_address", _int_range(1, 65535)
    )
    metadata_socket_msglength: int = _setting(
        500,
        "int",
        "largest metadata datagram; bigger items go in chunks",
        _int_range(500, 65000),
    )
    metadata_cover_art: bool = _setting(
        True, "bool", "pass cover art on (metadata pipe, UDP, MQTT cover)"
    )
    # MQTT and Home Assistant (shairport-sync's `mqtt` section)
    mqtt_host: str | None = _setting(
        None,
        "str",
        "MQTT broker host name or address",
        shown="none: MQTT off",
        topic="MQTT and Home Assistant",
        metavar="HOST",
    )
    mqtt_port: int = _setting(1883, "int", "MQTT broker port", _int_range(1, 65535))
    mqtt_username: str | None = _setting(None, "str", "MQTT user name", shown="none")
    mqtt_password: str | None = _setting(None, "str", "MQTT password", shown="none")
    mqtt_topic: str | None = _setting(
        None, "str", "MQTT topic everything is published under", shown="the speaker name"
    )
    mqtt_publish_parsed: bool = _setting(
        True, "bool", "publish artist, title, volume, play_start … as their own topics"
    )
    mqtt_publish_raw: bool = _setting(
        False, "bool", "publish every metadata item under <topic>/<type>/<code>"
    )
    mqtt_publish_cover: bool = _setting(True, "bool", "publish the cover art to <topic>/cover")
    mqtt_publish_retain: bool = _setting(False, "bool", "publish with the MQTT retain flag")
    mqtt_empty_payload: str = _setting(
        "--", "str", "payload sent instead of an empty one (play_start, play_end …)"
    )
    mqtt_remote: bool = _setting(False, "bool", "accept remote-control commands on <topic>/remote")
    mqtt_discovery: bool = _setting(True, "bool", "publish Home Assistant MQTT discovery")
    mqtt_discovery_prefix: str = _setting(
        "homeassistant", "str", "Home Assistant discovery prefix", _non_empty
    )
    # hooks (shairport-sync's `sessioncontrol` section)
    run_before_play_begins: str | None = _setting(
        None,
        "str",
        "command run when a stream starts",
        shown="none",
        topic="Hooks and webhooks",
        metavar="COMMAND",
    )
    run_after_play_ends: str | None = _setting(
        None, "str", "command run when a stream ends", shown="none"
    )
    run_before_entering_active_state: str | None = _setting(
        None, "str", "command run when the receiver becomes active", shown="none"
    )
    run_after_exiting_active_state: str | None = _setting(
        None,
        "str",
        "command run active_state_timeout after the last stream ended",
        shown="none",
    )
    run_when_volume_is_set: str | None = _setting(
        None, "str", "command run when the sender sets the volume (volume appended)", shown="none"
    )
    run_on_unfixable_error: str | None = _setting(
        None, "str", "command run when raopd gives up on an error", shown="none"
    )
    hook_wait_for_completion: bool = _setting(
        False,
        "bool",
        "hold the first audio until the start hooks finish (at most hook_timeout)",
    )
    hook_timeout: float = _setting(
        10.0,
        "float",
        "seconds a hook may run before it is killed",
        _float_range(0.1, 3600.0, " s"),
    )
    hook_shell: bool = _setting(
        False, "bool", "run hook commands through /bin/sh (else split like a shell, no shell)"
    )
    active_state_timeout: float = _setting(
        10.0,
        "float",
        "seconds after a stream ends before the receiver counts as inactive",
        _float_range(0.0, 86400.0, " s"),
    )
    webhook_urls: str = _setting(
        "", "str", "URLs to POST each hook event to as JSON, comma-separated", shown="none"
    )
    # diagnostics
    log_level: str = _setting(
        "info",
        "str",
        "trace, debug, info, warning, error or critical",
        _choice(LOG_LEVELS),
        topic="Diagnostics",
        metavar="LEVEL",
    )
    statistics: bool = _setting(False, "bool", "log playback statistics periodically")
    statistics_interval: float = _setting(
        8.0, "float", "time between statistics lines", _float_range(0.5, 3600.0, " s"), unit="s"
    )


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}


def setting_help(key: str) -> str:
    """The one-line description of a setting (for --help)."""
    return str(FIELDS[key].metadata["help"])


def setting_default_text(key: str) -> str:
    """The default of a setting as --help and the docs show it, with its unit."""
    field_ = FIELDS[key]
    if field_.metadata["shown"]:
        return str(field_.metadata["shown"])
    if isinstance(field_.default, bool):
        return "yes" if field_.default else "no"
    if field_.default == "":
        return "empty"
    unit = setting_unit(key)
    return f"{field_.default} {unit}" if unit else str(field_.default)


def setting_unit(key: str) -> str:
    """What a setting's number counts (s, dB, frames, ...), or ''."""
    return str(FIELDS[key].metadata.get("unit") or "")


def _topics() -> dict[str, str]:
    topics: dict[str, str] = {}
    current = "Other"
    for key, field_ in FIELDS.items():
        current = field_.metadata.get("topic") or current
        topics[key] = current
    return topics


def setting_topic(key: str) -> str:
    """The group a setting belongs to in --help and the docs."""
    return _TOPICS[key]


def topics() -> list[tuple[str, list[str]]]:
    """(topic, keys) in schema order."""
    grouped: dict[str, list[str]] = {}
    for key, topic in _TOPICS.items():
        grouped.setdefault(topic, []).append(key)
    return list(grouped.items())


def setting_flags(key: str) -> list[str]:
    """The command-line flags of a setting, the main one first."""
    meta = FIELDS[key].metadata
    main = meta.get("flag") or "--" + key.replace("_", "-")
    return [main, *meta.get("aliases", ())]


def setting_metavar(key: str) -> str:
    """The placeholder of a setting's value in --help."""
    meta = FIELDS[key].metadata
    if meta.get("metavar"):
        return str(meta["metavar"])
    unit = setting_unit(key)
    by_unit = {"s": "SECONDS", "dB": "DB", "ppm": "PPM", "frames": "FRAMES"}
    if unit in by_unit:
        return by_unit[unit]
    return {"int": "N", "float": "NUMBER", "path": "PATH"}.get(setting_kind(key), "TEXT")


def setting_kind(key: str) -> Kind:
    """How a setting's text is parsed: str, int, float, bool or path."""
    kind: Kind = FIELDS[key].metadata["kind"]
    return kind


def env_name(key: str) -> str:
    """The environment variable of a setting."""
    return ENV_PREFIX + key.upper()


_TOPICS = _topics()


# --------------------------------------------------------------------------------------------
# Loading


def load_config(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    path: Path | None,
    fmt: str = "auto",
) -> Config:
    """Build the Config from defaults, the file at `path`, `RAOPD_*` variables and flags.

    `fmt` is the file's format: "toml", "shairport-sync", or "auto" to tell by its content.

    `flags` holds only what the user gave on the command line, keyed by setting name; values
    may be typed already or text (parsed like environment values).
    """
    layers: list[tuple[str, object, str]] = []  # (key, value, origin) in precedence order
    if path is not None:
        layers.extend(_read_file(path, fmt))
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in ENV_RESERVED:
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in FIELDS:
            raise ConfigError(_unknown(var, key, prefix=ENV_PREFIX))
        layers.append((key, environ[var], var))
    for key, value in flags.items():
        if key not in FIELDS:
            raise ConfigError(_unknown("--" + key.replace("_", "-"), key, prefix="--"))
        layers.append((key, value, "--" + key.replace("_", "-")))

    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for key, raw, origin in layers:
        values[key] = _convert(key, raw, origin)
        origins[key] = origin

    if isinstance(values.get("device_id"), str):
        values["device_id"] = re.sub(r"[:\-]", "", str(values["device_id"])).upper()
    values["name"] = expand_name(str(values.get("name", FIELDS["name"].default)))
    for key, value in values.items():
        check: Check | None = FIELDS[key].metadata["check"]
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise ConfigError(f"{origins.get(key, 'default')}: {key} {problem}, got {value!r}")
    _read_password_file(values, origins)
    config = Config(**values)  # type: ignore[arg-type]
    _check_name(config.name, origins.get("name", "default"))
    _check_together(config, origins)
    return config


def _read_password_file(values: dict[str, object], origins: Mapping[str, str]) -> None:
    """Fill `password` from `password_file`: its first line, without the line end."""
    path = values.get("password_file")
    if path is None:
        return
    origin = origins.get("password_file", "default")
    if values.get("password") is not None:
        raise ConfigError(
            f"{origin}: password_file and password ({origins['password']}) are both given; keep one"
        )
    try:
        text = Path(str(path)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: cannot read password_file {path}: {exc}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"{origin}: password_file {path} is empty")
    values["password"] = password


def expand_name(template: str, hostname: str | None = None) -> str:
    """Expand %h (host name), %H (same, capital first letter) and %v (version)."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".", 1)[0]
    replacements = {
        "%h": host,
        "%H": host[:1].upper() + host[1:],
        "%v": __version__,
        "%%": "%",
    }
    return re.sub(r"%[hHv%]", lambda m: replacements[m.group()], template)


def _check_name(name: str, origin: str) -> None:
    if not name.strip():
        raise ConfigError(f"{origin}: name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(
            f"{origin}: name must be at most {MAX_NAME_LENGTH} characters, "
            f"got {len(name)} ({name!r})"
        )
    if any(ord(ch) < 32 for ch in name):
        raise ConfigError(f"{origin}: name must not contain control characters")


def _check_together(config: Config, origins: Mapping[str, str]) -> None:
    if config.udp_port_base + config.udp_port_range - 1 > 65535:
        where = origins.get("udp_port_range", origins.get("udp_port_base", "default"))
        raise ConfigError(
            f"{where}: udp_port_base + udp_port_range must stay within 65535, got "
            f"{config.udp_port_base} + {config.udp_port_range}"
        )
    if config.buffer_frames < 2 * config.period_frames:
        where = origins.get("buffer_frames", origins.get("period_frames", "default"))
        raise ConfigError(
            f"{where}: buffer_frames must be at least twice period_frames, got "
            f"{config.buffer_frames} < 2 x {config.period_frames}"
        )


def _unknown(shown: str, key: str, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.6)
    hint = ""
    if close:
        suggestion = close[0]
        if prefix == ENV_PREFIX:
            suggestion = env_name(suggestion)
        elif prefix == "--":
            suggestion = "--" + suggestion.replace("_", "-")
        hint = f" (did you mean {suggestion}?)"
    return f"unknown setting {shown}{hint}"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(key: str, raw: object, origin: str) -> object:
    """Turn a value from any layer into the field's Python type, or raise ConfigError."""
    kind = setting_kind(key)
    optional = FIELDS[key].default is None
    if isinstance(raw, str):
        text = raw.strip() if kind != "str" else raw
        if optional and text == "":
            return None
        try:
            if kind == "bool":
                lowered = text.lower()
                if lowered in _TRUE:
                    return True
                if lowered in _FALSE:
                    return False
                raise ValueError
            if kind == "int":
                return int(text, 0)
            if kind == "float":
                return float(text)
        except ValueError:
            expected = {
                "bool": "yes/no, true/false or 1/0",
                "int": "an integer",
                "float": "a number",
            }[kind]
            raise ConfigError(f"{origin}: {key} must be {expected}, got {raw!r}") from None
        return Path(text) if kind == "path" else text
    if raw is None and optional:
        return None
    ok = {
        "bool": isinstance(raw, bool),
        "int": isinstance(raw, int) and not isinstance(raw, bool),
        "float": isinstance(raw, int | float) and not isinstance(raw, bool),
        "str": False,
        "path": isinstance(raw, Path),
    }[kind]
    if not ok:
        expected = {
            "bool": "true or false",
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "path": "a path",
        }[kind]
        raise ConfigError(f"{origin}: {key} must be {expected}, got {raw!r}")
    return float(raw) if kind == "float" else raw  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Files


CONFIG_FORMATS = ("auto", "toml", "shairport-sync")
# Groups of a shairport-sync.conf: a TOML reading that finds one of these as a table is a
# libconfig file written without semicolons, which TOML happens to accept.
_SPS_GROUPS = frozenset(
    {"general", "sessioncontrol", "alsa", "pipe", "stdout", "diagnostics", "metadata", "mqtt"}
)


def _read_file(path: Path, fmt: str = "auto") -> list[tuple[str, object, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if fmt == "toml":
        return _read_toml(path, text)
    if fmt == "shairport-sync":
        return _read_shairport_sync(path, text)
    if fmt != "auto":
        raise ConfigError(f"--config-format must be one of {', '.join(CONFIG_FORMATS)}")
    return _read_sniffed(path, text)


def _read_sniffed(path: Path, text: str) -> list[tuple[str, object, str]]:
    """Tell raopd TOML from shairport-sync.conf by what the file holds, not by its name."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        toml_error: str | None = str(exc)
    else:
        toml_error = None
        if not (set(data) & _SPS_GROUPS and any(isinstance(v, dict) for v in data.values())):
            return _read_toml(path, text)
    try:
        return _read_shairport_sync(path, text)
    except ConfigError as exc:
        if toml_error is None:
            raise
        if _looks_like_libconfig(text):
            raise  # the libconfig error says where the shairport-sync file went wrong
        raise ConfigError(
            f"{path} is neither raopd TOML ({toml_error}) nor a shairport-sync.conf "
            f"({str(exc).removeprefix(str(path) + ':')}); "
            "--config-format toml or shairport-sync says which it is meant to be"
        ) from None


def _looks_like_libconfig(text: str) -> bool:
    """A `name = {` group or a `;` ending a setting: libconfig, not TOML."""
    return bool(re.search(r"^\s*[A-Za-z][-\w]*\s*[=:]\s*\{|;\s*$|^\s*@include", text, re.MULTILINE))


def _read_toml(path: Path, text: str) -> list[tuple[str, object, str]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    out: list[tuple[str, object, str]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: [{key}]: raopd's TOML file is flat (key = value lines, no tables)"
            )
        if key not in FIELDS:
            raise ConfigError(f"{path}: " + _unknown(key, key))
        # A quoted "5000" is parsed like an environment value: it is still clearly meant.
        out.append((key, value, f"{path}: {key}"))
    return out


# shairport-sync setting -> raopd key, with a converter for values that need one.
_SPS_DIRECT: dict[str, str] = {
    "general.name": "name",
    "general.port": "port",
    "general.password": "password",
    "general.interface": "interface",
    "general.address": "address",
    "general.udp_port_base": "udp_port_base",
    "general.udp_port_range": "udp_port_range",
    "general.audio_backend_latency_offset_in_seconds": "latency_offset",
    "general.volume_range_db": "volume_range_db",
    "general.volume_max_db": "volume_max_db",
    "general.ignore_volume_control": "ignore_volume",
    "general.default_airplay_volume": "default_volume",
    "general.drift_tolerance_in_seconds": "drift_tolerance",
    "general.resync_threshold_in_seconds": "resync_threshold",
    "general.session_timeout": "session_timeout",
    "sessioncontrol.session_timeout": "session_timeout",
    "sessioncontrol.allow_session_interruption": "allow_session_interruption",
    "alsa.output_device": "device",
    "alsa.mixer_control_name": "mixer_control",
    "alsa.mixer_device": "mixer_device",
    "alsa.period_size": "period_frames",
    "alsa.buffer_size": "buffer_frames",
    "diagnostics.statistics": "statistics",
    "metadata.socket_address": "metadata_socket_address",
    "metadata.socket_port": "metadata_socket_port",
    "metadata.include_cover_art": "metadata_cover_art",
    "mqtt.hostname": "mqtt_host",
    "mqtt.port": "mqtt_port",
    "mqtt.username": "mqtt_username",
    "mqtt.password": "mqtt_password",
    "mqtt.topic": "mqtt_topic",
    "mqtt.publish_raw": "mqtt_publish_raw",
    "mqtt.publish_parsed": "mqtt_publish_parsed",
    "mqtt.publish_cover": "mqtt_publish_cover",
    "mqtt.publish_retain": "mqtt_publish_retain",
    "mqtt.empty_payload_substitute": "mqtt_empty_payload",
    "mqtt.enable_remote": "mqtt_remote",
    "mqtt.enable_autodiscovery": "mqtt_discovery",
    "mqtt.autodiscovery_prefix": "mqtt_discovery_prefix",
    "sessioncontrol.run_this_before_play_begins": "run_before_play_begins",
    "sessioncontrol.run_this_after_play_ends": "run_after_play_ends",
    "sessioncontrol.run_this_before_entering_active_state": "run_before_entering_active_state",
    "sessioncontrol.run_this_after_exiting_active_state": "run_after_exiting_active_state",
    "sessioncontrol.run_this_when_volume_is_set": "run_when_volume_is_set",
    "sessioncontrol.run_this_if_an_unfixable_error_is_detected": "run_on_unfixable_error",
    "sessioncontrol.wait_for_completion": "hook_wait_for_completion",
    "sessioncontrol.active_state_timeout": "active_state_timeout",
}
_SPS_PROFILES = {"flat": "flat", "standard": "tapered", "dasl_tapered": "tapered"}
# The shairport-sync settings read with a conversion, and how (docs/configuration.md).
_SPS_CONVERTED: dict[str, tuple[str, str]] = {
    "general.volume_control_profile": (
        "volume_curve",
        "`flat` -> `flat`; `standard` and `dasl_tapered` -> `tapered`",
    ),
    "general.output_backend": (
        "output",
        '`alsa`: play on ALSA; `stdout` -> `output = "-"`; `pipe` -> `output` = `pipe.name`; '
        "others are not supported (warning)",
    ),
    "pipe.name": ("output", 'with `output_backend = "pipe"` (default /tmp/shairport-sync-audio)'),
    "diagnostics.log_verbosity": ("log_level", "0 -> `info`, 1 -> `debug`, 2 and 3 -> `trace`"),
    "diagnostics.disable_resend_requests": ("resend", "inverted: `yes` -> `resend = false`"),
    "metadata.enabled": (
        "metadata_pipe",
        "`yes` -> `metadata_pipe` = `metadata.pipe_name` (default /tmp/shairport-sync-metadata); "
        "every other metadata setting needs it",
    ),
    "metadata.pipe_name": ("metadata_pipe", 'with `metadata.enabled = "yes"`'),
    "metadata.pipe_timeout": ("metadata_pipe_timeout", "milliseconds there, seconds here"),
    "metadata.socket_msglength": (
        "metadata_socket_msglength",
        "clipped to 500..65000, as shairport-sync does",
    ),
    "mqtt.enabled": ("mqtt_host", "`no`: every other mqtt setting is ignored (warning)"),
}
_SPS_DEFAULT_PIPE = "/tmp/shairport-sync-audio"  # shairport-sync's own default
_SPS_DEFAULT_METADATA_PIPE = "/tmp/shairport-sync-metadata"
# Settings of these sections do nothing unless the section's `enabled` is "yes".
_SPS_NEEDS_ENABLED = ("metadata.", "mqtt.")


def shairport_sync_mapping() -> list[tuple[str, str, str]]:
    """(shairport-sync setting, raopd key, how) for every setting raopd reads from its file."""
    rows = [
        (sps, key, "as is (`yes`/`no`)" if setting_kind(key) == "bool" else "as is")
        for sps, key in _SPS_DIRECT.items()
    ]
    rows += [(sps, key, how) for sps, (key, how) in _SPS_CONVERTED.items()]
    return sorted(rows)


def _read_shairport_sync(path: Path, text: str) -> list[tuple[str, object, str]]:
    doc = parse_libconfig(text, str(path))
    leaves = dict(_flatten(doc.settings))
    out: list[tuple[str, object, str]] = []
    warned: set[str] = set()

    def origin(sps_key: str) -> str:
        return f"{path}:{doc.lines.get(sps_key, 0)}: {sps_key}"

    def unsupported(sps_key: str, why: str = "not supported by raopd") -> None:
        if sps_key not in warned:
            warned.add(sps_key)
            logger.warning("%s: %s is %s; ignored", path, sps_key, why)

    def enabled(section: str) -> bool:
        flag = leaves.get(f"{section}.enabled", "no")
        return bool(_sps_value("mqtt_remote", flag, origin(f"{section}.enabled")))

    for sps_key, value in leaves.items():
        if sps_key.startswith(_SPS_NEEDS_ENABLED) and not enabled(sps_key.split(".")[0]):
            if sps_key not in ("metadata.enabled", "mqtt.enabled"):
                unsupported(sps_key, f'only used with {sps_key.split(".")[0]}.enabled = "yes"')
            continue
        if sps_key in ("metadata.enabled", "mqtt.enabled"):
            if sps_key == "metadata.enabled":  # the pipe is on whenever metadata is
                pipe = leaves.get("metadata.pipe_name", _SPS_DEFAULT_METADATA_PIPE)
                out.append(("metadata_pipe", pipe, origin("metadata.pipe_name")))
        elif sps_key == "metadata.pipe_name":
            pass  # read with metadata.enabled
        elif sps_key == "metadata.pipe_timeout":  # milliseconds in shairport-sync
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{origin(sps_key)} must be milliseconds, got {value!r}")
            out.append(("metadata_pipe_timeout", min(value / 1000.0, 60.0), origin(sps_key)))
        elif sps_key == "metadata.socket_msglength":  # shairport-sync clips it into range
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{origin(sps_key)} must be an integer, got {value!r}")
            out.append(("metadata_socket_msglength", min(max(value, 500), 65000), origin(sps_key)))
        elif sps_key in _SPS_DIRECT:
            key = _SPS_DIRECT[sps_key]
            out.append((key, _sps_value(key, value, origin(sps_key)), origin(sps_key)))
        elif sps_key == "general.volume_control_profile":
            if not isinstance(value, str) or value not in _SPS_PROFILES:
                raise ConfigError(
                    f"{origin(sps_key)} must be one of "
                    + ", ".join(_SPS_PROFILES)
                    + f", got {value!r}"
                )
            out.append(("volume_curve", _SPS_PROFILES[value], origin(sps_key)))
        elif sps_key == "diagnostics.log_verbosity":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 3:
                raise ConfigError(f"{origin(sps_key)} must be 0, 1, 2 or 3, got {value!r}")
            out.append(("log_level", ("info", "debug", "trace", "trace")[value], origin(sps_key)))
        elif sps_key == "diagnostics.disable_resend_requests":
            disabled = _sps_value("resend", value, origin(sps_key))
            out.append(("resend", not disabled, origin(sps_key)))
        elif sps_key == "general.output_backend":
            if value == "stdout":
                out.append(("output", "-", origin(sps_key)))
            elif value == "pipe":
                pipe = leaves.get("pipe.name", _SPS_DEFAULT_PIPE)
                out.append(("output", pipe, origin("pipe.name")))
            elif value != "alsa":
                unsupported(
                    sps_key, f"{value!r}, an output raopd does not have (alsa, stdout, pipe)"
                )
        elif sps_key == "pipe.name":
            if leaves.get("general.output_backend") != "pipe":
                unsupported(sps_key, 'only used with output_backend = "pipe"')
        else:
            unsupported(sps_key)
    return out


def _flatten(settings: Mapping[str, Value], prefix: str = "") -> list[tuple[str, Value]]:
    out: list[tuple[str, Value]] = []
    for name, value in settings.items():
        full = f"{prefix}{name}"
        if isinstance(value, dict):
            out.extend(_flatten(value, full + "."))
        else:
            out.append((full, value))
    return out


def _sps_value(key: str, value: Value, origin: str) -> object:
    """shairport-sync writes booleans as "yes"/"no" strings; everything else maps directly."""
    if isinstance(value, list | dict):
        raise ConfigError(f"{origin} must be a single value, got a list")
    if setting_kind(key) == "bool" and isinstance(value, str):
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f'{origin} must be "yes" or "no", got {value!r}')
    return value


def describe_value(value: object) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


_SECRETS = frozenset({"password", "mqtt_password", "api_token"})


def describe(config: Config) -> str:
    """The effective settings as TOML lines (passwords hidden), for --print-config or logs."""
    lines = []
    for key in FIELDS:
        value = getattr(config, key)
        if value is None:
            lines.append(f"# {key} = (unset)")
            continue
        if key in _SECRETS:
            value = "********"
        lines.append(f"{key} = {describe_value(value)}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_PORT",
    "FIELDS",
    "Config",
    "ConfigError",
    "describe",
    "describe_value",
    "env_name",
    "expand_name",
    "load_config",
    "setting_default_text",
    "setting_flags",
    "setting_help",
    "setting_kind",
    "setting_metavar",
    "setting_topic",
    "setting_unit",
    "shairport_sync_mapping",
    "topics",
]
