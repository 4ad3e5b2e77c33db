"""The HTTP API, /api/v1: what is playing, the cover, the event stream, and remote control.

Read-only endpoints (state, artwork, history, events) are open unless `api_token_for_reading`
is set. Control endpoints go through the house's remote control (DACP where the sender has
it; `stop` always works, by ending the session) and want `Authorization: Bearer <token>`
when an `api_token` or a password is set (either one is accepted). Every error under /api/
is JSON, `{"error": <code>, "message": <why>}`, with a 4xx status for a bad request: an
unknown command or path (404), a wrong method (405), bad JSON or a bad volume (400), no or a
wrong token (401), a body that is too large (413), a sender that cannot be controlled (409).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from raopd.house.state import PlayerState
from raopd.net.http import Handler, streaming
from raopd.web.events import KEEPALIVE, SEND_BUFFER, WRITE_TIMEOUT, EventHub, encode

logger = logging.getLogger(__name__)

# The API's command names -> the DACP commands behind them.
COMMANDS = {
    "play": "play",
    "pause": "pause",
    "playpause": "playpause",
    "next": "nextitem",
    "previous": "previtem",
    "stop": "stop",
    "volume_up": "volumeup",
    "volume_down": "volumedown",
}

Remote = Callable[[str], Awaitable[str | None]]
SetVolume = Callable[[float], Awaitable[str | None]]


class ApiError(Exception):
    """An error answered as JSON."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error_response(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": code, "message": message}, status=status)
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="raopd"'
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors under /api/ as JSON, aiohttp's own (404, 405, 413) included."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        response = error_response(exc.status, codes.get(exc.status, "bad_request"), exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


@dataclass(slots=True)
class ApiCounters:
    """For /metrics and tests."""

    control: int = 0  # control requests done
    refused: int = 0  # answered 409: the sender cannot be controlled
    unauthorized: int = 0  # 401


@dataclass(slots=True)
class Api:
    """The endpoints, over the daemon's player state and remote control."""

    state: Callable[[], PlayerState]
    document: Callable[[PlayerState, str | None], dict[str, object]]
    hub: EventHub
    remote: Callable[[], Remote | None]
    set_volume: Callable[[], SetVolume | None]
    tokens: tuple[str, ...] = ()  # accepted Bearer tokens; empty: control is open
    tokens_for_reading: bool = False
    counters: ApiCounters = field(default_factory=ApiCounters)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/state", self.get_state)
        app.router.add_get("/api/v1/artwork", self.get_artwork)
        app.router.add_get("/api/v1/history", self.get_history)
        app.router.add_get("/api/v1/events", self.get_events)
        app.router.add_post("/api/v1/control/{command}", self.post_control)
        app.router.add_put("/api/v1/volume", self.put_volume)

    # ------------------------------------------------------------------- auth

    def _authorize(self, request: web.Request, *, reading: bool) -> None:
        if not self.tokens or (reading and not self.tokens_for_reading):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            self.counters.unauthorized += 1
            raise ApiError(401, "unauthorized", "this needs 'Authorization: Bearer <token>'")
        offered = given.strip().encode()
        if not any(hmac.compare_digest(offered, token.encode()) for token in self.tokens):
            self.counters.unauthorized += 1
            raise ApiError(401, "unauthorized", "wrong token")

    # -------------------------------------------------------------- read-only

    async def get_state(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request, reading=True)
        response = web.json_response(self.document(self.state(), None))
        response.headers["Cache-Control"] = "no-store"
        return response

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request, reading=True)
        response = web.json_response(self.hub.history_document())
        response.headers["Cache-Control"] = "no-store"
        return response

    async def get_artwork(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request, reading=True)
        artwork = self.state().artwork
        if artwork is None:
            raise ApiError(404, "no_artwork", "the sender sent no cover for this track")
        etag = f'"{artwork.etag}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        matches = request.headers.get("If-None-Match", "")
        if etag in (m.strip() for m in matches.split(",")) or matches.strip() == "*":
            return web.Response(status=304, headers=headers)
        response = web.Response(body=artwork.data, headers=headers)
        response.headers["Content-Type"] = artwork.content_type
        return response

    @streaming
    async def get_events(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request, reading=True)
        client = self.hub.connect()
        if client is None:
            raise ApiError(503, "too_many_clients", "too many event streams open; try later")
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",  # nginx (Ingress): pass events on at once
                }
            )
            transport = request.transport
            if transport is not None:
                # A small buffer: a client that stops reading is found out within seconds.
                transport.set_write_buffer_limits(high=SEND_BUFFER)
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.prepare(request)
                await response.write(b"retry: 2000\n\n" + self.hub.current(self.state()))
            while True:
                try:
                    event = await client.next(KEEPALIVE)
                except EOFError:
                    break  # dropped (fell behind) or the server is closing
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(event if event is not None else b": keep-alive\n\n")
            if client.dropped and request.transport is not None:
                request.transport.abort()  # it does not read: no goodbye that could block
            else:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write_eof()
        except TimeoutError:
            # It took no event in WRITE_TIMEOUT: a client that does not read. Cut it off.
            if not client.dropped:
                self.hub.counters.dropped += 1
            if request.transport is not None:
                request.transport.abort()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client left
        finally:
            self.hub.disconnect(client)
        return response

    # ---------------------------------------------------------------- control

    async def post_control(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request, reading=False)
        name = request.match_info["command"]
        command = COMMANDS.get(name)
        if command is None:
            known = ", ".join(COMMANDS)
            raise ApiError(404, "unknown_command", f"no command {name!r}; known: {known}")
        remote = self.remote()
        if remote is None:
            raise ApiError(409, "no_remote_control", "remote control is not available")
        self._count_control(await remote(command))
        return web.json_response({"ok": True, "command": name})

    async def put_volume(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request, reading=False)
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_json", "the body is not JSON") from None
        percent = _volume_percent(body)
        set_volume = self.set_volume()
        if set_volume is None:
            raise ApiError(409, "no_remote_control", "remote control is not available")
        self._count_control(await set_volume(percent))
        return web.json_response({"ok": True, "percent": percent})

    def _count_control(self, refusal: str | None) -> None:
        """Count a control request's outcome; a refusal (the sender said no) answers 409."""
        if refusal is not None:
            self.counters.refused += 1
            raise ApiError(409, "not_controllable", refusal)
        self.counters.control += 1


def _volume_percent(body: object) -> float:
    """The percent of a volume body: {"percent": 0..100} or {"airplay": -30..0}."""
    if not isinstance(body, dict) or len(body) != 1:
        raise ApiError(400, "bad_volume", 'want {"percent": 0..100} or {"airplay": -30..0}')
    ((key, value),) = body.items()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, "bad_volume", f"{key} must be a number")
    if key == "percent" and 0 <= value <= 100:
        return float(value)
    if key == "airplay" and -30 <= value <= 0:
        return (float(value) / 30.0 + 1.0) * 100.0
    raise ApiError(400, "bad_volume", 'want {"percent": 0..100} or {"airplay": -30..0}')


__all__ = ["COMMANDS", "Api", "ApiError", "encode", "json_errors"]
