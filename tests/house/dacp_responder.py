"""A DACP responder for tests: a real HTTP server advertised over real mDNS (python-zeroconf).

It stands in for the remote-control server of an iTunes or iOS sender: it answers
`GET /ctrl-int/1/<command>` with 204 when `Active-Remote` is right (403 otherwise) and records
every request. The mDNS record is `iTunes_Ctrl_<DACP-ID>._dacp._tcp.local.` on the given
address, so the receiver has to find it the way it finds a real sender's.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf


@dataclass
class DacpRequest:
    path: str
    headers: dict[str, str]


@dataclass
class DacpResponder:
    dacp_id: str
    active_remote: str
    address: str = "127.0.0.1"
    requests: list[DacpRequest] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _zeroconf: AsyncZeroconf | None = None
    _info: AsyncServiceInfo | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.address, 0)
        port = self._server.sockets[0].getsockname()[1]
        self._zeroconf = AsyncZeroconf(interfaces=[self.address], ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            "_dacp._tcp.local.",
            f"iTunes_Ctrl_{self.dacp_id}._dacp._tcp.local.",
            addresses=[socket.inet_aton(self.address)],
            port=port,
            properties={
                "txtvers": "1",
                "Ver": "131075",
                "DbId": "63B5E5C0C201542E",
                "OSsi": "0x1F5",
            },
            server="dacp-test-sender.local.",
        )
        await self._zeroconf.async_register_service(self._info)

    async def close(self) -> None:
        if self._zeroconf is not None and self._info is not None:
            await self._zeroconf.async_unregister_service(self._info)
            await self._zeroconf.async_close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            self.requests.append(DacpRequest(path, headers))
            ok = method == "GET" and headers.get("active-remote") == self.active_remote
            status = "204 No Content" if ok else "403 Forbidden"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()
