"""shairport-sync's metadata pipe and metadata UDP socket, as a fan-out consumer.

The pipe is a FIFO (created 0666 if missing, as shairport-sync does). It is opened for
writing without blocking: with no reader the open fails (ENXIO) and the items are dropped
and counted, as shairport-sync drops them; a reader that comes later gets the items from
then on. Writes never block the event loop: the descriptor is non-blocking, and a full pipe
is waited on (via the loop) for at most `timeout` seconds; after that the pipe is closed
(the reader sees end of file, mid-item) and the rest of the item is dropped and counted.
A reader that goes away (EPIPE) makes the next item reopen the pipe.

The UDP socket sends each item to `address:port` (unicast or multicast), chunked when it
does not fit `msglength` (see `sps`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from raopd.house.sps import Item, VolumeRange, encode_datagrams, encode_pipe, items_for
from raopd.house.state import Change

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PipeCounters:
    """For /metrics and tests."""

    items_written: int = 0
    items_dropped: int = 0  # no reader, a stalled reader, or a write error
    timeouts: int = 0


class FifoWriter:
    """Writes bytes to a FIFO without ever blocking the event loop for long."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.counters = PipeCounters()
        self._fd: int | None = None
        self._warned: set[str] = set()

    def create(self) -> None:
        """Make the FIFO if it is not there (an existing non-FIFO is an error)."""
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            old = os.umask(0)
            try:
                os.mkfifo(self.path, 0o666)
            finally:
                os.umask(old)
            return
        if not stat.S_ISFIFO(mode):
            raise OSError(errno.EEXIST, f"{self.path} exists and is not a FIFO")

    def _open(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads now; that is normal
                self._warn_once(f"cannot open metadata pipe {self.path}: {exc.strerror}")
            return False
        return True

    def close(self) -> None:
        """Close the descriptor (the reader sees end of file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def write_item(self, data: bytes) -> bool:
        """Write one whole item; False (and counted) when it was dropped."""
        if not self._open():
            self.counters.items_dropped += 1
            return False
        assert self._fd is not None
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                if not await self._writable(deadline - loop.time()):
                    self.counters.timeouts += 1
                    self.counters.items_dropped += 1
                    self._warn_once(
                        f"metadata pipe {self.path}: reader stalled for {self.timeout:g} s; "
                        "closed it (items are dropped until a reader reads again)"
                    )
                    self.close()
                    return False
                continue
            except OSError as exc:  # EPIPE: the reader left; reopen for the next item
                self.counters.items_dropped += 1
                if exc.errno != errno.EPIPE:
                    self._warn_once(f"metadata pipe {self.path}: {exc.strerror}")
                self.close()
                return False
            view = view[written:]
        self.counters.items_written += 1
        return True

    async def _writable(self, timeout: float) -> bool:
        if timeout <= 0 or self._fd is None:
            return False
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self._fd

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, wake)
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return False
        finally:
            loop.remove_writer(fd)
        return True

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("%s", message)


class UdpMetadataSender:
    """Sends items as datagrams to one address (multicast allowed)."""

    def __init__(self, address: str, port: int, msglength: int) -> None:
        self.target = (address, port)
        self.msglength = msglength
        self.counters = PipeCounters()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, item: Item) -> None:
        """Send now (a full socket buffer drops the datagram, counted)."""
        try:
            for payload in encode_datagrams(item, self.msglength):
                self._sock.sendto(payload, self.target)
        except OSError as exc:
            self.counters.items_dropped += 1
            logger.debug("metadata UDP to %s:%d: %s", *self.target, exc)
        else:
            self.counters.items_written += 1

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


class MetadataPipeConsumer:
    """The fan-out consumer: each change as shairport-sync's items, to the pipe and/or UDP."""

    def __init__(
        self,
        pipe: FifoWriter | None,
        udp: UdpMetadataSender | None,
        *,
        cover_art: bool = True,
        volume_range: VolumeRange | None = None,
    ) -> None:
        self.pipe = pipe
        self.udp = udp
        self.cover_art = cover_art
        self.volume_range = volume_range or VolumeRange()

    async def __call__(self, change: Change) -> None:
        for item in items_for(change, cover_art=self.cover_art, volume_range=self.volume_range):
            if self.udp is not None:
                self.udp.send(item)
            if self.pipe is not None:
                await self.pipe.write_item(encode_pipe(item))

    def close(self) -> None:
        """Close the pipe and the socket."""
        if self.pipe is not None:
            self.pipe.close()
        if self.udp is not None:
            self.udp.close()
