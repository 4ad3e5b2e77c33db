"""Advertise the receiver as `_raop._tcp` over mDNS with python-zeroconf's AsyncZeroconf.

- Instance `<HEX>@<name>` and TXT from `raopd.core.txt` (pure functions).
- Host name `raopd-<hex>.local.`: unique per device id, so it never fights with the host's own
  name when Avahi runs next to raopd (a frequent container problem).
- A and AAAA records for every non-loopback address of the chosen interfaces.
- Name conflicts: another responder already owns the name -> try "Name (2)", "Name (3)", ...
  (the Bonjour convention senders show); the hex prefix never changes. `service_name` and
  `speaker_name` say what was finally published.
- Address changes: the interface addresses are polled every `address_poll_interval` seconds
  (ifaddr, which zeroconf itself uses); on a change the sockets are reconciled (when raopd owns
  the zeroconf instance), the records re-announced with `async_update_service`, and
  `on_change` called (the daemon's readiness log).
- `close()` withdraws the service with goodbye packets (TTL 0), so senders drop the speaker at
  once instead of after the record's TTL.
QM and QU questions are both answered by zeroconf (QU by unicast when the record was multicast
recently, RFC 6762 §5.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from raopd import __version__
from raopd.core.txt import (
    MODEL,
    SERVICE_TYPE,
    conflict_suffix,
    instance_name,
    speaker_name,
    txt_record,
)

logger = logging.getLogger(__name__)

MAX_RENAMES = 50  # give up (and raise) after "Name (50)": something else is wrong
DEFAULT_ADDRESS_POLL = 10.0  # seconds; a DHCP renumbering is noticed within this time


class ReceiverLike(Protocol):
    """What the advertiser needs to know about the receiver (ReceiverInfo has it)."""

    @property
    def name(self) -> str: ...

    @property
    def hw_addr(self) -> bytes: ...

    @property
    def password(self) -> str | None: ...


AddressSource = Callable[[], list[str]]

# Sending to the mDNS group on a socket whose interface has no route for it (IPv6 on `::1`,
# an interface still without an address) fails with these: normal on a host, not a fault.
_EXPECTED_SEND_ERRORS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}
)


class ExpectedNetworkErrors(logging.Filter):
    """zeroconf logs a socket's send error once at WARNING with a traceback. For the errors
    every normal host produces (no route from that socket) this makes it one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError) and exc.errno in _EXPECTED_SEND_ERRORS:
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.INFO:
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_ZEROCONF_FILTER = ExpectedNetworkErrors()


def host_addresses(interfaces: Sequence[str] | None = None) -> list[str]:
    """Addresses to publish: all non-loopback IPv4/IPv6 addresses of the chosen interfaces.

    `interfaces` holds interface names or IP addresses; None means every interface. Loopback
    is left out unless it is chosen by name or address (tests advertise on 127.0.0.1).
    """
    chosen = set(interfaces or ())
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            explicit = adapter.nice_name in chosen or adapter.name in chosen or text in chosen
            if chosen and not explicit:
                continue
            if address.is_loopback and not explicit:
                continue
            if address.is_multicast or address.is_unspecified:
                continue
            found.append(str(address))
    return sorted(set(found), key=_address_order)


def _address_order(text: str) -> tuple[int, bytes]:
    address = ipaddress.ip_address(text)
    return (address.version, address.packed)


def zeroconf_interfaces(interfaces: Sequence[str] | None) -> InterfaceChoice | list[str | int]:
    """zeroconf's `interfaces` argument for interface names or addresses (None: all)."""
    if not interfaces:
        return InterfaceChoice.All
    chosen = set(interfaces)
    result: list[str | int] = []
    for adapter in ifaddr.get_adapters():
        by_name = adapter.nice_name in chosen or adapter.name in chosen
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                if by_name or ip.ip in chosen:
                    result.append(ip.ip)
            elif (by_name or ip.ip[0] in chosen) and adapter.index is not None:
                result.append(adapter.index)  # IPv6 multicast is joined by interface index
    for item in interfaces:  # addresses given directly need no adapter lookup
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(item).version == 4 and item not in result:
                result.append(item)
    return sorted(set(result), key=str)


class MdnsAdvertiser:
    """Publishes one `_raop._tcp` service for the life of the daemon."""

    def __init__(
        self,
        info: ReceiverLike,
        port: int,
        interfaces: Sequence[str] | None = None,
        zeroconf: AsyncZeroconf | None = None,
        *,
        addresses: AddressSource | None = None,
        address_poll_interval: float = DEFAULT_ADDRESS_POLL,
        model: str = MODEL,
        version: str = __version__,
    ) -> None:
        self.info = info
        self.port = port
        self.interfaces = list(interfaces) if interfaces else None
        self._zeroconf = zeroconf
        self._owns_zeroconf = zeroconf is None
        self._address_source = addresses or (lambda: host_addresses(self.interfaces))
        self.address_poll_interval = address_poll_interval
        self.txt = txt_record(password=bool(info.password), version=version, model=model)
        self.server = f"raopd-{info.hw_addr.hex()}.local."
        self.addresses: list[str] = []
        self._service: AsyncServiceInfo | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self.reannouncements = 0  # address changes published (for metrics)
        # Called after an address change is published (the daemon's readiness log).
        self.on_change: Callable[[], None] | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def registered(self) -> bool:
        """True while the service is announced (for /readyz)."""
        return self._service is not None

    @property
    def service_name(self) -> str:
        """The full instance name as published, e.g. `0A1B2C3D4E5F@Kitchen (2)`."""
        if self._service is None:
            return instance_name(self.info.hw_addr, self.info.name)
        return self._service.name[: -len(SERVICE_TYPE) - 1]

    @property
    def speaker_name(self) -> str:
        """What senders show: the part of the published name after '@'."""
        return speaker_name(self.service_name)

    @property
    def zeroconf(self) -> AsyncZeroconf | None:
        return self._zeroconf

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Probe, rename on conflict, announce; then watch the addresses."""
        zeroconf_log = logging.getLogger("zeroconf")
        if _ZEROCONF_FILTER not in zeroconf_log.filters:
            zeroconf_log.addFilter(_ZEROCONF_FILTER)
        if self._zeroconf is None:
            self._zeroconf = AsyncZeroconf(
                interfaces=zeroconf_interfaces(self.interfaces), ip_version=IPVersion.All
            )
        self.addresses = self._address_source()
        for attempt in range(1, MAX_RENAMES + 1):
            name = instance_name(self.info.hw_addr, self.info.name, conflict_suffix(attempt))
            service = self._service_info(name)
            try:
                announced = await self._zeroconf.async_register_service(service)
            except NonUniqueNameException:
                logger.info("mDNS name %r is taken on this network; trying another", name)
                continue
            self._service = service
            await announced
            break
        else:
            raise RuntimeError(f"no free mDNS name after {MAX_RENAMES} attempts")
        logger.info(
            "advertising %r on port %d (%s)",
            self.service_name,
            self.port,
            # readiness says "not ready" about the empty case; this only states the fact
            ", ".join(self.addresses)
            or f"no address yet; checked every {self.address_poll_interval:g} s",
        )
        if self.address_poll_interval > 0:
            self._poll_task = asyncio.create_task(self._poll_addresses(), name="mdns-addresses")

    async def refresh_addresses(self) -> bool:
        """Re-read the addresses; when they changed, publish them. True if they changed."""
        current = self._address_source()
        if current == self.addresses or self._zeroconf is None or self._service is None:
            return False
        logger.info("addresses changed: %s -> %s", self.addresses, current)
        self.addresses = current
        try:
            if self._owns_zeroconf and hasattr(self._zeroconf, "async_update_interfaces"):
                # New or vanished interface addresses need new or fewer sockets before announcing.
                await self._zeroconf.async_update_interfaces(zeroconf_interfaces(self.interfaces))
            self._service = self._service_info(self._service.name[: -len(SERVICE_TYPE) - 1])
            announced = await self._zeroconf.async_update_service(self._service)
            await announced
            self.reannouncements += 1
        finally:
            if self.on_change is not None:  # `addresses` changed, announced or not
                self.on_change()
        return True

    async def close(self) -> None:
        """Stop watching, send goodbyes, and close zeroconf if it is ours."""
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        zc = self._zeroconf
        if zc is None:
            return
        if self._service is not None:
            service, self._service = self._service, None
            with contextlib.suppress(Exception):  # a dead socket must not stop the shutdown
                done = await zc.async_unregister_service(service)
                await done
        if self._owns_zeroconf:
            await zc.async_close()
            self._zeroconf = None

    async def __aenter__(self) -> MdnsAdvertiser:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------
    def _service_info(self, name: str) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=self.port,
            properties=dict(self.txt),
            server=self.server,
            parsed_addresses=list(self.addresses),
        )

    async def _poll_addresses(self) -> None:
        failing = ""  # the error of the last poll; the same error again is not logged again
        while True:
            await asyncio.sleep(self.address_poll_interval)
            try:
                await self.refresh_addresses()
            except Exception as exc:  # keep polling: the next change may well succeed
                if str(exc) != failing:
                    logger.exception("re-announcing new addresses failed (will keep trying)")
                failing = str(exc)
                continue
            if failing:
                logger.info("re-announcing addresses works again")
                failing = ""
