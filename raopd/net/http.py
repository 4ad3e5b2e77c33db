"""HTTP on `http_port`, on the daemon's event loop: aiohttp, behind a connection guard.

aiohttp parses and answers requests (a well-kept server in place of the hand-written one
raopd had); this module adds what a port that anyone on the LAN can reach needs around it,
the guarantees the probes were given before:

- a connection must send a complete request head within `head_timeout` seconds (2: a probe
  sends it in one packet), and between keep-alive requests it may idle as long; the head has
  at most `MAX_HEADERS` fields of `MAX_LINE` bytes (400 beyond); a client that half-closes
  after its request still gets the answer;
- at most `max_waiting` connections may wait for a request head, `max_per_address` of them
  from one address; a newcomer over either limit closes the *oldest* waiting connection (an
  idle or trickling client) that has waited at least `evict_after` seconds, so probes are
  answered whatever other clients do; a connection that is being answered is never cut off
  to make room, nor one just opened (a browser or an Ingress opens several at once);
- at most `max_connections` connections in all (the event stream's clients included); beyond
  that a newcomer that finds nobody to evict is closed at once (`refused`);
- a request (other than an event stream, which bounds itself) must be answered and its answer
  taken by the client within `request_timeout` seconds, else the connection is cut, so a client
  that never reads cannot hold a connection; request bodies are at most `max_body` bytes (413);
- input aiohttp cannot parse gets its 400 and is counted (`bad_requests`), as is a client that
  leaves before taking its answer; neither is logged above DEBUG (aiohttp's own logger writes
  an ERROR with a traceback for each, a log that any client could flood);
- plain routes (`Response` values from functions without arguments: the probes, the metrics)
  keep their contract: GET and HEAD, `Cache-Control: no-store`, `Connection: close`; a route
  that raises gets 500 and a log line; the server never stops for a client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from raopd.core.sessionlog import clip

logger = logging.getLogger(__name__)

HEAD_TIMEOUT = 2.0  # seconds for a request head to arrive (and for an idle keep-alive)
REQUEST_TIMEOUT = 10.0  # seconds to answer a request and hand the answer to a slow reader
MAX_WAITING = 16  # connections waiting for a request head
MAX_PER_ADDRESS = 4  # of those, from one address: kubelet and a scraper need one each
MAX_CONNECTIONS = 300  # in all: the event stream's clients (200 by default) and the rest
EVICT_AFTER = 0.25  # seconds a connection waits for its head before it may be evicted
MAX_BODY = 64 * 1024  # bytes of a request body: the API takes small JSON objects
MAX_LINE = 8190  # bytes of the request line and of each header field (aiohttp's default)
MAX_HEADERS = 64  # header fields in a request head: bounds the head at 64 * MAX_LINE bytes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Response:
    """What a plain route returns: status, body and its media type, and any extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        """A plain-text response; a final newline is added for terminals."""
        return cls(status, (text.rstrip("\n") + "\n").encode())


Route = Callable[[], Response]


_F = TypeVar("_F", bound=Callable[..., Any])


def streaming(handler: _F) -> _F:
    """Mark a handler whose response is a long-lived stream: it bounds its own writes, and
    the per-request time limit does not apply to it."""
    handler._raopd_streaming = True  # type: ignore[attr-defined]
    return handler


@dataclass(slots=True, eq=False)
class _Connection:
    """One accepted connection, for the limits."""

    transport: asyncio.Transport
    address: str
    waiting_since: float  # when it started waiting for a request head
    waiting: bool = True
    streaming: bool = False  # an event stream is being sent on it
    deadline: asyncio.TimerHandle | None = None


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted (or not) by the server's limits."""

    def __init__(self, inner: asyncio.Protocol, server: HttpServer) -> None:
        self._inner = inner
        self._server = server
        self._admitted = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._admitted = self._server._admit(transport)
        if self._admitted:
            self._inner.connection_made(transport)
        else:
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            assert self._transport is not None
            self._server._forget(self._transport)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return None
        self._inner.eof_received()
        assert self._transport is not None
        connection = self._server._connections.get(self._transport)
        if connection is not None and connection.streaming:
            return None  # an event stream's reader has gone: close, which ends the stream
        # Otherwise keep the writing half open: a client that half-closes right after its
        # request (`nc -N`, HTTP/1.0 tools) still gets the answer (a false value would make
        # asyncio close the transport before the handler runs). A client that sent no
        # complete head is closed by the head deadline as any other.
        return True

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class _AiohttpLog(logging.LoggerAdapter[logging.Logger]):
    """The log aiohttp's request handlers write to: what the network sent wrong (a request that
    does not parse, a client gone before its answer) is counted and logged at DEBUG instead
    of as an ERROR with a traceback; anything else (a bug) is logged as aiohttp logs it."""

    def __init__(self, server: HttpServer) -> None:
        super().__init__(logger, {})
        self._server = server

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        elif isinstance(exc, tuple):
            exc = exc[1]
        if not isinstance(exc, HttpProcessingError | ConnectionError):
            super().log(level, msg, *args, **kwargs)
            return
        self._server.bad_requests += 1  # counted whatever the log level
        if self.isEnabledFor(logging.DEBUG):
            text = str(msg) % args if args else str(msg)
            self.logger.debug("HTTP %s: %s", clip(text), clip(exc))


class HttpServer:
    """Serves `routes` (path -> plain route) and `app`'s own routes on `address`:`port`."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        *,
        app: web.Application | None = None,
        address: str = "",
        port: int,
        head_timeout: float = HEAD_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_waiting: int = MAX_WAITING,
        max_per_address: int = MAX_PER_ADDRESS,
        max_connections: int = MAX_CONNECTIONS,
        evict_after: float = EVICT_AFTER,
    ) -> None:
        self.address = address
        self.port = port
        self.head_timeout = head_timeout
        self.request_timeout = request_timeout
        self.max_waiting = max_waiting
        self.max_per_address = max_per_address
        self.max_connections = max_connections
        self.evict_after = evict_after
        self.requests = 0  # requests that reached a handler, for tests and metrics
        self.refused = 0  # connections closed unanswered: over the limit, nobody to evict
        self.evicted = 0  # connections closed while waiting for a head, to make room
        self.expired = 0  # connections closed for sending no request head in time
        self.cut = 0  # requests not answered (or not taken by the client) in time
        self.bad_requests = 0  # unparsable requests, and clients gone before their answer
        self.app = app if app is not None else web.Application(client_max_size=MAX_BODY)
        self.app.middlewares.insert(0, self._guard)  # outermost: it accounts for connections
        self.app.on_response_prepare.append(_server_header)
        for path, route in routes.items():
            self.app.router.add_get(path, _plain(route))
        self._connections: dict[asyncio.Transport, _Connection] = {}
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (tests read the port from them)."""
        return list(self._server.sockets) if self._server is not None else []

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def waiting(self) -> int:
        """Connections waiting for a request head now."""
        return sum(1 for c in self._connections.values() if c.waiting)

    async def start(self) -> None:
        """Listen; an occupied port raises OSError, as the RTSP port does."""
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.head_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            logger=_AiohttpLog(self),
            # A client that leaves stops its handler (an event stream, a slow answer).
            handler_cancellation=True,
        )
        await runner.setup()
        self._runner = runner
        factory = runner.server
        assert factory is not None
        try:
            self._server = await self._loop.create_server(
                lambda: _Guarded(factory(), self),
                host=self.address or None,
                port=self.port,
                reuse_address=True,
            )
        except BaseException:
            await runner.cleanup()
            self._runner = None
            raise
        names = sorted({f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self.sockets})
        logger.info("HTTP (page, API, health, metrics) listening on %s", ", ".join(names))

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections.values()):
            connection.transport.abort()
        await self._server.wait_closed()
        self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ the guard

    def _admit(self, transport: asyncio.Transport) -> bool:
        """Admit a new connection, evicting the oldest waiting one where a limit says so."""
        assert self._loop is not None
        now = self._loop.time()
        peer = transport.get_extra_info("peername")
        newcomer = _Connection(transport, str(peer[0]) if peer else "", now)
        waiting = [c for c in self._connections.values() if c.waiting]
        same = [c for c in waiting if c.address == newcomer.address]
        if len(same) >= self.max_per_address:
            pool = same
        elif len(waiting) >= self.max_waiting or len(self._connections) >= self.max_connections:
            pool = waiting
        else:
            pool = []
        # Only a connection that has had time to send its head is taken for idle: a browser
        # (or an Ingress) opens several at once, and their heads are read a moment later.
        idle = [c for c in pool if now - c.waiting_since >= self.evict_after]
        if idle:
            self._drop(min(idle, key=lambda c: c.waiting_since))
            self.evicted += 1
        elif len(self._connections) >= self.max_connections:
            self.refused += 1
            return False
        self._connections[transport] = newcomer
        self._wait_for_head(newcomer)
        return True

    def _wait_for_head(self, connection: _Connection) -> None:
        assert self._loop is not None
        connection.waiting = True
        connection.waiting_since = self._loop.time()
        if connection.deadline is not None:
            connection.deadline.cancel()
        connection.deadline = self._loop.call_later(self.head_timeout, self._expire, connection)

    def _expire(self, connection: _Connection) -> None:
        connection.deadline = None
        if connection.waiting and connection.transport in self._connections:
            self.expired += 1
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        if connection.deadline is not None:
            connection.deadline.cancel()
            connection.deadline = None
        self._connections.pop(connection.transport, None)
        connection.transport.abort()

    def _forget(self, transport: asyncio.Transport) -> None:
        connection = self._connections.pop(transport, None)
        if connection is not None and connection.deadline is not None:
            connection.deadline.cancel()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self._connections.get(request.transport)  # type: ignore[arg-type]
        if connection is not None:
            connection.waiting = False
            if connection.deadline is not None:
                connection.deadline.cancel()
                connection.deadline = None
        self.requests += 1
        route_handler = request.match_info.route.handler
        try:
            if getattr(route_handler, "_raopd_streaming", False):
                if connection is not None:
                    connection.streaming = True
                return await handler(request)
            try:
                async with asyncio.timeout(self.request_timeout):
                    response = await handler(request)
                    # Sent here, inside the time limit: a client that never reads cannot
                    # hold the connection (aiohttp would otherwise wait for it forever).
                    if not response.prepared:
                        await response.prepare(request)
                    await response.write_eof()
                return response
            except TimeoutError:
                self.cut += 1
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPServiceUnavailable() from None
        finally:
            if connection is not None:
                connection.streaming = False
            if connection is not None and connection.transport in self._connections:
                self._wait_for_head(connection)  # keep-alive: idle again, evictable


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "raopd"  # not the Python and aiohttp versions


def _plain(route: Route) -> Handler:
    """An aiohttp handler for a plain route, with the probes' contract."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            answer = route()
        except Exception:
            logger.exception("HTTP %s failed", request.path)
            answer = Response.text(500, "internal error")
        response = web.Response(status=answer.status, body=answer.body)
        response.headers["Content-Type"] = answer.content_type
        response.headers["Cache-Control"] = "no-store"
        for name, value in answer.headers:
            response.headers[name] = value
        response.force_close()  # one request per connection, as probes and scrapers expect
        return response

    return handle
