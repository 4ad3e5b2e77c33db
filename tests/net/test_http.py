"""The HTTP server on its own (loopback), then /healthz, /readyz and /metrics of a real daemon.

The daemon runs in-process on its own thread inside network namespace A of a private two-host
LAN (tests/net/conftest.py), so it keeps its default ports and advertises on a veth that
exists nowhere else; the test talks to it from namespace B over raw sockets: a few lines of
RTSP and RTP, independent of any sender implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from raopd import daemon
from raopd.config import DEFAULT_HTTP_PORT, load_config
from raopd.core.packets import AudioPacket, ResendRequest, ResentAudio
from raopd.errors import OutputError
from raopd.net.http import HttpServer, Response, streaming
from raopd.net.mdns import MdnsAdvertiser
from raopd.output.sinks import AlsaSink

TIMEOUT = 20.0  # upper bound for anything the daemon does; tests finish well before it

# ------------------------------------------------------------------ the HTTP server alone
#
# aiohttp parses the requests; these tests hold the server to the guarantees the probes had
# from the hand-written server it replaced: errors are answered and the server goes on, idle,
# trickling and never-reading clients cannot hold connections or lock the probes out.


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] (\d{3}) .+", lines[0])
    assert match, lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Reply(int(match[1]), headers, body)


async def exchange(port: int, data: bytes, *, close_write: bool = False) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if close_write:
        writer.write_eof()
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)  # the server closes after answering
    writer.close()
    return parse_reply(raw)


def boom() -> Response:
    raise RuntimeError("a bug in a route")


def big() -> Response:
    return Response(200, b"x" * (8 * 1024 * 1024))


@pytest.fixture
async def server():
    routes = {"/hello": lambda: Response.text(200, "hello"), "/boom": boom, "/big": big}
    http = HttpServer(
        routes, address="127.0.0.1", port=0, max_waiting=4, max_per_address=8, evict_after=0.0
    )
    await http.start()
    yield http
    await http.close()


def port_of(http: HttpServer) -> int:
    return http.sockets[0].getsockname()[1]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_get_and_head(server):
    port = port_of(server)
    get = await exchange(port, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    assert get.status == 200 and get.body == b"hello\n"
    assert get.headers["content-length"] == "6" and get.headers["connection"] == "close"
    assert get.headers["content-type"] == "text/plain; charset=utf-8"
    assert get.headers["cache-control"] == "no-store"
    head = await exchange(port, b"HEAD /hello HTTP/1.0\r\n\r\n")
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "6"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404),
        (b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 405),
        (b"PUT /hello HTTP/1.0\r\n\r\n", 405),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
        (b"GET / HTTP/1.0\r\nNo colon\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /boom HTTP/1.0\r\n\r\n", 500),
    ],
)
async def test_errors_are_answered(server, data, status):
    reply = await exchange(port_of(server), data)
    assert reply.status == status
    if status == 405:
        assert set(reply.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    ok = await exchange(port_of(server), b"GET /hello HTTP/1.0\r\n\r\n")
    assert ok.status == 200  # still serving


async def test_a_request_followed_at_once_by_fin_is_answered(server):
    """A client that half-closes after its request (`nc -N`, HTTP/1.0 tools) gets its answer,
    as from the hand-written server: the end of its input is not the end of the connection."""
    for data in (b"GET /hello HTTP/1.0\r\n\r\n", b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"):
        reply = await exchange(port_of(server), data, close_write=True)
        assert reply.status == 200 and reply.headers["content-length"] == "6"
    assert (
        await exchange(port_of(server), b"GET /nope HTTP/1.0\r\n\r\n", close_write=True)
    ).status == 404


async def test_bad_requests_are_counted_not_logged_as_errors(server, caplog):
    """Malformed input from the network is answered (400) and counted in `bad_requests`;
    it is no fault of raopd's, so it leaves no ERROR and no traceback in the log (aiohttp's
    own logger would write both for every one: a log any client could flood)."""
    bad = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
        b"GET / HTTP/1.0\r\nNo colon\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /\x01 HTTP/1.0\r\n\r\n",
    ]
    with caplog.at_level(logging.DEBUG):
        for data in bad:
            assert (await exchange(port_of(server), data)).status == 400
        assert (await exchange(port_of(server), b"GET /boom HTTP/1.0\r\n\r\n")).status == 500
    assert server.bad_requests == len(bad)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The route's bug is still an error with its traceback; the clients' input is not.
    assert [r.getMessage() for r in errors] == ["HTTP /boom failed"]
    assert all(r.exc_info is None for r in caplog.records if r.levelno < logging.WARNING)
    with caplog.at_level(logging.ERROR):  # counted whatever the log level
        assert (await exchange(port_of(server), bad[0])).status == 400
    assert server.bad_requests == len(bad) + 1


async def test_an_event_stream_ends_when_its_client_closes():
    """A half-close keeps a connection open for its answer, but not a stream's: a page that
    goes away (FIN) ends its event stream at once, not at the stream's next failed write."""
    ended = asyncio.Event()

    @streaming
    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await asyncio.sleep(3600)  # nothing to send: only the client's going ends it
        finally:
            ended.set()
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    http = HttpServer({}, app=app, address="127.0.0.1", port=0)
    await http.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(http))
        writer.write(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()
        await asyncio.wait_for(ended.wait(), TIMEOUT)
        await wait_until(lambda: http.connections == 0, "the stream's connection to close")
    finally:
        await http.close()


async def test_oversized_head_is_refused_and_the_server_goes_on(server):
    huge = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    reply = await exchange(port_of(server), huge)
    assert reply.status in (400, 431)
    endless = b"GET /hello HTTP/1.1\r\nX-Pad: " + b"a" * 9000  # no end of head at all
    assert (await exchange(port_of(server), endless, close_write=True)).status in (400, 431)
    many = b"GET /hello HTTP/1.0\r\n" + b"X: y\r\n" * 65 + b"\r\n"  # over MAX_HEADERS (64)
    assert (await exchange(port_of(server), many)).status in (400, 431)
    assert (await exchange(port_of(server), b"GET /hello HTTP/1.0\r\n\r\n")).status == 200


async def test_clients_that_stall_trickle_or_leave_are_dropped(caplog):
    http = HttpServer({}, address="127.0.0.1", port=0, head_timeout=0.3)
    await http.start()
    try:
        port = port_of(http)
        # Sends part of a head and stalls: closed after head_timeout, unanswered.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n")
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()
        # Trickles a byte now and then: the deadline is for the whole head, not per byte.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        closed = asyncio.create_task(reader.read())
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            if closed.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(closed, TIMEOUT) == b""
        assert time.monotonic() - started < 1.2
        writer.close()
        assert http.requests == 0 and http.expired == 2
        # Leaves halfway through the head: nobody to answer, nothing logged as a failure.
        with caplog.at_level(logging.WARNING):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /he")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
        assert http.requests == 0 and not caplog.records
        assert (await exchange(port, b"GET / HTTP/1.0\r\n\r\n")).status == 404
    finally:
        await http.close()


async def test_a_newcomer_over_the_limit_closes_the_oldest_idle_connection(server):
    """Idle clients cannot lock probes out: the oldest one that has not sent its head yet
    makes room; one that is being answered is never cut off."""
    port = port_of(server)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    await wait_until(lambda: server.waiting == 4, "four idle connections")
    reply = await exchange(port, b"GET /hello HTTP/1.0\r\n\r\n")
    assert reply.status == 200 and server.evicted == 1 and server.refused == 0
    oldest_reader, _ = idle[0]
    try:
        data = await asyncio.wait_for(oldest_reader.read(), TIMEOUT)
    except ConnectionResetError:
        data = b""
    assert data == b""  # the oldest idle one was closed
    for _, writer in idle[1:]:
        writer.write(b"GET /hello HTTP/1.0\r\n\r\n")
    replies = [parse_reply(await asyncio.wait_for(r.read(), TIMEOUT)) for r, _ in idle[1:]]
    assert [r.status for r in replies] == [200] * 3
    for _, writer in idle:
        writer.close()


async def test_one_address_cannot_take_every_connection():
    routes = {"/hello": lambda: Response.text(200, "hello")}
    http = HttpServer(
        routes, address="127.0.0.1", port=0, max_waiting=16, max_per_address=2, evict_after=0.0
    )
    await http.start()
    try:
        port = port_of(http)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
        reply = await exchange(port, b"GET /hello HTTP/1.0\r\n\r\n")
        assert reply.status == 200
        await wait_until(lambda: http.evicted >= 4, "evictions")
        assert http.waiting <= 2
        for _, writer in idle:
            writer.close()
    finally:
        await http.close()


async def test_probes_answer_fast_while_idle_clients_sit_on_the_port():
    """32 idle connections from another address (127.0.0.2, a guest on the LAN): every probe
    is still answered, each within 100 ms."""
    routes = {"/healthz": lambda: Response.text(200, "ok")}
    http = HttpServer(routes, address="127.0.0.1", port=0)
    await http.start()
    try:
        port = port_of(http)
        idle = [
            await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            for _ in range(32)
        ]
        times = []
        for _ in range(20):
            started = time.monotonic()
            reply = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            times.append(time.monotonic() - started)
            assert reply.status == 200
        assert max(times) < 0.100, max(times)
        # And they do not sit there for long: closed within head_timeout (2 s).
        await wait_until(lambda: http.waiting == 0, "the idle connections to be closed")
        assert http.expired + http.evicted == 32
        for _, writer in idle:
            writer.close()
    finally:
        await http.close()


async def test_a_client_that_never_reads_is_cut_off(server):
    server.request_timeout = 0.5
    _reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.transport.pause_reading()  # and never read the 8 MB answer
    writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    await wait_until(lambda: server.cut == 1, "the connection to be cut")
    await wait_until(lambda: server.connections == 0, "the connection to be gone")
    writer.close()
    assert (await exchange(port_of(server), b"GET /hello HTTP/1.0\r\n\r\n")).status == 200


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=200))
def test_random_bytes_never_break_the_server(data):
    async def main() -> None:
        http = HttpServer({"/hello": lambda: Response.text(200, "hello")}, address="127.0.0.1",
                          port=0, head_timeout=0.5)  # fmt: skip
        await http.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(http))
            writer.write(data + b"\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
            if raw:
                assert 200 <= parse_reply(raw.split(b"HTTP/1.1 ", 2)[0] or raw).status < 600
            ok = await exchange(port_of(http), b"GET /hello HTTP/1.0\r\n\r\n")
            assert ok.status == 200
        finally:
            await http.close()

    asyncio.run(main())


async def test_a_burst_from_one_address_is_not_taken_for_idle_clients():
    """Ten connections from one address at once (a browser loading the page, an Ingress):
    none is evicted before it had time to send its head; all are answered."""
    routes = {"/hello": lambda: Response.text(200, "hello")}
    http = HttpServer(routes, address="127.0.0.1", port=0, max_per_address=2)
    await http.start()
    try:
        replies = await asyncio.gather(
            *(exchange(port_of(http), b"GET /hello HTTP/1.0\r\n\r\n") for _ in range(10))
        )
        assert [r.status for r in replies] == [200] * 10 and http.evicted == 0
    finally:
        await http.close()


async def test_close_ends_connections_in_progress():
    http = HttpServer({}, address="127.0.0.1", port=0)
    await http.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(http))
    writer.write(b"GET / HTTP/1.1\r\n")  # and then nothing
    await asyncio.sleep(0)
    await asyncio.wait_for(http.close(), TIMEOUT)
    assert not http.listening
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()


# ------------------------------------------------------------------ a real daemon


ALSA_CONF = """
pcm.ok { type null }
pcm.broken { type hw card 97 device 0 }
"""


class GatedMdnsAdvertiser(MdnsAdvertiser):
    """The real advertiser, held back until the test opens the gate."""

    entered = threading.Event()
    gate = threading.Event()

    async def start(self) -> None:
        type(self).entered.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, type(self).gate.wait)
        await super().start()


class DaemonThread:
    """`daemon.run` on its own event loop, on a thread inside namespace A."""

    def __init__(self, lan, config) -> None:
        self.lan = lan
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutdown: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.running = threading.Event()
        self.thread = threading.Thread(target=self._main, name="test-daemon")

    def _main(self) -> None:
        try:
            with self.lan.inside(self.lan.a):
                asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc
        finally:
            self.running.set()

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.shutdown = asyncio.Event()
        self.running.set()
        await daemon.run(self.config, self.shutdown)

    def __enter__(self) -> DaemonThread:
        self.thread.start()
        assert self.running.wait(TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self.shutdown is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.shutdown.set)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def make_config(lan, tmp_path: Path, **flags: object):
    base = {
        "name": "Http Test",
        "interface": lan.a_if,
        "device_id": "0A1B2C3D4E5F",
        "state_dir": str(tmp_path / "state"),
    }
    return load_config({**base, **flags}, {}, None)


class Client:
    """Talks to the daemon from namespace B: HTTP, RTSP and RTP over plain sockets."""

    def __init__(self, lan) -> None:
        self.lan = lan

    def connect(self, port: int) -> socket.socket:
        with self.lan.inside(self.lan.b):
            return socket.create_connection((self.lan.a_ip, port), timeout=TIMEOUT)

    def udp(self) -> socket.socket:
        with self.lan.inside(self.lan.b):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.lan.b_ip, 0))
        sock.settimeout(TIMEOUT)
        return sock

    def get(self, path: str, method: str = "GET") -> Reply:
        sock = self.connect(DEFAULT_HTTP_PORT)
        with sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: raopd\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return parse_reply(b"".join(chunks))

    def metrics(self) -> dict[str, float]:
        reply = self.get("/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(reply.body.decode()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    def wait_for(self, what: str, check: Callable[[dict[str, float]], bool]) -> dict[str, float]:
        """Poll /metrics until `check` holds (the daemon starts and plays on other threads)."""
        deadline = time.monotonic() + TIMEOUT
        values: dict[str, float] = {}
        while True:
            try:
                values = self.metrics()
            except ConnectionRefusedError:
                pass  # the daemon is still starting: HTTP is not listening yet
            else:
                if check(values):
                    return values
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {values}"
            time.sleep(0.02)


@contextmanager
def running(lan, config) -> Iterator[Client]:
    with DaemonThread(lan, config) as thread:
        try:
            yield Client(lan)
        finally:
            GatedMdnsAdvertiser.gate.set()  # a failed test must not leave the daemon stuck
            assert thread.error is None, thread.error
    assert thread.error is None, thread.error


@pytest.fixture
def gated(monkeypatch):
    GatedMdnsAdvertiser.entered.clear()
    GatedMdnsAdvertiser.gate.clear()
    monkeypatch.setattr(daemon, "MdnsAdvertiser", GatedMdnsAdvertiser)
    yield GatedMdnsAdvertiser
    GatedMdnsAdvertiser.gate.set()  # never leave an executor thread waiting


@pytest.fixture
def alsa_conf(tmp_path, monkeypatch):
    path = tmp_path / "asound.conf"
    path.write_text(ALSA_CONF)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(path))
    return path


def test_not_ready_until_mdns_is_registered(lan, tmp_path, gated):
    config = make_config(lan, tmp_path, output=str(tmp_path / "out.raw"))
    with running(lan, config) as client:
        assert gated.entered.wait(TIMEOUT)  # RTSP listens by now; mDNS is held back
        reply = client.get("/readyz")
        assert reply.status == 503
        assert reply.body == b"mDNS service not registered\n"
        health = client.get("/healthz")
        assert (health.status, health.body) == (200, b"ok\n")
        values = client.metrics()
        assert values["raopd_ready"] == 0 and values["raopd_mdns_registered"] == 0
        assert values["raopd_rtsp_listening"] == 1 and values["raopd_healthy"] == 1

        gated.gate.set()
        client.wait_for("mDNS", lambda v: v["raopd_mdns_registered"] == 1)
        reply = client.get("/readyz")
        assert (reply.status, reply.body) == (200, b"ready\n")
        head = client.get("/readyz", method="HEAD")
        assert head.status == 200 and head.body == b""
        assert client.get("/nope").status == 404


def test_alsa_device_open_is_ready(lan, tmp_path, alsa_conf):
    config = make_config(lan, tmp_path, device="ok")
    with running(lan, config) as client:
        values = client.wait_for("mDNS", lambda v: v["raopd_mdns_registered"] == 1)
        assert values["raopd_audio_device_open"] == 1 and values["raopd_ready"] == 1
        assert client.get("/readyz").status == 200


def test_alsa_device_that_cannot_open_is_not_ready(lan, tmp_path, alsa_conf, monkeypatch):
    # The daemon keeps running with a device it could not open (it retries, /readyz says
    # why). Here the sink is made exactly as open_sink makes it, and its open fails for real.
    def open_sink_failing(config):
        sink = AlsaSink(config.device, config.period_frames, 2)
        with pytest.raises(OutputError, match="broken"):
            sink.open()
        return sink

    monkeypatch.setattr(daemon, "open_sink", open_sink_failing)
    config = make_config(lan, tmp_path, device="broken")
    with running(lan, config) as client:
        values = client.wait_for("mDNS", lambda v: v["raopd_mdns_registered"] == 1)
        assert values["raopd_audio_device_open"] == 0 and values["raopd_ready"] == 0
        reply = client.get("/readyz")
        assert (reply.status, reply.body) == (503, b"audio device not open\n")
        assert client.get("/healthz").status == 200  # alive: restarting would not help


# -------------------------------------------------------------- a stream through /metrics

FRAMES = 352
SDP = (
    "v=0\r\no=iTunes 1 0 IN IP4 {ip}\r\ns=iTunes\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio 0 RTP/AVP 96\r\na=rtpmap:96 L16/44100/2\r\n"
)


class Rtsp:
    def __init__(self, sock: socket.socket, ip: str) -> None:
        self.sock = sock
        self.ip = ip
        self.cseq = 0
        self.buffer = b""

    def request(self, method: str, body: bytes = b"", **headers: str) -> tuple[int, dict]:
        self.cseq += 1
        lines = [f"{method} rtsp://{self.ip}/1 RTSP/1.0", f"CSeq: {self.cseq}"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(fields.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(4096)
        self.buffer = self.buffer[length:]
        return int(lines[0].split()[1]), fields


def pcm_block(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    return rng.integers(-20000, 20000, size=(FRAMES, 2), dtype=np.int16)


def test_counters_move_while_a_stream_plays(lan, tmp_path):
    out = tmp_path / "out.raw"
    config = make_config(lan, tmp_path, output=str(out))
    with running(lan, config) as client:
        before = client.wait_for("mDNS", lambda v: v["raopd_mdns_registered"] == 1)
        assert before["raopd_sessions_total"] == 0 and before["raopd_packets_received_total"] == 0
        assert before["raopd_http_bad_requests_total"] == 0
        with client.connect(DEFAULT_HTTP_PORT) as sock:
            sock.sendall(b"GET /\x01 HTTP/1.0\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.0 400 ")
        assert client.metrics()["raopd_http_bad_requests_total"] == 1

        control, timing = client.udp(), client.udp()
        rtsp = Rtsp(client.connect(config.port), lan.a_ip)
        try:
            assert rtsp.request("OPTIONS")[0] == 200
            sdp = SDP.format(ip=lan.a_ip).encode()
            assert rtsp.request("ANNOUNCE", sdp, Content_Type="application/sdp")[0] == 200
            status, fields = rtsp.request(
                "SETUP",
                Transport="RTP/AVP/UDP;unicast;interleaved=0-1;mode=record;"
                f"control_port={control.getsockname()[1]};"
                f"timing_port={timing.getsockname()[1]}",
            )
            assert status == 200
            ports = dict(item.split("=") for item in fields["transport"].split(";") if "=" in item)
            audio_addr = (lan.a_ip, int(ports["server_port"]))
            control_addr = (lan.a_ip, int(ports["control_port"]))
            assert rtsp.request("RECORD", Range="npt=0-", RTP_Info="seq=100;rtptime=0")[0] == 200
            assert (
                rtsp.request("SET_PARAMETER", b"volume: -11.5\r\n", Content_Type="text/parameters")[
                    0
                ]
                == 200
            )

            blocks = [pcm_block(i) for i in range(10)]
            packets = [
                AudioPacket(100 + i, i * FRAMES, 0x1234, blocks[i].astype(">i2").tobytes())
                for i in range(10)
            ]
            audio = client.udp()
            for i, packet in enumerate(packets):
                if i != 4:  # packet 104 goes missing
                    audio.sendto(bytes(packet), audio_addr)
            audio.sendto(bytes(packets[2]), audio_addr)  # and 102 arrives twice
            audio.sendto(b"\x80", audio_addr)  # a datagram too short to be anything
            # The receiver asks for 104 on our control port; answer with the resend.
            request = ResendRequest.parse(control.recv(64))
            assert (request.first_seq, request.count) == (104, 1)
            control.sendto(bytes(ResentAudio(packets[4], request.seq)), control_addr)

            during = client.wait_for(
                "audio out", lambda v: v["raopd_output_frames_total"] == 10 * FRAMES
            )
            assert during["raopd_sessions_total"] == 1
            assert during["raopd_sessions_active"] == 1
            assert during["raopd_streams_started_total"] == 1
            assert during["raopd_streams_playing"] == 1
            assert during["raopd_packets_received_total"] == 10
            assert during["raopd_packets_duplicate_total"] == 1
            assert during["raopd_packets_missing_total"] == 1
            assert during["raopd_packets_resent_total"] == 1
            assert during["raopd_packets_lost_total"] == 0
            assert during["raopd_bad_datagrams_total"] == 1
            assert during["raopd_resend_request_datagrams_total"] >= 1
            assert during["raopd_session_frames_total"] == 10 * FRAMES
            assert during["raopd_rtsp_requests_total"] == 5
            assert during["raopd_volume"] == -11.5
            assert during["raopd_volume_gain"] == 1.0  # a file gets the samples untouched
            assert during["raopd_session_processing_seconds_total"] > 0
            assert during["process_cpu_seconds_total"] > 0

            assert rtsp.request("TEARDOWN")[0] == 200
        finally:
            rtsp.sock.close()
            control.close()
            timing.close()

        after = client.wait_for(
            "the session to end", lambda v: v['raopd_sessions_ended_total{reason="teardown"}'] == 1
        )
        assert after["raopd_sessions_active"] == 0 and after["raopd_streams_playing"] == 0
        # Totals survive the session that made them.
        assert after["raopd_packets_received_total"] == 10
        assert after["raopd_packets_duplicate_total"] == 1
        assert after["raopd_sessions_total"] == 1
        assert after["raopd_rtsp_requests_total"] == 6
        assert after['raopd_sessions_ended_total{reason="internal_error"}'] == 0

    written = np.frombuffer(out.read_bytes(), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(written, np.concatenate(blocks))
