"""The house end to end: a real raopd, a real sender, and the programs that listen to it.

The metadata pipe is read the way shairport-sync's readers read it (tests/house/sps_reader.py);
every value is checked against what the sender sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from raopd.tools.sender import RaopSender, SenderOptions
from tests.e2e.conftest import test_clip
from tests.e2e.daemon import DEVICE_ID, Daemon, read_wav
from tests.house.broker import Broker
from tests.house.dacp_responder import DacpResponder
from tests.house.nsloop import NsLoop
from tests.house.sps_reader import PipeItem, parse_stream

ROOT = Path(__file__).resolve().parents[2]
JPEG = (ROOT / "tests" / "captures" / "art.jpg").read_bytes()
DEADLINE = 30.0


class PipeReader:
    """Reads a FIFO in a thread until end of file (the writer closes it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray()
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.path.exists():
            threading.Event().wait(0.02)
        with open(self.path, "rb", buffering=0) as pipe:
            self.opened.set()
            while chunk := pipe.read(65536):
                self.data += chunk

    def items(self) -> list[PipeItem]:
        items, _ = parse_stream(bytes(self.data))
        return items


async def wait_until(condition, what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def sender_options(**extra: object) -> SenderOptions:
    return SenderOptions(
        codec="alac",
        encrypt=True,
        hw_addr=bytes.fromhex(DEVICE_ID),
        client_name="Joe's iPhone",
        dacp_id="14413BE4996FEA4D",
        active_remote="1986535575",
        user_agent="AirPlay/381.13",
        linger=0.5,
        **extra,  # type: ignore[arg-type]
    )


async def test_metadata_pipe_sees_what_the_sender_sent(start_daemon, test30, tmp_path):
    fifo = tmp_path / "metadata"
    daemon: Daemon = await start_daemon(
        "--metadata-pipe", str(fifo), "--active-state-timeout", "0.5"
    )
    reader = PipeReader(fifo)
    pcm = np.ascontiguousarray(test30[: 2 * 44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    await sender.connect()
    rtptime = sender.report.first_rtptime
    title = "Été indien".encode()
    dmap = [("minm", title), ("asar", b"Joe Dassin"), ("asal", b"L'Album"), ("mper", b"\1" * 8)]
    await sender.set_metadata(dmap, rtptime)
    await sender.set_artwork(JPEG, "image/jpeg", rtptime)
    await sender.set_progress(rtptime, rtptime, rtptime + len(pcm))
    await sender.set_volume(-12.0)
    await sender.play(pcm)
    await sender.teardown()
    await sender.close()

    await wait_until(lambda: any(i.code == "aend" for i in reader.items()), "aend on the pipe")
    assert await daemon.stop() == 0
    await asyncio.to_thread(reader.thread.join, DEADLINE)
    items, rest = parse_stream(bytes(reader.data))
    assert rest == b""  # nothing malformed, nothing cut
    codes = [(i.type, i.code) for i in items]
    values = {i.code: i.data for i in items}

    # Who is playing: shairport-sync's ssnc items, once each, with the right values.
    assert values["snam"] == b"Joe's iPhone"
    assert values["snua"] == b"AirPlay/381.13"
    assert values["daid"] == b"14413BE4996FEA4D"
    assert values["acre"] == b"1986535575"
    assert values["clip"] == b"127.0.0.1" and values["svip"] == b"127.0.0.1"
    # The DMAP items exactly as sent, in order, between mdst and mden carrying the RTP time.
    start = codes.index(("ssnc", "mdst"))
    assert items[start].data == str(rtptime).encode()
    assert [(i.type, i.code, i.data) for i in items[start + 1 : start + 5]] == [
        ("core", tag, value) for tag, value in dmap
    ]
    assert (items[start + 5].code, items[start + 5].data) == ("mden", str(rtptime).encode())
    # The cover: the JPEG's bytes exactly, between pcst and pcen.
    pict = codes.index(("ssnc", "PICT"))
    assert items[pict].data == JPEG
    assert codes[pict - 1] == ("ssnc", "pcst") and codes[pict + 1] == ("ssnc", "pcen")
    assert values["prgr"] == f"{rtptime}/{rtptime}/{rtptime + len(pcm)}".encode()
    assert values["pvol"].startswith(b"-12.00,")
    # The session's life in order: active, play begins, play ends, then active ends.
    order = [c for _, c in codes if c in ("abeg", "pbeg", "pend", "aend")]
    assert order == ["abeg", "pbeg", "pend", "aend"]
    # The log says once what played, and from whom.
    log = "\n".join(daemon.log)
    line = "now playing: Joe Dassin \u2013 Été indien (L'Album) from Joe's iPhone"
    assert log.count(line) == 1
    # And the audio is untouched by all of this.
    out = read_wav(daemon.output)
    assert np.array_equal(out, pcm)


async def test_no_pipe_reader_never_blocks_the_stream(start_daemon, test30, tmp_path):
    fifo = tmp_path / "metadata"
    os.mkfifo(fifo)  # nobody ever opens it for reading
    daemon = await start_daemon("--metadata-pipe", str(fifo))
    pcm = np.ascontiguousarray(test30[:44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    await sender.connect()
    await sender.set_artwork(JPEG, "image/jpeg", sender.report.first_rtptime)
    await sender.play(pcm)
    await sender.teardown()
    await sender.close()
    assert await daemon.stop() == 0
    assert np.array_equal(read_wav(daemon.output), pcm)


# ------------------------------------------------------------------------------------- MQTT


class Subscriber:
    """An MQTT client on the test's side: records every message, in arrival order."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.port = port
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="test-subscriber") as client:
            self.client = client
            for topic in self.topics:
                await client.subscribe(topic)
            self.ready.set()
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                self.messages.append((str(message.topic), data, bool(message.retain)))

    def last(self, topic: str) -> bytes | None:
        found = [p for t, p, _ in self.messages if t == topic]
        return found[-1] if found else None

    def topics_seen(self) -> list[str]:
        return [t for t, _, _ in self.messages]

    async def publish(self, topic: str, payload: str) -> None:
        await self.client.publish(topic, payload)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self.task


@pytest.fixture
def broker(tmp_path):
    running = Broker(tmp_path).start()
    yield running
    running.stop()


def check_discovery(payload: dict[str, object], component: str) -> None:
    """The discovery schema Home Assistant documents (and its MQTT integration enforces)."""
    required = {
        "sensor": ["state_topic"],
        "binary_sensor": ["state_topic"],
        "button": ["command_topic"],
    }
    for key in required.get(component, []):
        assert isinstance(payload.get(key), str) and payload[key], (component, key)
    if component == "image":  # exactly one of image_topic / url_topic
        assert ("image_topic" in payload) != ("url_topic" in payload)
    assert isinstance(payload["unique_id"], str) and payload["unique_id"]
    device = payload["device"]
    assert isinstance(device, dict)
    assert device.get("identifiers") or device.get("connections")  # at least one identifier
    assert isinstance(payload["availability_topic"], str)


async def test_mqtt_topics_discovery_and_stop(start_daemon, test30, tmp_path, broker):
    subscriber = Subscriber(broker.port, ["living/#", "homeassistant/#"])
    await asyncio.wait_for(subscriber.ready.wait(), DEADLINE)
    daemon: Daemon = await start_daemon(
        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-topic", "living",
        "--mqtt-remote", "--active-state-timeout", "0.5",
    )  # fmt: skip
    try:
        await wait_until(lambda: subscriber.last("living/availability") == b"online", "online")
        pcm = np.ascontiguousarray(test30[: 6 * 44100])
        sender = RaopSender("127.0.0.1", daemon.port, sender_options())
        await sender.connect()
        rtptime = sender.report.first_rtptime
        dmap = [("minm", b"Title"), ("asar", b"Artist"), ("asal", b"Album"), ("asgn", b"Jazz")]
        await sender.set_metadata(dmap, rtptime)
        await sender.set_artwork(JPEG, "image/jpeg", rtptime)
        play = asyncio.create_task(sender.play(pcm))
        await wait_until(lambda: subscriber.last("living/play_start") is not None, "play_start")
        # "stop" ends the session from our side (there is no DACP server to pass it on to).
        await subscriber.publish("living/remote", "stop")
        await wait_until(lambda: subscriber.last("living/play_end") is not None, "play_end")
        play.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await play
        await sender.close()
        await wait_until(lambda: subscriber.last("living/active_end") is not None, "active_end")
    finally:
        await daemon.stop()
    log = "\n".join(daemon.log)
    assert "ended: stopped by remote control" in log

    assert subscriber.last("living/title") == b"Title"
    assert subscriber.last("living/artist") == b"Artist"
    assert subscriber.last("living/album") == b"Album"
    assert subscriber.last("living/genre") == b"Jazz"
    assert subscriber.last("living/cover") == JPEG  # the bytes exactly
    assert subscriber.last("living/client_name") == b"Joe's iPhone"
    assert subscriber.last("living/client_ip") == b"127.0.0.1"
    assert subscriber.last("living/server_ip") == b"127.0.0.1"
    assert subscriber.last("living/dacp_id") == b"14413BE4996FEA4D"
    assert subscriber.last("living/active_remote_id") == b"1986535575"
    assert (subscriber.last("living/volume") or b"").startswith(b"-15.00,")
    assert subscriber.last("living/play_start") == b"--"  # empty payloads substituted
    events = [
        t.rsplit("/", 1)[1]
        for t in subscriber.topics_seen()
        if t.rsplit("/", 1)[1] in ("active_start", "play_start", "play_end", "active_end")
    ]
    assert events == ["active_start", "play_start", "play_end", "active_end"]
    assert subscriber.last("living/availability") == b"offline"  # said on shutdown

    configs = {
        t: json.loads(p)
        for t, p, _ in subscriber.messages
        if t.startswith("homeassistant/") and t.endswith("/config")
    }
    components = {t.split("/")[1] for t in configs}
    assert components == {"sensor", "binary_sensor", "image", "button"}
    for topic, payload in configs.items():
        check_discovery(payload, topic.split("/")[1])
    unique = [p["unique_id"] for p in configs.values()]
    assert len(unique) == len(set(unique))
    image = next(p for t, p in configs.items() if "/image/" in t)
    assert image["image_topic"] == "living/cover"
    buttons = {p["payload_press"] for t, p in configs.items() if "/button/" in t}
    assert {"play", "pause", "playpause", "stop", "nextitem", "previtem"} <= buttons
    await subscriber.close()


async def test_mqtt_remote_without_dacp_is_refused_clearly(start_daemon, test30, broker):
    subscriber = Subscriber(broker.port, ["spk/#"])
    await asyncio.wait_for(subscriber.ready.wait(), DEADLINE)
    daemon: Daemon = await start_daemon(
        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-topic", "spk",
        "--mqtt-remote",
    )  # fmt: skip
    pcm = np.ascontiguousarray(test30[: 3 * 44100])
    options = SenderOptions(codec="alac", hw_addr=bytes.fromhex(DEVICE_ID), linger=0.2)
    sender = RaopSender("127.0.0.1", daemon.port, options)  # no DACP-ID, no Active-Remote
    await wait_until(lambda: subscriber.last("spk/availability") == b"online", "online")
    await sender.connect()
    play = asyncio.create_task(sender.play(pcm))
    await wait_until(lambda: subscriber.last("spk/play_start") is not None, "play_start")
    await subscriber.publish("spk/remote", "nextitem")
    await wait_until(
        lambda: any("MQTT remote: nextitem refused" in line for line in daemon.log), "refusal"
    )
    await play
    await sender.teardown()
    await sender.close()
    assert await daemon.stop() == 0
    line = next(x for x in daemon.log if "MQTT remote: nextitem refused" in x)
    assert "offers no remote control" in line
    assert np.array_equal(read_wav(daemon.output), pcm)  # audio untouched
    await subscriber.close()


async def test_broker_that_vanishes_mid_stream_and_returns(start_daemon, test30, broker):
    subscriber_port = broker.port
    daemon: Daemon = await start_daemon(
        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-topic", "spk",
    )  # fmt: skip
    pcm = np.ascontiguousarray(test30[: 8 * 44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    await sender.connect()
    play = asyncio.create_task(sender.play(pcm))
    await wait_until(lambda: any("MQTT: connected" in x for x in daemon.log), "connected")
    broker.stop()  # gone mid-stream
    try:
        await wait_until(lambda: any("MQTT: lost the broker" in x for x in daemon.log), "lost")
    except AssertionError:
        print("\n".join(daemon.log))
        raise
    await asyncio.to_thread(broker.start)
    subscriber = Subscriber(subscriber_port, ["spk/#"])
    await asyncio.wait_for(subscriber.ready.wait(), DEADLINE)
    await wait_until(lambda: subscriber.last("spk/availability") == b"online", "back online")
    await sender.set_metadata([("minm", b"After the outage")], sender.report.first_rtptime)
    await wait_until(lambda: subscriber.last("spk/title") == b"After the outage", "title")
    await play
    await sender.teardown()
    await sender.close()
    assert await daemon.stop() == 0
    assert sum("MQTT: lost the broker" in x for x in daemon.log) == 1  # said once
    assert np.array_equal(read_wav(daemon.output), pcm)  # audio unaffected
    await subscriber.close()


async def test_mqtt_remote_reaches_the_senders_dacp_server_over_mdns(lan, raopd, tmp_path):
    """On the namespace LAN: the sender (B) advertises iTunes_Ctrl_<id> over mDNS; raopd (A)
    finds it and sends the command there; MQTT broker and subscriber are on A's loopback."""
    broker = Broker(tmp_path, lan, lan.a).start()
    ns_a, ns_b = NsLoop(lan, lan.a), NsLoop(lan, lan.b)
    responder = DacpResponder("14413BE4996FEA4D", "1986535575", address=lan.b_ip)
    daemon = raopd(
        "--output", str(tmp_path / "out.wav"), "--mqtt-host", "127.0.0.1",
        "--mqtt-port", str(broker.port), "--mqtt-topic", "den", "--mqtt-remote",
    )  # fmt: skip
    try:
        await ns_b.run(responder.start())
        subscriber = await ns_a.run(_subscriber(broker.port, ["den/#"]))
        await asyncio.to_thread(daemon.wait_ready)
        await wait_until(lambda: subscriber.last("den/availability") == b"online", "online")
        options = dataclasses.replace(sender_options(), linger=0.2)
        sender = RaopSender(lan.a_ip, 5000, options)
        await ns_b.run(sender.connect())
        play = ns_b.submit(sender.play(np.zeros((6 * 44100, 2), np.int16)))
        await wait_until(lambda: subscriber.last("den/play_start") is not None, "play_start")
        await ns_a.run(subscriber.publish("den/remote", "playpause"))
        await wait_until(lambda: responder.requests, "the DACP request")
        request = responder.requests[0]
        assert request.path == "/ctrl-int/1/playpause"
        assert request.headers["active-remote"] == "1986535575"
        assert request.headers["host"].startswith(lan.b_ip + ":")
        await ns_a.run(subscriber.publish("den/remote", "stop"))
        await wait_until(lambda: subscriber.last("den/play_end") is not None, "play_end")
        assert [r.path for r in responder.requests] == ["/ctrl-int/1/playpause", "/ctrl-int/1/stop"]
        await asyncio.to_thread(daemon.wait_log, r"ended: stopped by remote control")
        play.cancel()
        await ns_b.run(sender.close())
        await ns_a.run(subscriber.close())
        await ns_b.run(responder.close())
    finally:
        ns_a.close()
        ns_b.close()
        daemon.kill()
        broker.stop()


async def _subscriber(port: int, topics: list[str]) -> Subscriber:
    subscriber = Subscriber(port, topics)
    await asyncio.wait_for(subscriber.ready.wait(), DEADLINE)
    return subscriber


# --------------------------------------------------------------- acceptance with stock pyatv

HOOK = """
import json, os, sys
with open(sys.argv[1], "a") as log:
    keys = ("RAOPD_EVENT", "RAOPD_TITLE", "RAOPD_ARTIST", "RAOPD_ALBUM", "RAOPD_SENDER", "PATH")
    log.write(json.dumps({k: os.environ.get(k) for k in keys}) + "\\n")
print("hook ran for", os.environ["RAOPD_EVENT"])
"""


class WebhookReceiver:
    """An aiohttp server that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.port = 0

    async def start(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        await self.runner.cleanup()


async def test_stock_pyatv_metadata_reaches_pipe_mqtt_hooks_and_webhooks(
    lan, raopd, pyatv_sender, tmp_path
):
    clip, _ = test_clip(tmp_path / "clip.wav", 5.0, 3.0)
    cover = tmp_path / "cover.jpg"
    cover.write_bytes(JPEG)
    broker = Broker(tmp_path, lan, lan.a).start()
    ns_a = NsLoop(lan, lan.a)
    webhook = WebhookReceiver()
    hook_script, hook_log = tmp_path / "hook.py", tmp_path / "hook.log"
    hook_script.write_text(HOOK)
    hook = f"{sys.executable} {hook_script} {hook_log}"
    fifo = tmp_path / "metadata"
    try:
        await ns_a.run(webhook.start())
        subscriber = await ns_a.run(_subscriber(broker.port, ["e2e/#"]))
        daemon = raopd(
            "--output", str(tmp_path / "out.wav"), "--metadata-pipe", str(fifo),
            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-topic", "e2e",
            "--mqtt-remote", "--active-state-timeout", "1",
            "--run-before-play-begins", f"{hook} start", "--run-after-play-ends", f"{hook} end",
            env={
                "RAOPD_RUN_AFTER_EXITING_ACTIVE_STATE": hook,
                "RAOPD_WEBHOOK_URLS": f"http://127.0.0.1:{webhook.port}/hook",
            },
        )  # fmt: skip
        reader = PipeReader(fifo)
        await asyncio.to_thread(daemon.wait_ready)
        sender = pyatv_sender(
            clip,
            metadata={
                "title": "Fast Car",
                "artist": "Tracy Chapman",
                "album": "Tracy Chapman",
                "artwork": str(cover),
            },
        )
        await wait_until(lambda: subscriber.last("e2e/play_start") is not None, "play_start")
        # pyatv sends DACP-ID and Active-Remote but runs no DACP server: a clear refusal.
        await ns_a.run(subscriber.publish("e2e/remote", "nextitem"))
        await asyncio.to_thread(daemon.wait_log, r"MQTT remote: nextitem refused")
        result = await asyncio.to_thread(sender.result)
        assert result["result"] == "ok", result
        await wait_until(lambda: any(i.code == "aend" for i in reader.items()), "aend (pipe)")
        await wait_until(lambda: subscriber.last("e2e/active_end") is not None, "active_end")
        await wait_until(
            lambda: any(b["event"] == "active_end" for b in webhook.bodies), "active_end webhook"
        )
        daemon.stop()
        log = daemon.log
    finally:
        await ns_a.run(webhook.close())
        ns_a.close()
        broker.stop()

    refusal = next(x for x in log.splitlines() if "nextitem refused" in x)
    assert "offers no remote control" in refusal and "iTunes_Ctrl_" in refusal
    assert log.count("now playing: Tracy Chapman \u2013 Fast Car (Tracy Chapman)") == 1

    # The pipe, read as shairport-sync's readers read it.
    items = reader.items()
    values = {i.code: i.data for i in items}
    assert (values["minm"], values["asar"], values["asal"]) == (
        b"Fast Car",
        b"Tracy Chapman",
        b"Tracy Chapman",
    )
    assert values["PICT"] == JPEG  # the cover pyatv sent, byte for byte
    assert values["snua"].startswith(b"AirPlay/") and values["clip"] == lan.b_ip.encode()
    order = [i.code for i in items if i.code in ("abeg", "pbeg", "pend", "aend")]
    assert order == ["abeg", "pbeg", "pend", "aend"]

    # MQTT.
    assert subscriber.last("e2e/title") == b"Fast Car"
    assert subscriber.last("e2e/artist") == b"Tracy Chapman"
    assert subscriber.last("e2e/album") == b"Tracy Chapman"
    assert subscriber.last("e2e/cover") == JPEG
    assert subscriber.last("e2e/client_ip") == lan.b_ip.encode()
    events = [
        t.rsplit("/", 1)[1]
        for t in subscriber.topics_seen()
        if t.rsplit("/", 1)[1] in ("play_start", "play_end", "active_end")
    ]
    assert events == ["play_start", "play_end", "active_end"]

    # The hook script, run without a shell, with the documented environment.
    runs = [json.loads(line) for line in hook_log.read_text().splitlines()]
    assert [r["RAOPD_EVENT"] for r in runs] == ["play_start", "play_end", "active_end"]
    assert all(r["RAOPD_TITLE"] == "Fast Car" for r in runs)
    assert all(r["RAOPD_ARTIST"] == "Tracy Chapman" for r in runs)
    assert all(r["RAOPD_SENDER"] and r["PATH"] for r in runs)
    assert "hook play_start: hook ran for play_start" in log

    # The webhook receiver.
    assert [b["event"] for b in webhook.bodies if b["event"] != "volume"] == [
        "active_start",
        "play_start",
        "play_end",
        "active_end",
    ]
    assert any(b["event"] == "volume" for b in webhook.bodies)  # pyatv sets the volume
    ended = [b for b in webhook.bodies if b["event"] in ("play_end", "active_end")]
    assert all(b["track"]["title"] == "Fast Car" for b in ended)  # type: ignore[index]


# ------------------------------------------------------------------------------ bad input


def rss_anon_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise KeyError("RssAnon")


async def test_huge_and_garbage_metadata_never_stop_the_stream(start_daemon, test30, tmp_path):
    fifo = tmp_path / "metadata"
    daemon: Daemon = await start_daemon("--metadata-pipe", str(fifo))
    reader = PipeReader(fifo)
    assert daemon.process is not None
    pcm = np.ascontiguousarray(test30[: 8 * 44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    await sender.connect()
    rtptime = sender.report.first_rtptime
    play = asyncio.create_task(sender.play(pcm))
    await asyncio.sleep(0)
    refused = []
    before = rss_anon_kb(daemon.process.pid)
    huge = b"\xff\xd8\xff" + os.urandom(20 * 1024 * 1024)  # a 20 MB "cover"
    for _ in range(3):
        try:
            await sender.set_artwork(huge, "image/jpeg", rtptime)
        except Exception as exc:  # SenderError: the receiver answered 413
            refused.append(str(exc))
    for body in (
        [("minm", b"\xff\xfe\x00bad \x1b[31mtitle"), ("asar", "Ünïcødé".encode())],  # not UTF-8
        [("mlit", b"\x00\x00\x00\xffshort")],  # a container that lies about its length
    ):
        with contextlib.suppress(Exception):
            await sender.set_metadata(body, rtptime)
    await sender.set_artwork(JPEG[:100], "image/jpeg", rtptime)  # truncated: still just bytes
    after = rss_anon_kb(daemon.process.pid)
    await play
    await sender.teardown()
    await sender.close()
    assert await daemon.stop() == 0
    assert len(refused) == 3 and all("413" in r for r in refused)
    assert after - before < 32 * 1024  # 60 MB sent; nothing of it kept
    assert np.array_equal(read_wav(daemon.output), pcm)  # the music never stopped
    await asyncio.to_thread(reader.thread.join, DEADLINE)
    log = "\n".join(daemon.log)
    assert log.count("refused (413): over the 4194304-byte limit") == 3
    items = reader.items()
    titles = [i.data for i in items if i.code == "minm"]
    assert titles == [b"\xff\xfe\x00bad \x1b[31mtitle"]  # passed on as sent, like shairport-sync
    assert [i.data for i in items if i.code == "PICT"] == [JPEG[:100]]
    # The log line is clean text.
    line = next(x for x in daemon.log if "now playing:" in x)
    assert "\x1b" not in line and "\x00" not in line


async def test_broker_down_at_start_is_said_once_and_joined_when_it_comes(
    start_daemon, test30, tmp_path
):
    broker = Broker(tmp_path)  # its port, but not running yet
    daemon: Daemon = await start_daemon(
        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-topic", "late",
    )  # fmt: skip
    pcm = np.ascontiguousarray(test30[: 4 * 44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    await sender.connect()
    play = asyncio.create_task(sender.play(pcm))
    await wait_until(lambda: any("MQTT: cannot reach" in x for x in daemon.log), "the one warning")
    await asyncio.sleep(3.5)  # retries at 1 and 2 s later: none of them logs again
    assert sum("MQTT: cannot reach" in x for x in daemon.log) == 1
    await asyncio.to_thread(broker.start)
    try:
        await wait_until(lambda: any("MQTT: connected" in x for x in daemon.log), "connected")
        await play
        await sender.teardown()
        await sender.close()
        assert await daemon.stop() == 0
    finally:
        broker.stop()
    assert np.array_equal(read_wav(daemon.output), pcm)  # audio never waited for MQTT


def test_unfixable_error_runs_its_hook_before_raopd_exits(tmp_path):
    """The RTSP port is taken: raopd cannot work, runs run_on_unfixable_error (waited for, with
    the error in RAOPD_REASON), then exits non-zero."""
    import subprocess

    marker = tmp_path / "error.txt"
    hook = tmp_path / "on_error.sh"
    hook.write_text(f'#!/bin/sh\necho "$RAOPD_EVENT: $RAOPD_REASON" > {marker}\n')
    hook.chmod(0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAOPD_")}
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "raopd",
                "--port",
                str(port),
                "--address",
                "127.0.0.1",
                "--interface",
                "127.0.0.1",
                "--http-port",
                "0",
                "--output",
                str(tmp_path / "o.wav"),
                "--state-dir",
                str(tmp_path / "state"),
                "--run-on-unfixable-error",
                str(hook),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    assert done.returncode != 0
    text = marker.read_text()
    assert text.startswith("error: raopd stops:") and "address already in use" in text.lower()
