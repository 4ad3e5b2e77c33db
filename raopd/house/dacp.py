"""Remote control back to the sender (DACP), and "stop", which always works.

A sender that can be remote-controlled says so with two RTSP headers, `DACP-ID` (64-bit hex)
and `Active-Remote` (a decimal token), and advertises `iTunes_Ctrl_<DACP-ID>._dacp._tcp` over
mDNS. A command is `GET /ctrl-int/1/<command>` to that service with `Active-Remote`; 204 (or
200) is success. The instance is found by browsing `_dacp._tcp` and comparing the ids as
numbers (senders and receivers disagree on case and leading zeros). Many senders have no DACP
(recent iOS and macOS ignore it, most third-party senders never had it): then the command is
refused with a reason that says so. "stop" is sent over DACP when possible, and the session
is ended from our side either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from raopd.house.state import PlayerState, Sender

logger = logging.getLogger(__name__)

DACP_TYPE = "_dacp._tcp.local."
PREFIX = "iTunes_Ctrl_"
RESOLVE_TIMEOUT = 2.0  # seconds to find and resolve the sender's service
HTTP_TIMEOUT = 2.0  # seconds for the command's answer (shairport-sync uses 0.5)
# The DACP commands a remote may send (shairport-sync's MQTT remote set; "stop" is also
# always honoured by ending the session ourselves), in the order they are offered.
COMMANDS = (
    "play",
    "pause",
    "playpause",
    "stop",
    "nextitem",
    "previtem",
    "beginff",
    "beginrew",
    "playresume",
    "shuffle_songs",
    "volumeup",
    "volumedown",
    "mutetoggle",
)


def dacp_number(dacp_id: str) -> int | None:
    """A DACP-ID as a number (None when it is not hex)."""
    try:
        return int(dacp_id, 16)
    except ValueError:
        return None


@dataclass(slots=True)
class DacpCounters:
    """For /metrics and tests."""

    sent: int = 0
    refused: int = 0  # no DACP, not found, or the sender said no


class DacpRemote:
    """Sends remote commands for whoever plays now (`state()`), ending the session for stop."""

    def __init__(
        self,
        zeroconf: Callable[[], AsyncZeroconf | None],
        state: Callable[[], PlayerState],
        stop_session: Callable[[], bool],
    ) -> None:
        self._zeroconf = zeroconf
        self._state = state
        self._stop_session = stop_session
        self._browser: AsyncServiceBrowser | None = None
        self._names: set[str] = set()
        self.counters = DacpCounters()

    def start(self) -> None:
        """Start browsing for DACP services (needs the daemon's zeroconf)."""
        zc = self._zeroconf()
        if zc is None or self._browser is not None:
            return
        self._browser = AsyncServiceBrowser(zc.zeroconf, DACP_TYPE, handlers=[self._on_change])

    async def close(self) -> None:
        """Stop browsing."""
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._names.discard(name)
        else:
            self._names.add(name)

    async def __call__(self, command: str) -> str | None:
        """Send `command`; None when done, else the reason it could not be."""
        if command not in COMMANDS:
            self.counters.refused += 1
            return f"unknown command {command!r}"
        state = self._state()
        sender = state.sender if state.status.value != "idle" else None
        if command == "stop":
            if sender is not None and sender.dacp_id and sender.active_remote:
                refusal = await self._send(sender, command)
                if refusal is not None:
                    logger.info("remote stop: %s; ending the session from our side", refusal)
            if not self._stop_session():
                self.counters.refused += 1
                return "nothing is playing"
            self.counters.sent += 1
            return None
        if sender is None:
            self.counters.refused += 1
            return "nothing is playing"
        refusal = await self._send(sender, command)
        if refusal is None:
            self.counters.sent += 1
        else:
            self.counters.refused += 1
        return refusal

    async def set_volume(self, percent: float) -> str | None:
        """Ask the sender to set its volume slider to `percent` (0..100) over DACP
        (`setproperty?dmcp.volume=`); the sender then sends the new volume as usual. None when
        done, else the reason it could not be."""
        state = self._state()
        sender = state.sender if state.status.value != "idle" else None
        if sender is None:
            self.counters.refused += 1
            return "nothing is playing"
        value = f"{min(max(percent, 0.0), 100.0):.6f}"
        refusal = await self._send(sender, f"setproperty?dmcp.volume={value}")
        if refusal is None:
            self.counters.sent += 1
        else:
            self.counters.refused += 1
        return refusal

    async def _send(self, sender: Sender, command: str) -> str | None:
        if not sender.dacp_id or not sender.active_remote:
            return f"{sender.display_name} offers no remote control (it sent no DACP-ID)"
        target = await self._find(sender.dacp_id)
        if target is None:
            return (
                f"{sender.display_name} offers no remote control (no DACP service "
                f"{PREFIX}{sender.dacp_id} found over mDNS)"
            )
        host, port = target
        try:
            status = await asyncio.wait_for(
                _http_get(host, port, f"/ctrl-int/1/{command}", sender.active_remote),
                HTTP_TIMEOUT,
            )
        except (OSError, TimeoutError, ValueError) as exc:
            return (
                f"the sender's remote control at {host}:{port} did not answer ({exc or 'timeout'})"
            )
        if status not in (200, 204):
            return f"the sender's remote control answered {status}"
        logger.info("remote %s sent to %s", command, sender.display_name)
        return None

    async def _find(self, dacp_id: str) -> tuple[str, int] | None:
        zc = self._zeroconf()
        wanted = dacp_number(dacp_id)
        if zc is None or wanted is None:
            return None
        self.start()
        names = [f"{PREFIX}{dacp_id}.{DACP_TYPE}"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESOLVE_TIMEOUT
        while True:
            names += [n for n in self._names if _id_of(n) == wanted and n not in names]
            for name in names:
                info = AsyncServiceInfo(DACP_TYPE, name)
                if await info.async_request(zc.zeroconf, 500) and info.port:
                    addresses = info.parsed_scoped_addresses()
                    if addresses:
                        return addresses[0], info.port
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.2)


def _id_of(name: str) -> int | None:
    instance = name.split(".", 1)[0]
    if not instance.startswith(PREFIX):
        return None
    return dacp_number(instance[len(PREFIX) :])


async def _http_get(host: str, port: int, path: str, active_remote: str) -> int:
    """One plain HTTP/1.1 GET; the status code."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        shown = f"[{host}]" if ":" in host else host
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {shown}:{port}\r\nActive-Remote: {active_remote}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await reader.readline()
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP answer: {line[:60]!r}")
        return int(parts[1])
    finally:
        writer.close()
