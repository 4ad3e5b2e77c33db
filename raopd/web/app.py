"""Everything http_port serves, as one aiohttp application: the page, the API, the probes.

`build(...)` wires the API to the house (player state, remote control) and the output, puts
the page's files (static/, shipped in the package) at `/` and `/static/`, and returns the
application with the event hub, which the daemon subscribes to the house's fan-out. Every
URL the page uses is relative, so it works behind an Ingress under a path prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from raopd.house.state import PlayerState
from raopd.net.http import MAX_BODY, Handler
from raopd.web.api import Api, Remote, SetVolume, json_errors
from raopd.web.events import EventHub
from raopd.web.view import Clock, OutputInfo, state_document

# name -> media type of the page's files
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "openapi.yaml": "application/yaml; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class PageFile:
    body: bytes
    content_type: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha1(self.body, usedforsecurity=False).hexdigest()[:20] + '"'


def load_page_files() -> dict[str, PageFile]:
    """The page's files from the package (read once: they do not change while running)."""
    folder = resources.files("raopd.web").joinpath("static")
    return {
        name: PageFile(folder.joinpath(name).read_bytes(), media)
        for name, media in PAGE_FILES.items()
    }


def _file_handler(page: PageFile) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": page.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == page.etag:
            return web.Response(status=304, headers=headers)
        response = web.Response(body=page.body, headers=headers)
        response.headers["Content-Type"] = page.content_type
        response.headers["X-Content-Type-Options"] = "nosniff"
        if page.content_type.startswith("text/html"):
            # The page loads nothing from elsewhere; say so, so a browser refuses if asked.
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
            )
            response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return handle


@dataclass(slots=True)
class Web:
    """The application and the parts the daemon needs to reach."""

    app: web.Application
    api: Api
    hub: EventHub


def build(
    *,
    state: Callable[[], PlayerState],
    clock: Clock,
    output: Callable[[], OutputInfo],
    remote: Callable[[], Remote | None],
    set_volume: Callable[[], SetVolume | None],
    tokens: tuple[str, ...] = (),
    tokens_for_reading: bool = False,
    max_event_clients: int = 200,
    speaker: str = "raopd",
) -> Web:
    """The web application over the player state (`state()`) and remote control."""

    def document(player: PlayerState, change: str | None) -> dict[str, object]:
        monotonic_now, wall_now = clock.now()
        return state_document(
            player,
            monotonic_now=monotonic_now,
            wall_now=wall_now,
            output=output(),
            change=change,
            speaker=speaker,
        )

    hub = EventHub(document, clock.wall, max_event_clients)
    api = Api(
        state=state,
        document=document,
        hub=hub,
        remote=remote,
        set_volume=set_volume,
        tokens=tuple(t for t in tokens if t),
        tokens_for_reading=tokens_for_reading,
    )
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    api.add_routes(app)
    files = load_page_files()
    app.router.add_get("/", _file_handler(files["index.html"]))
    for name, page in files.items():
        app.router.add_get(f"/static/{name}", _file_handler(page))
    app.router.add_get("/api/v1/openapi.yaml", _file_handler(files["openapi.yaml"]))
    return Web(app, api, hub)
