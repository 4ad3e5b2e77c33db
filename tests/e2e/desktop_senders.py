"""PipeWire and PulseAudio as real RAOP senders, started inside the senders' namespace.

These are the Debian packages a Linux desktop ships (PipeWire 0.3.65 with WirePlumber 0.4,
PulseAudio 16.1 with pulseaudio-module-raop), run as a user would, each with a private
runtime, state and config directory so nothing of the machine's own sound setup leaks in:

- PipeWire: a `pipewire` daemon with a small config (graph at 44.1 kHz and a 2048-frame
  minimum quantum: a loaded 2-core CI box makes the default 352-frame quantum underrun, which
  puts the sender's own silences on the wire), WirePlumber as its session manager (it links
  `pw-cat` to the sink; it needs a D-Bus session bus), and each RAOP sink as a separate
  `pipewire -c` client process that loads `libpipewire-module-raop-sink` (or
  `-raop-discover`), so a sink's lifetime is one process's. Audio is played with `pw-cat`.
- PulseAudio: `pulseaudio` with only the native protocol loaded; RAOP sinks come and go with
  `pactl load-module module-raop-sink ...` (or `module-raop-discover`); audio is played with
  `paplay` at 100 % sink volume, so PulseAudio sends 0 dB and leaves the samples untouched.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.ns_process import DEADLINE, NsProcess, run_in, wait_for
from tests.e2e.private_bus import Bus

PIPEWIRE_RATE = 44100
PIPEWIRE_MIN_QUANTUM = 2048

_PIPEWIRE_DAEMON_CONF = """context.properties = {{
    core.daemon = true
    core.name = pipewire-0
    default.clock.rate = {rate}
    default.clock.allowed-rates = [ {rate} ]
    default.clock.min-quantum = {quantum}
    default.clock.quantum = {quantum}
    default.clock.max-quantum = 8192
}}
context.spa-libs = {{
    audio.convert.* = audioconvert/libspa-audioconvert
    support.*       = support/libspa-support
}}
context.modules = [
    {{ name = libpipewire-module-protocol-native }}
    {{ name = libpipewire-module-profiler }}
    {{ name = libpipewire-module-metadata }}
    {{ name = libpipewire-module-spa-device-factory }}
    {{ name = libpipewire-module-spa-node-factory }}
    {{ name = libpipewire-module-client-node }}
    {{ name = libpipewire-module-client-device }}
    {{ name = libpipewire-module-access args = {{ }} }}
    {{ name = libpipewire-module-adapter }}
    {{ name = libpipewire-module-link-factory }}
    {{ name = libpipewire-module-session-manager }}
]
context.objects = [
    {{ factory = spa-node-factory
       args = {{ factory.name = support.node.driver node.name = Dummy-Driver
                 node.group = pipewire.dummy priority.driver = 20000 }} }}
]
"""

_PIPEWIRE_CLIENT_CONF = """context.properties = {{
    core.daemon = false
    core.name = {name}
}}
context.spa-libs = {{
    audio.convert.* = audioconvert/libspa-audioconvert
    support.*       = support/libspa-support
}}
context.modules = [
    {{ name = libpipewire-module-protocol-native }}
    {{ name = libpipewire-module-client-node }}
    {{ name = libpipewire-module-adapter }}
    {{ name = {module} args = {{ {args} }} }}
]
"""


def _spa_args(args: dict[str, str]) -> str:
    return " ".join(f'{key} = "{value}"' for key, value in args.items())


def _version(ns: str, argv: list[str], pattern: str) -> str:
    match = re.search(pattern, run_in(ns, argv).stdout)
    assert match, argv
    return match.group(1)


class PipeWire:
    """A private PipeWire + WirePlumber in namespace `ns` (see the module docstring)."""

    def __init__(
        self, ns: str, directory: Path, session_bus: Bus, system_bus: Bus | None = None
    ) -> None:
        self.ns = ns
        self.directory = directory
        self.runtime = directory / "run"
        for sub in ("run", "state", "config", "home"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.env = {
            "XDG_RUNTIME_DIR": str(self.runtime),
            "PIPEWIRE_RUNTIME_DIR": str(self.runtime),
            "XDG_STATE_HOME": str(directory / "state"),
            "XDG_CONFIG_HOME": str(directory / "config"),
            "HOME": str(directory / "home"),
            "DBUS_SESSION_BUS_ADDRESS": session_bus.address,
            "PIPEWIRE_LOG_SYSTEMD": "false",
        }
        if system_bus is not None:
            self.env["DBUS_SYSTEM_BUS_ADDRESS"] = system_bus.address
        self.processes: list[NsProcess] = []
        self._clients = 0

    def start(self) -> PipeWire:
        conf = self.directory / "pipewire.conf"
        conf.write_text(
            _PIPEWIRE_DAEMON_CONF.format(rate=PIPEWIRE_RATE, quantum=PIPEWIRE_MIN_QUANTUM)
        )
        self._spawn("pipewire", ["pipewire", "-c", str(conf)])
        wait_for(lambda: (self.runtime / "pipewire-0").exists(), "PipeWire's socket")
        self._spawn("wireplumber", ["wireplumber"])
        wait_for(self._wireplumber_ready, "WirePlumber to connect")
        return self

    @property
    def version(self) -> str:
        return _version(self.ns, ["pipewire", "--version"], r"libpipewire (\S+)")

    def dump(self) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = json.loads(self.run(["pw-dump"]).stdout)
        return objects

    def run(self, argv: list[str]) -> Any:
        return run_in(self.ns, argv, self.env)

    def _spawn(self, name: str, argv: list[str]) -> NsProcess:
        log = self.directory / f"{name}.log"
        process = NsProcess(name, self.ns, argv, log, env=self.env).start()
        self.processes.append(process)
        return process

    def _wireplumber_ready(self) -> bool:
        for process in self.processes:
            if not process.running:
                raise AssertionError(f"{process.name} exited:\n{process.log}")
        for obj in self.dump():
            props = obj.get("info", {}).get("props", {})
            if props.get("application.name") == "WirePlumber":
                return True
        return False

    def sink_ports(self, match: dict[str, str]) -> str | None:
        """The node.name of an Audio/Sink whose props include `match` and that has input ports."""
        objects = self.dump()
        for obj in objects:
            if obj.get("type") != "PipeWire:Interface:Node":
                continue
            props = obj.get("info", {}).get("props", {})
            if props.get("media.class") != "Audio/Sink":
                continue
            if any(props.get(key) != value for key, value in match.items()):
                continue
            ports = [
                o for o in objects
                if o.get("type") == "PipeWire:Interface:Port"
                and o.get("info", {}).get("props", {}).get("node.id") == obj["id"]
                and o.get("info", {}).get("direction") == "input"
            ]  # fmt: skip
            if len(ports) >= 2:
                return str(props["node.name"])
        return None

    @contextmanager
    def client(self, module: str, args: dict[str, str]) -> Iterator[NsProcess]:
        """A `pipewire -c` client process that loads `module` with `args`; ended on exit."""
        self._clients += 1
        name = f"raop-client-{self._clients}"
        conf = self.directory / f"{name}.conf"
        conf.write_text(
            _PIPEWIRE_CLIENT_CONF.format(name=name, module=module, args=_spa_args(args))
        )
        process = self._spawn(name, ["pipewire", "-c", str(conf)])
        try:
            yield process
        finally:
            process.stop()

    @contextmanager
    def raop_sink(self, host: str, port: int, **options: str) -> Iterator[str]:
        """libpipewire-module-raop-sink to `host`:`port`; yields the sink's node name.

        `options` are the module's own arguments with `_` for `.` (raop_transport="tcp").
        """
        node = f"raop_e2e_{self._clients + 1}"
        args = {"raop.hostname": host, "raop.port": str(port), "node.name": node}
        args.update({key.replace("_", "."): value for key, value in options.items()})
        with self.client("libpipewire-module-raop-sink", args) as process:
            wait_for(lambda: _alive(process) and self.sink_ports({"node.name": node}), "the sink")
            yield node

    @contextmanager
    def raop_discover(self, description: str) -> Iterator[str]:
        """libpipewire-module-raop-discover; yields the node name of the sink it made for the
        receiver advertised as `...@description`."""
        with self.client("libpipewire-module-raop-discover", {}) as process:
            found = wait_for(
                lambda: _alive(process) and self.sink_ports({"node.description": description}),
                f"a discovered sink for {description!r}",
                timeout=2 * DEADLINE,
            )
            yield str(found)

    @contextmanager
    def graph_rate(self, rate: int) -> Iterator[None]:
        """Force the graph to `rate` (PipeWire then resamples to the sink's 44.1 kHz)."""
        self.run(["pw-metadata", "-n", "settings", "0", "clock.force-rate", str(rate)])
        try:
            yield
        finally:
            self.run(["pw-metadata", "-n", "settings", "0", "clock.force-rate", "0"])

    def play(self, node: str, wav: Path) -> None:
        """pw-cat the WAV into `node`; returns when pw-cat has drained and exited."""
        run_in(
            self.ns, ["pw-cat", "-p", "--target", node, str(wav)], self.env, timeout=3 * DEADLINE
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class PulseAudio:
    """A private PulseAudio daemon in namespace `ns` (see the module docstring)."""

    def __init__(
        self, ns: str, directory: Path, session_bus: Bus, system_bus: Bus | None = None
    ) -> None:
        self.ns = ns
        self.directory = directory
        runtime = directory / "run"
        for sub in ("run", "state", "config", "home"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.env = {
            "XDG_RUNTIME_DIR": str(runtime),
            "PULSE_RUNTIME_PATH": str(runtime),
            "PULSE_STATE_PATH": str(directory / "state"),
            "XDG_CONFIG_HOME": str(directory / "config"),
            "HOME": str(directory / "home"),
            "DBUS_SESSION_BUS_ADDRESS": session_bus.address,
        }
        if system_bus is not None:
            self.env["DBUS_SYSTEM_BUS_ADDRESS"] = system_bus.address
        self.process: NsProcess | None = None
        self.starts = 0

    def start(self) -> PulseAudio:
        script = self.directory / "default.pa"
        script.write_text("load-module module-native-protocol-unix\n")
        self.starts += 1
        argv = ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1",
                "--use-pid-file=no", "--system=false", "--log-target=stderr", "-v"]  # fmt: skip
        log = self.directory / f"pulseaudio-{self.starts}.log"
        self.process = NsProcess("pulseaudio", self.ns, argv, log, env=self.env).start()
        self.process.wait_log(r"Daemon startup complete")
        return self

    @property
    def version(self) -> str:
        return _version(self.ns, ["pulseaudio", "--version"], r"pulseaudio (\S+)")

    @property
    def crashed_on_pollfd(self) -> bool:
        """PulseAudio 16.1's raop sink sometimes aborts right after RECORD (its own race)."""
        process = self.process
        return process is not None and not process.running and "Assertion 'pollfd'" in process.log

    def pactl(self, *args: str) -> str:
        return str(run_in(self.ns, ["pactl", *args], self.env).stdout)

    def sinks(self) -> list[str]:
        return [line.split("\t")[1] for line in self.pactl("list", "short", "sinks").splitlines()]

    @contextmanager
    def module(self, name: str, *args: str) -> Iterator[int]:
        index = int(self.pactl("load-module", name, *args).strip())
        try:
            yield index
        finally:
            if self.process is not None and self.process.running:
                self.pactl("unload-module", str(index))

    @contextmanager
    def raop_sink(self, server: str, **options: str) -> Iterator[str]:
        """module-raop-sink to `server` ("host:port" or "[v6]:port"); yields the sink name."""
        name = f"raop_e2e_{time.monotonic_ns()}"
        args = [f"server={server}", f"sink_name={name}", *(f"{k}={v}" for k, v in options.items())]
        with self.module("module-raop-sink", *args):
            wait_for(lambda: name in self.sinks(), "the raop sink")
            yield name

    @contextmanager
    def raop_discover(self) -> Iterator[str]:
        """module-raop-discover; yields the name of the sink it made (raop_output.<host>)."""
        with self.module("module-raop-discover"):
            found = wait_for(
                lambda: [s for s in self.sinks() if s.startswith("raop_output.")],
                "a discovered raop sink",
                timeout=2 * DEADLINE,
            )
            yield str(found[0])  # type: ignore[index]

    def play(self, sink: str, wav: Path) -> None:
        """paplay the WAV into `sink` at 100 % (0 dB: PulseAudio leaves the samples alone)."""
        self.pactl("set-sink-volume", sink, "100%")
        run_in(self.ns, ["paplay", "-d", sink, str(wav)], self.env, timeout=3 * DEADLINE)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def _alive(process: NsProcess) -> bool:
    if not process.running:
        raise AssertionError(f"{process.name} exited:\n{process.log}")
    return True
