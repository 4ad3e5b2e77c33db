"""Hooks with real processes and a real HTTP receiver: environment, output, timeouts, webhooks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from raopd.house import hooks as hooks_module
from raopd.house.hooks import Hooks, HookSettings
from raopd.house.state import (
    Change,
    ChangeKind,
    PlayerState,
    Sender,
    Status,
    Track,
    Volume,
)

STATE = PlayerState(
    status=Status.PLAYING,
    active=True,
    sender=Sender(3, "Joe's iPhone", "10.0.0.2", "10.0.0.1", "AirPlay/381.13"),
    track=Track(title="Été", artist="Artist; rm -rf /", album="Album"),
    volume=Volume(-12.5, -21.0),
)


def change(kind: ChangeKind, reason: str = "") -> Change:
    return Change(kind, STATE, 1.0, reason=reason)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "hook.py"
    path.write_text(body)
    return f"{sys.executable} {path}"


async def test_hook_sees_the_documented_environment_and_its_output_is_logged(tmp_path, caplog):
    dump = tmp_path / "env.json"
    command = script(
        tmp_path,
        "import json, os, sys\n"
        f"json.dump({{'env': dict(os.environ), 'argv': sys.argv[1:]}}, open({str(dump)!r}, 'w'))\n"
        "print('amplifier on')\n",
    )
    hooks = Hooks(HookSettings(commands={"volume": command}), environ={"HOME": "/root"})
    with caplog.at_level(logging.INFO, logger="raopd.house.hooks"):
        await hooks(change(ChangeKind.VOLUME))
    seen = json.loads(dump.read_text())
    env = seen["env"]
    assert env["PATH"] == hooks_module.DEFAULT_PATH  # a PATH even when the daemon had none
    assert env["RAOPD_EVENT"] == "volume" and env["RAOPD_STATE"] == "playing"
    assert env["RAOPD_TITLE"] == "Été" and env["RAOPD_ARTIST"] == "Artist; rm -rf /"
    assert env["RAOPD_SENDER"] == "Joe's iPhone" and env["RAOPD_SENDER_IP"] == "10.0.0.2"
    assert env["RAOPD_VOLUME"] == "-12.50" and env["RAOPD_VOLUME_DB"] == "-21.00"
    assert env["HOME"] == "/root"
    assert seen["argv"] == ["-12.50"]  # the volume appended, as shairport-sync does
    assert "hook volume: amplifier on" in caplog.text
    assert hooks.counters.runs == 1 and hooks.counters.failures == 0


async def test_no_shell_unless_asked(tmp_path):
    marker = tmp_path / "marker"
    # Without a shell the ';' is just an argument to echo: nothing else runs.
    hooks = Hooks(HookSettings(commands={"play_end": f"echo hi; touch {marker}"}))
    await hooks(change(ChangeKind.PLAY_END))
    assert not marker.exists()
    shelled = Hooks(HookSettings(commands={"play_end": f"echo hi; touch {marker}"}, shell=True))
    await shelled(change(ChangeKind.PLAY_END))
    assert marker.exists()


async def test_a_hook_that_hangs_is_killed_with_its_children_at_the_timeout(tmp_path, caplog):
    pidfile = tmp_path / "child.pid"
    command = f"sleep 1000 & echo $! > {pidfile}; wait"
    hooks = Hooks(HookSettings(commands={"play_start": command}, shell=True, timeout=0.5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await hooks(change(ChangeKind.PLAY_BEGIN))
    assert loop.time() - started < 5.0
    assert hooks.counters.timeouts == 1
    assert "killed" in caplog.text
    child = int(pidfile.read_text())
    for _ in range(100):  # the whole process group went, the background sleep too
        if (
            not Path(f"/proc/{child}").exists()
            or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
        ):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the hook's child survived")


async def test_failing_and_missing_commands_are_counted_not_raised(caplog):
    hooks = Hooks(HookSettings(commands={"play_start": "false", "play_end": "/nonexistent/amp on"}))
    await hooks(change(ChangeKind.PLAY_BEGIN))
    await hooks(change(ChangeKind.PLAY_END))
    assert hooks.counters.failures == 2
    assert "exited with status 1" in caplog.text and "cannot run" in caplog.text


async def test_wait_for_completion_closes_the_gate_until_the_start_hook_is_done(tmp_path):
    hooks = Hooks(
        HookSettings(commands={"play_start": "sleep 0.3"}, wait_for_completion=True, timeout=5)
    )
    assert hooks.holds_audio and hooks.audio_gate.is_set()
    hooks.observe(change(ChangeKind.PLAY_BEGIN))  # inline, as the change is published
    assert not hooks.audio_gate.is_set()
    run = asyncio.create_task(hooks(change(ChangeKind.PLAY_BEGIN)))
    await asyncio.sleep(0.1)
    assert not hooks.audio_gate.is_set()
    await run
    assert hooks.audio_gate.is_set()
    await hooks.close()


async def test_webhooks_get_json_and_are_retried_a_bounded_number_of_times(monkeypatch):
    monkeypatch.setattr(hooks_module, "WEBHOOK_BACKOFF", 0.01)
    received: list[dict[str, object]] = []
    failures = {"n": 2}

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/down":
            return web.Response(status=503)
        if failures["n"]:
            failures["n"] -= 1
            return web.Response(status=500)
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        hooks = Hooks(
            HookSettings(
                webhook_urls=(f"http://127.0.0.1:{port}/ok", f"http://127.0.0.1:{port}/down")
            )
        )
        await hooks(change(ChangeKind.PLAY_END, reason="teardown"))
        await hooks.close()
    finally:
        await runner.cleanup()
    assert len(received) == 1  # two 500s, then delivered on the third attempt
    body = received[0]
    assert body["event"] == "play_end" and body["reason"] == "teardown"
    assert body["track"] == {
        "title": "Été",
        "artist": "Artist; rm -rf /",
        "album": "Album",
        "genre": None,
        "composer": None,
    }
    assert body["sender"]["name"] == "Joe's iPhone"  # type: ignore[index]
    assert body["volume"]["airplay"] == -12.5  # type: ignore[index]
    assert hooks.counters.webhooks_sent == 1 and hooks.counters.webhook_failures == 1


async def test_events_without_a_hook_do_nothing():
    hooks = Hooks(HookSettings(commands={"play_start": "true"}))
    await hooks(change(ChangeKind.PROGRESS))
    await hooks(change(ChangeKind.METADATA))
    assert hooks.counters.runs == 0
    assert os.environ.get("RAOPD_EVENT") is None  # nothing leaked into our own environment
