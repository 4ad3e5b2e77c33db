"""The HTTP API end to end: a real raopd process, raopd's own sender, an HTTP client.

Every answer is checked against the OpenAPI file the package ships (raopd/web/static/
openapi.yaml): its status must be one the operation declares, and its JSON body must match
the declared schema (JSON Schema 2020-12, which OpenAPI 3.1 schemas are).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import numpy as np
import yaml

from raopd.tools.sender import RaopSender, SenderError, SenderOptions
from tests.e2e.daemon import DEVICE_ID, Daemon, free_tcp_port, read_wav

ROOT = Path(__file__).resolve().parents[2]
JPEG = (ROOT / "tests" / "captures" / "art.jpg").read_bytes()
SPEC = yaml.safe_load((ROOT / "raopd" / "web" / "static" / "openapi.yaml").read_text())
DEADLINE = 30.0


def check(method: str, path: str, status: int, content_type: str, body: bytes) -> Any:
    """Validate one answer against the OpenAPI file; the decoded JSON (or None)."""
    operation = SPEC["paths"][path][method.lower()]
    assert str(status) in operation["responses"], f"{method} {path}: {status} not declared"
    declared = operation["responses"][str(status)]
    if "$ref" in declared:
        declared = SPEC["components"]["responses"][declared["$ref"].rsplit("/", 1)[1]]
    media = content_type.split(";")[0].strip()
    content = declared.get("content")
    if content is None:
        assert body == b"", f"{method} {path} {status}: no body declared"
        return None
    assert media in content, f"{method} {path} {status}: {media} not declared"
    if media != "application/json":
        return None
    value = json.loads(body)
    schema = {**SPEC, **content[media]["schema"]}  # refs resolve within the whole file
    jsonschema.Draft202012Validator(schema).validate(value)
    return value


class Api:
    """An HTTP client for one daemon's API that checks every answer."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()

    async def call(
        self, method: str, path: str, *, template: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.request(method, self.base + path, **kwargs) as reply:
            body = await reply.read()
            value = check(
                method, template or path.split("?")[0], reply.status,
                reply.headers.get("Content-Type", ""), body,
            )  # fmt: skip
            return reply.status, value if value is not None else body, reply

    async def state(self) -> dict[str, Any]:
        status, value, _ = await self.call("GET", "/api/v1/state")
        assert status == 200
        return value  # type: ignore[no-any-return]

    async def wait_state(self, what: str, condition: Any) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE
        while True:
            state = await self.state()
            if condition(state):
                return state
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {state}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.session.close()


class EventReader:
    """An SSE client: every `state` event, decoded and checked against the schema."""

    def __init__(self, api: Api) -> None:
        self.events: list[dict[str, Any]] = []
        self.api = api
        self.task = asyncio.create_task(self._run())
        self.opened = asyncio.Event()

    async def _run(self) -> None:
        async with self.api.session.get(self.api.base + "/api/v1/events") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "text/event-stream"
            self.opened.set()
            name = ""
            async for raw in reply.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name == "state":
                    value = json.loads(line[6:])
                    schema = {**SPEC, "$ref": "#/components/schemas/State"}
                    jsonschema.Draft202012Validator(schema).validate(value)
                    self.events.append(value)

    def changes(self) -> list[str | None]:
        return [e["change"] for e in self.events]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def sender_options(**extra: Any) -> SenderOptions:
    options: dict[str, Any] = {
        "codec": "alac",
        "encrypt": True,
        "hw_addr": bytes.fromhex(DEVICE_ID),
        "client_name": "Joe's iPhone",
        "dacp_id": "14413BE4996FEA4D",
        "active_remote": "1986535575",
        "user_agent": "AirPlay/381.13",
        "linger": 0.5,
    }
    return SenderOptions(**{**options, **extra})


async def start_with_http(start_daemon: Any, *extra: str) -> tuple[Daemon, Api]:
    port = free_tcp_port()
    daemon: Daemon = await start_daemon("--http-port", str(port), *extra)
    return daemon, Api(port)


async def test_state_artwork_and_events_follow_a_stream(start_daemon, test30):
    daemon, api = await start_with_http(start_daemon)
    events = EventReader(api)
    try:
        await asyncio.wait_for(events.opened.wait(), DEADLINE)
        idle = await api.state()
        assert idle["status"] == "idle" and idle["sender"] is None
        assert idle["output"] == {"device": str(daemon.output), "open": True}
        status, error, _ = await api.call("GET", "/api/v1/artwork")
        assert status == 404 and error["error"] == "no_artwork"

        pcm = np.ascontiguousarray(test30[: 4 * 44100])
        sender = RaopSender("127.0.0.1", daemon.port, sender_options())
        await sender.connect()
        rtptime = sender.report.first_rtptime
        dmap = [("minm", b"Fast Car"), ("asar", b"Tracy Chapman"), ("asal", b"Tracy Chapman")]
        await sender.set_metadata(dmap, rtptime)
        await sender.set_artwork(JPEG, "image/jpeg", rtptime)
        await sender.set_progress(rtptime, rtptime, rtptime + len(pcm))
        await sender.set_volume(-12.0)
        play = asyncio.create_task(sender.play(pcm))

        state = await api.wait_state("a sync tick", lambda s: s["sync"] is not None)
        assert state["status"] == "playing"
        assert state["track"]["title"] == "Fast Car"
        assert state["track"]["artist"] == "Tracy Chapman"
        assert state["track"]["album"] == "Tracy Chapman"
        assert state["sender"]["name"] == "Joe's iPhone" and state["sender"]["has_dacp"]
        assert state["volume"]["airplay"] == -12.0 and state["volume"]["percent"] == 60.0
        assert isinstance(state["volume"]["db"], float)
        assert state["stream"]["codec"] == "ALAC" and state["stream"]["encrypted"] is True
        assert state["progress"]["duration_s"] == 4.0
        assert 0.0 <= state["progress"]["position_now_s"] <= 4.0
        assert state["progress"]["moving"] is True
        assert abs(state["server_time"] - time.time()) < 5.0
        sync = state["sync"]
        assert sync["bit_exact"] is True and sync["packets_lost"] == 0

        status, body, reply = await api.call("GET", "/api/v1/artwork")
        assert status == 200 and body == JPEG
        assert reply.headers["Content-Type"] == "image/jpeg"
        etag = reply.headers["ETag"]
        assert etag == '"' + hashlib.sha1(JPEG).hexdigest() + '"'
        assert state["artwork"]["etag"] == etag.strip('"')
        status, body, _ = await api.call("GET", "/api/v1/artwork", headers={"If-None-Match": etag})
        assert status == 304 and body == b""

        # The sender's remote control is not running (no DACP service on loopback): 409.
        status, error, _ = await api.call(
            "POST", "/api/v1/control/next", template="/api/v1/control/{command}"
        )
        assert status == 409 and error["error"] == "not_controllable"
        assert "offers no remote control" in error["message"]

        await play
        await sender.teardown()
        await sender.close()
        state = await api.wait_state("idle", lambda s: s["status"] == "idle")
        assert state["progress"] is None and state["sync"] is None
        await asyncio.sleep(0)
        status, history, _ = await api.call("GET", "/api/v1/history")
        assert status == 200 and len(history["points"]) >= 1
    finally:
        await events.close()
        await api.close()
    seen = events.changes()
    assert seen[0] is None  # the state as it was, first
    for change in ("sender", "play_begin", "metadata", "artwork", "volume", "sync", "play_end"):
        assert change in seen, (change, seen)
    assert seen.index("play_begin") < seen.index("sync") < seen.index("play_end")
    assert events.events[-1]["status"] == "idle"
    assert await daemon.stop() == 0
    assert np.array_equal(read_wav(daemon.output), pcm)  # the API changed nothing in the audio


async def test_stop_ends_the_session(start_daemon, test30):
    daemon, api = await start_with_http(start_daemon)
    try:
        sender = RaopSender("127.0.0.1", daemon.port, sender_options(dacp_id=None))
        await sender.connect()
        play = asyncio.create_task(sender.play(np.ascontiguousarray(test30[: 20 * 44100])))
        state = await api.wait_state("playing", lambda s: s["status"] == "playing")
        assert state["remote"] == {
            "available": False,
            "stop": True,
            "reason": "Joe's iPhone offers no remote control (it sent no DACP-ID)",
        }
        status, error, _ = await api.call(
            "POST", "/api/v1/control/play", template="/api/v1/control/{command}"
        )
        assert status == 409 and "sent no DACP-ID" in error["message"]
        status, done, _ = await api.call(
            "POST", "/api/v1/control/stop", template="/api/v1/control/{command}"
        )
        assert status == 200 and done == {"ok": True, "command": "stop"}
        await api.wait_state("idle", lambda s: s["status"] == "idle")
        with contextlib.suppress(SenderError, ConnectionError, OSError):
            await asyncio.wait_for(play, DEADLINE)
        await sender.close()
    finally:
        await api.close()
    await daemon.stop()
    assert any("stopped by remote control" in line for line in daemon.log)


async def test_bad_requests_get_json_errors(start_daemon):
    daemon, api = await start_with_http(start_daemon, "--api-token", "s3cret")
    control = "/api/v1/control/{command}"
    try:

        async def expect(status: int, code: str, method: str, path: str, **kw: Any) -> None:
            got, error, _ = await api.call(method, path, **kw)
            assert (got, error["error"]) == (status, code), (method, path, error)

        auth = {"Authorization": "Bearer s3cret"}
        await expect(401, "unauthorized", "POST", "/api/v1/control/play", template=control)
        await expect(
            401, "unauthorized", "POST", "/api/v1/control/play", template=control,
            headers={"Authorization": "Bearer wrong"},
        )  # fmt: skip
        await expect(
            401, "unauthorized", "PUT", "/api/v1/volume", headers={"Authorization": "Basic x"},
            json={"percent": 50},
        )  # fmt: skip
        await expect(
            404, "unknown_command", "POST", "/api/v1/control/rewind", template=control,
            headers=auth,
        )  # fmt: skip
        await expect(409, "not_controllable", "POST", "/api/v1/control/play", template=control,
                     headers=auth)  # fmt: skip
        for body in (b"{bad", b"\xff\xfe", b""):
            await expect(400, "bad_json", "PUT", "/api/v1/volume", headers=auth, data=body)
        for value in (
            {"percent": 101}, {"percent": -1}, {"percent": "50"}, {"percent": True},
            {"airplay": -31}, {"airplay": 1}, {"level": 3}, [50], 50,
            {"percent": 50, "airplay": -10},
        ):  # fmt: skip
            await expect(400, "bad_volume", "PUT", "/api/v1/volume", headers=auth, json=value)
        await expect(409, "not_controllable", "PUT", "/api/v1/volume", headers=auth,
                     json={"percent": 50})  # fmt: skip
        # Reading stays open without the token; the probes too.
        assert (await api.state())["status"] == "idle"
        async with api.session.get(api.base + "/healthz") as reply:
            assert reply.status == 200 and await reply.text() == "ok\n"
        # aiohttp's own errors under /api/ are JSON too.
        async with api.session.get(api.base + "/api/v1/nothing") as reply:
            assert reply.status == 404 and (await reply.json())["error"] == "not_found"
        async with api.session.delete(api.base + "/api/v1/state") as reply:
            assert reply.status == 405
            assert (await reply.json())["error"] == "method_not_allowed"
        async with api.session.put(
            api.base + "/api/v1/volume", data=b"x" * (128 * 1024), headers=auth
        ) as reply:
            assert reply.status == 413 and (await reply.json())["error"] == "body_too_large"
        assert await metric(api, "raopd_api_unauthorized_total") == 3
        assert await metric(api, "raopd_api_control_refused_total") == 2
        # An open event stream does not hold up shutdown: it ends, and raopd exits cleanly.
        events = EventReader(api)
        await asyncio.wait_for(events.opened.wait(), DEADLINE)
        assert await daemon.stop() == 0
        await asyncio.wait_for(events.task, DEADLINE)  # the stream ended cleanly
    finally:
        await api.close()


async def metric(api: Api, name: str) -> float:
    async with api.session.get(api.base + "/metrics") as reply:
        for line in (await reply.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_token_for_reading_closes_the_api_but_not_the_page_or_probes(start_daemon):
    daemon, api = await start_with_http(
        start_daemon, "--api-token", "s3cret", "--api-token-for-reading"
    )
    auth = {"Authorization": "Bearer s3cret"}
    try:
        for path in ("/api/v1/state", "/api/v1/history", "/api/v1/events", "/api/v1/artwork"):
            status, error, _ = await api.call("GET", path)
            assert (status, error["error"]) == (401, "unauthorized"), path
        status, state, _ = await api.call("GET", "/api/v1/state", headers=auth)
        assert status == 200 and state["status"] == "idle"
        for path in ("/", "/static/app.js", "/healthz", "/metrics"):
            async with api.session.get(api.base + path) as reply:
                assert reply.status == 200, path
                assert reply.headers["Server"] == "raopd"
    finally:
        await api.close()
    await daemon.stop()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_many_event_clients_and_one_that_never_reads(start_daemon, test30):
    """200 event streams open and close while audio plays: memory comes back to where it was,
    the audio is bit-exact with nothing lost; the 201st stream is refused; a client that never
    reads is dropped while a stream of changes goes on."""
    daemon, api = await start_with_http(start_daemon)
    assert daemon.process is not None
    pid = daemon.process.pid
    port = int(api.base.rsplit(":", 1)[1])
    pcm = np.ascontiguousarray(test30[: 12 * 44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    try:
        await sender.connect()
        await sender.set_volume(-10.0)
        play = asyncio.create_task(sender.play(pcm))
        await api.wait_state("playing", lambda s: s["status"] == "playing")

        async def open_streams(n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            streams = []
            for _ in range(n):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /api/v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
                streams.append((reader, writer))
            for reader, _ in streams:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
                assert head.startswith(b"HTTP/1.1 200")
            return streams

        async def close_streams(streams: list[Any]) -> None:
            for _, writer in streams:
                writer.close()

        streams = await open_streams(200)  # warm-up: the first round allocates for good
        status, error, _ = await api.call("GET", "/api/v1/events")
        assert status == 503 and error["error"] == "too_many_clients"
        await close_streams(streams)
        await asyncio.sleep(0.5)
        before = rss_kb(pid)
        for _ in range(3):
            await close_streams(await open_streams(200))
        await asyncio.sleep(0.5)
        after = rss_kb(pid)
        assert after - before < 4096, f"RSS grew {after - before} kB over 600 streams"

        # A client that never reads, while the sender changes the volume 600 times.
        stuck = socket.create_connection(("127.0.0.1", port))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
        reading = EventReader(api)
        await asyncio.wait_for(reading.opened.wait(), DEADLINE)
        for i in range(600):
            await sender.set_volume(-10.0 - (i % 20))
        stuck.settimeout(DEADLINE)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := stuck.recv(65536):  # what was buffered, then the end: dropped
                received += len(chunk)
        stuck.close()
        assert received < 600 * 900  # it did not get them all: it was cut off
        await api.wait_state("volume", lambda s: s["volume"]["airplay"] == -10.0 - (599 % 20))
        await asyncio.sleep(0.5)
        assert reading.changes().count("volume") == 600  # a reader keeps up and gets all
        assert await metric(api, "raopd_web_event_clients_dropped_total") == 1
        assert await metric(api, "raopd_web_event_clients_refused_total") == 1
        assert await metric(api, "raopd_web_event_clients") == 1
        await reading.close()
        await play
        await sender.teardown()
        await sender.close()
    finally:
        await api.close()
    assert await daemon.stop() == 0
    assert np.array_equal(read_wav(daemon.output), pcm)
    assert sender.report.resend_requests == 0
