"""Private D-Bus buses and a private Avahi daemon for the senders' namespace.

WirePlumber needs a D-Bus session bus; PipeWire's and PulseAudio's `module-raop-discover`
browse through Avahi, which they reach over a D-Bus *system* bus. The machine's own buses
and Avahi must stay out of it (an Avahi outside the namespace would announce on the real
network), so each comes up here with a private config: its socket in the test's directory,
a permissive policy (only the test's own programs can reach the socket), Avahi restricted
to the namespace's veth with publishing off, and Avahi's fixed runtime directory
(/run/avahi-daemon) on a private tmpfs so parallel runs never share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.e2e.ns_process import NsProcess, wait_for

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{kind}</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

_AVAHI_CONFIG = """[server]
use-ipv4=yes
use-ipv6=yes
allow-interfaces={interface}
enable-dbus=yes
ratelimit-interval-usec=0
[wide-area]
enable-wide-area=no
[publish]
disable-publishing=yes
publish-addresses=no
publish-hinfo=no
publish-workstation=no
[reflector]
enable-reflector=no
"""


@dataclass
class Bus:
    """A running private dbus-daemon; `address` goes into DBUS_*_BUS_ADDRESS."""

    process: NsProcess
    socket: Path

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"


def start_bus(ns: str, directory: Path, kind: str) -> Bus:
    """A `kind` ("session" or "system") bus in `ns`, its socket and config under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / f"{kind}_bus"
    config = directory / f"{kind}-bus.conf"
    config.write_text(_BUS_CONFIG.format(kind=kind, socket=socket))
    argv = ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--nosyslog"]
    process = NsProcess(f"dbus-{kind}", ns, argv, directory / f"dbus-{kind}.log").start()
    wait_for(lambda: socket.exists() or _died(process), f"the {kind} bus socket")
    return Bus(process, socket)


def start_avahi(ns: str, directory: Path, interface: str, system_bus: Bus) -> NsProcess:
    """avahi-daemon in `ns` on `interface` only, on the private system bus; up when it returns."""
    config = directory / "avahi-daemon.conf"
    config.write_text(_AVAHI_CONFIG.format(interface=interface))
    argv = ["avahi-daemon", f"--file={config}", "--no-drop-root", "--no-chroot", "--no-rlimits"]
    avahi = NsProcess(
        "avahi-daemon",
        ns,
        argv,
        directory / "avahi-daemon.log",
        env={"DBUS_SYSTEM_BUS_ADDRESS": system_bus.address},
        private_run=["avahi-daemon"],
    ).start()
    avahi.wait_log(r"Server startup complete")
    return avahi


def _died(process: NsProcess) -> bool:
    if not process.running:
        raise AssertionError(f"{process.name} exited:\n{process.log}")
    return False
