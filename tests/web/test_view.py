"""The API's state document for states a stream cannot easily produce on demand (mute, no
drift yet, paused, a track with no cover), checked against the OpenAPI file."""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import yaml

from raopd.house.state import (
    Artwork,
    PlayerState,
    Sender,
    Status,
    StreamInfo,
    SyncFigures,
    Track,
    TrackProgress,
    Volume,
)
from raopd.web.view import OutputInfo, remote_status, state_document

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "raopd" / "web" / "static" / "openapi.yaml").read_text())
VALIDATOR = jsonschema.Draft202012Validator({**SPEC, "$ref": "#/components/schemas/State"})
OUTPUT = OutputInfo(device="hw:CARD=DAC", open=True)
SENDER = Sender(1, "Joe's iPhone", "192.168.1.20", "192.168.1.2", dacp_id="AB", active_remote="1")


def document(state: PlayerState, monotonic_now: float = 100.0) -> dict[str, object]:
    value = state_document(
        state, monotonic_now=monotonic_now, wall_now=1_800_000_000.0, output=OUTPUT
    )
    VALIDATOR.validate(value)
    return value


def test_idle_at_start():
    value = document(PlayerState())
    assert value["status"] == "idle" and value["remote"]["available"] is False


def test_mute_has_no_db_and_zero_percent():
    state = PlayerState(volume=Volume(-144.0, -math.inf))
    assert document(state)["volume"] == {
        "airplay": -144.0, "db": None, "percent": 0.0, "muted": True,
    }  # fmt: skip


def test_progress_moves_while_playing_and_stands_while_paused():
    progress = TrackProgress(10.0, 200.0, at=95.0, start=0, current=441000, end=8820000)
    playing = PlayerState(status=Status.PLAYING, sender=SENDER, progress=progress)
    value = document(playing)["progress"]
    assert value["position_now_s"] == 15.0 and value["moving"] is True
    assert value["at"] == 1_800_000_000.0 - 5.0  # monotonic 95 is wall 5 s before now
    paused = PlayerState(status=Status.PAUSED, sender=SENDER, progress=progress)
    assert document(paused)["progress"]["position_now_s"] == 10.0
    late = PlayerState(status=Status.PLAYING, sender=SENDER, progress=progress)
    assert document(late, monotonic_now=1000.0)["progress"]["position_now_s"] == 200.0


def test_a_full_state():
    state = PlayerState(
        status=Status.PLAYING,
        active=True,
        sender=SENDER,
        track=Track(title="Fast Car", artist="Tracy Chapman"),
        artwork=Artwork(b"\xff\xd8\xff\xe0jpeg", "image/jpeg"),
        volume=Volume(-12.0, -24.0),
        stream=StreamInfo("ALAC", True, 44100, 88200),
        sync=SyncFigures(0.04, 1.5, None, 0, 0, 0, True, packets_lost=2, packets_resent=5),
    )
    value = document(state)
    assert value["artwork"]["url"].startswith("api/v1/artwork?v=")  # relative: any prefix
    assert value["stream"]["latency_ms"] == 2000.0
    assert value["sync"]["drift_ppm"] is None and value["sync"]["packets_lost"] == 2
    assert value["remote"] == {"available": True, "stop": True, "reason": None}


def test_remote_says_why_not():
    no_dacp = PlayerState(status=Status.PLAYING, sender=Sender(1, "", "10.0.0.9", "10.0.0.1"))
    assert remote_status(no_dacp) == {
        "available": False,
        "stop": True,
        "reason": "10.0.0.9 offers no remote control (it sent no DACP-ID)",
    }
