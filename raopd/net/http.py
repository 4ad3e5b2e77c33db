"""A very small HTTP/1.1 server on the daemon's event loop, for probes and Prometheus.

It serves a fixed table of paths (`/healthz`, `/readyz`, `/metrics`), GET and HEAD only, one
request per connection (`Connection: close`): that is all kubelet probes and a Prometheus
scraper need, and it keeps the attack surface to one bounded read. A full web framework would
be a heavy dependency for three read-only pages.

Defensive by construction, because anything on the network can reach the port:
- the request head is at most `max_head_bytes` (431 beyond), must arrive within
  `read_timeout` seconds (2: a probe sends it in one packet), and may not carry a body (413);
- a malformed request line or header gets 400, an unknown version 505, another method 405,
  an unknown path 404;
- at most `max_connections` are served at once, `max_per_address` from one address; a
  newcomer over either limit closes the oldest connection still waiting for its request head
  (an idle or trickling client), so probes are answered whatever other clients do;
- a handler that raises gets 500 and a log line; the server itself never stops for a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
MAX_HEADERS = 64
READ_TIMEOUT = 2.0  # seconds for the whole request head: a probe sends it in one packet
WRITE_TIMEOUT = 10.0  # seconds to hand the response to a slow reader before giving up
MAX_CONNECTIONS = 16
MAX_PER_ADDRESS = 4  # kubelet and a Prometheus scraper need one each

# RFC 9110 token characters, for methods and header names.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")  # visible ASCII, no spaces or controls
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")


@dataclass(frozen=True, slots=True)
class Response:
    """What a route returns: status, body and its media type, and any extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        """A plain-text response; a final newline is added for terminals."""
        return cls(status, (text.rstrip("\n") + "\n").encode())


Route = Callable[[], Response]


class BadRequest(Exception):
    """The request cannot be served; `status` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Client:
    """One connection being served, for the connection limits."""

    address: str
    accepted_at: float
    reading: bool = True  # still waiting for its request head
    evicted: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of a request head the server looks at."""

    method: str
    path: str
    version: tuple[int, int]
    headers: dict[str, str]


def parse_head(head: bytes) -> Request:
    """Parse a request head (request line and headers, CRLF CRLF included or not).

    Raises `BadRequest` with 400, 413 or 505; never anything else.
    """
    lines = head.split(b"\r\n")
    while lines and lines[-1] == b"":
        lines.pop()
    # RFC 9112 §2.2: a server should ignore at least one empty line before the request line.
    while lines and lines[0] == b"":
        lines.pop(0)
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise BadRequest(400, "malformed request line")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise BadRequest(400, "malformed HTTP version")
    major, minor = int(match[1]), int(match[2])
    if major != 1:
        raise BadRequest(505, "only HTTP/1.x is supported")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header field")
        text = value.strip(b" \t")
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in text):
            raise BadRequest(400, "control character in a header field")
        key = name.decode("ascii").lower()
        # Repeated fields are joined as RFC 9110 §5.3 allows; only a few are read anyway.
        decoded = text.decode("latin-1")
        headers[key] = f"{headers[key]}, {decoded}" if key in headers else decoded
    if "transfer-encoding" in headers:
        raise BadRequest(413, "request bodies are not accepted")
    length = headers.get("content-length", "0").strip()
    if not length.isdigit():
        raise BadRequest(400, "malformed Content-Length")
    if int(length) != 0:
        raise BadRequest(413, "request bodies are not accepted")
    if major == 1 and minor >= 1 and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 request without Host")
    raw_path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if raw_path.startswith((b"http://", b"https://")):  # absolute form: keep only the path
        rest = raw_path.split(b"://", 1)[1]
        slash = rest.find(b"/")
        raw_path = rest[slash:] if slash >= 0 else b"/"
    if not (raw_path.startswith(b"/") or raw_path == b"*"):
        raise BadRequest(400, "malformed request target")
    return Request(
        method=method.decode("ascii"),
        path=raw_path.decode("ascii"),
        version=(major, minor),
        headers=headers,
    )


def render(response: Response, *, head_only: bool) -> bytes:
    """The response on the wire: HTTP/1.1, always Content-Length, always Connection: close."""
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class HttpServer:
    """Serves `routes` (path -> callable) on `address`:`port` ("" = all addresses)."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        *,
        address: str = "",
        port: int,
        max_head_bytes: int = MAX_HEAD_BYTES,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
    ) -> None:
        self.routes = dict(routes)
        self.address = address
        self.port = port
        self.max_head_bytes = max_head_bytes
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.requests = 0  # answered requests of any status, for tests and metrics
        self.refused = 0  # connections closed unanswered: over the limit, nothing to evict
        self.evicted = 0  # connections closed while waiting for their head, to make room
        self._server: asyncio.Server | None = None
        # Connections being served: (peer address, accepted at, still reading its head).
        self._active: dict[asyncio.Task[None], _Client] = {}

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (tests read the port from them)."""
        return list(self._server.sockets) if self._server is not None else []

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        """Listen; an occupied port raises OSError, as the RTSP port does."""
        self._server = await asyncio.start_server(
            self._serve,
            host=self.address or None,
            port=self.port,
            reuse_address=True,
            # The head must fit in the stream buffer for readuntil() to report an overrun.
            limit=self.max_head_bytes,
        )
        names = sorted({f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self.sockets})
        logger.info("HTTP (health, metrics) listening on %s", ", ".join(names))

    async def close(self) -> None:
        """Stop listening and drop connections still being served."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._active):
            task.cancel()
        for task in list(self._active):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        client = _Client(str(peername[0]) if peername else "", asyncio.get_running_loop().time())
        if not self._make_room(client):
            self.refused += 1
            writer.transport.abort()
            return
        self._active[task] = client
        try:
            await self._answer(reader, writer, client)
        except asyncio.CancelledError:
            if not client.evicted:
                raise
            writer.transport.abort()  # evicted: make room at once, no goodbye
        except Exception:  # the one supervision point: a client never stops the server
            logger.exception("HTTP connection failed")
        finally:
            self._active.pop(task, None)
            if not client.evicted:
                await self._close(writer)

    def _make_room(self, newcomer: _Client) -> bool:
        """True when `newcomer` may be served, evicting a client stuck before its head."""
        same = [t for t, c in self._active.items() if c.address == newcomer.address]
        if len(same) >= self.max_per_address:
            pool = same
        elif len(self._active) >= self.max_connections:
            pool = list(self._active)
        else:
            return True
        waiting = [t for t in pool if self._active[t].reading and not self._active[t].evicted]
        if not waiting:
            return False
        victim = min(waiting, key=lambda t: self._active[t].accepted_at)
        self._active[victim].evicted = True
        self._active.pop(victim)
        victim.cancel()
        self.evicted += 1
        return True

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        """Close after what is buffered is sent; a reader that does not take it is cut off."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)
        except (OSError, TimeoutError):
            writer.transport.abort()
        except asyncio.CancelledError:  # the server is closing
            writer.transport.abort()
            raise

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: _Client
    ) -> None:
        head_only = False
        try:
            head = await self._read_head(reader)
            client.reading = False
            if head is None:
                return  # the client left, or sent nothing in time: nobody to answer
            request = parse_head(head)
            head_only = request.method == "HEAD"
            response = self._dispatch(request)
            complete = True
        except BadRequest as exc:
            response = Response.text(exc.status, str(exc))
            complete = False  # unread input may follow
        self.requests += 1
        writer.write(render(response, head_only=head_only))
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            if writer.can_write_eof():
                writer.write_eof()
            if not complete:
                # Closing with unread input makes the kernel send a reset, which can destroy
                # the response before the client reads it: read to the client's end first.
                await asyncio.wait_for(self._discard_input(reader), self.read_timeout)

    async def _discard_input(self, reader: asyncio.StreamReader) -> None:
        budget = 16 * self.max_head_bytes
        while chunk := await reader.read(4096):
            budget -= len(chunk)
            if budget < 0:
                return  # a client that keeps sending gets the reset it asked for

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
        except asyncio.LimitOverrunError as exc:
            raise BadRequest(431, "request head too large") from exc
        except asyncio.IncompleteReadError as exc:
            if len(exc.partial) >= self.max_head_bytes:
                raise BadRequest(431, "request head too large") from exc
            return None
        except (TimeoutError, OSError):
            return None

    def _dispatch(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return replace(
                Response.text(405, "only GET and HEAD"), headers=(("Allow", "GET, HEAD"),)
            )
        route = self.routes.get(request.path)
        if route is None:
            return Response.text(404, f"no such page: {request.path}")
        try:
            return route()
        except Exception:
            logger.exception("HTTP %s failed", request.path)
            return Response.text(500, "internal error")
