"""Health, readiness and the metrics collector against daemon state built by hand."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from raopd import __version__, metrics
from raopd.config import Config
from raopd.core.arbiter import PlayArbiter
from raopd.core.events import EndReason, SessionEnded, VolumeChanged
from raopd.core.session import RaopSession, ReceiverInfo, SessionPorts, SessionSettings
from raopd.daemon import DaemonState
from raopd.house.house import House
from raopd.net.server import RtspConnection, RtspServer, ServerSettings
from raopd.output.player import OutputThread
from raopd.output.sinks import AlsaSink, FileSink

RECEIVER = ReceiverInfo(name="Test", hw_addr=bytes.fromhex("0a1b2c3d4e5f"))


def make_state() -> DaemonState:
    return DaemonState(config=Config(), receiver=RECEIVER)


def make_session(session_id: int = 1) -> RaopSession:
    return RaopSession(
        receiver=RECEIVER,
        ports=SessionPorts(audio=6003, control=6001, timing=6002),
        local_ip="192.0.2.1",
        peer_ip="192.0.2.10",  # documentation range: the session is sans-I/O
        now=0.0,
        session_id=session_id,
    )


def scrape(state: DaemonState) -> dict[str, float]:
    text = generate_latest(metrics.make_registry(state)).decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@pytest.fixture
def output(tmp_path):
    sink = FileSink(str(tmp_path / "out.raw"))
    sink.open()
    thread = OutputThread(sink, clock=lambda: -100.0)  # every heartbeat says -100.0
    thread.start()
    yield thread
    thread.stop()
    sink.close()


def test_health_follows_the_output_thread(output):
    state = make_state()
    assert metrics.health(state) == (False, ["audio output thread not started"])
    state.output = output
    assert metrics.health(state, now=-99.0) == (True, [])
    ok, problems = metrics.health(state, now=-100.0 + metrics.HEARTBEAT_STALE + 1.0)
    assert not ok and problems == ["audio output thread stuck: no heartbeat for 6.0 s"]
    output.stop()
    assert metrics.health(state) == (False, ["audio output thread has stopped"])


def test_health_page_says_why(output):
    state = make_state()
    page = metrics.routes(state, metrics.make_registry(state))["/healthz"]()
    assert (page.status, page.body) == (503, b"audio output thread not started\n")
    state.output = output  # its heartbeat (-100.0) is long before time.monotonic()
    page = metrics.routes(state, metrics.make_registry(state))["/healthz"]()
    assert page.status == 503 and page.body.startswith(b"audio output thread stuck")


def test_readiness_lists_what_is_missing(output):
    state = make_state()
    ready, missing = metrics.readiness(state)
    assert not ready
    assert missing == [
        "RTSP server not listening",
        "mDNS service not registered",
        "audio device not open",
    ]
    state.output = output  # a file sink is open once the daemon has it
    assert metrics.readiness(state)[1] == [
        "RTSP server not listening",
        "mDNS service not registered",
    ]
    page = metrics.routes(state, metrics.make_registry(state))["/readyz"]()
    assert page.status == 503
    assert page.body == b"RTSP server not listening\nmDNS service not registered\n"


def test_sink_opened(tmp_path):
    sink = FileSink(str(tmp_path / "out.raw"))
    assert not metrics.sink_opened(sink)
    sink.open()
    assert metrics.sink_opened(sink)
    sink.close()
    assert not metrics.sink_opened(AlsaSink("null"))  # not opened yet
    assert metrics.sink_opened(object())  # a sink with no flag counts as open


def make_server(sessions: list[RaopSession]) -> RtspServer:
    """A server that is not listening, holding connections with these sessions."""
    server = RtspServer(
        receiver=RECEIVER,
        settings=ServerSettings(),
        session_settings=SessionSettings(),
        arbiter=PlayArbiter(),
        on_event=lambda session, event: None,
    )
    for session in sessions:
        connection = RtspConnection(server)
        connection.session = session
        server.connections.add(connection)
    return server


async def test_totals_fold_each_session_once_and_keep_counting():
    state = make_state()
    session = make_session()
    session.stats.requests = 3
    session.jitter_stats.received = 7
    state.server = make_server([session])
    live = scrape(state)
    assert live["raopd_rtsp_requests_total"] == 3 and live["raopd_packets_received_total"] == 7
    assert live["raopd_sessions_total"] == 1 and live["raopd_sessions_active"] == 1

    state.totals.observe(session, SessionEnded(EndReason.TEARDOWN))
    state.totals.observe(session, SessionEnded(EndReason.TEARDOWN))  # never counted twice
    folded = scrape(state)  # the ended session is still among the connections: no double count
    assert folded["raopd_rtsp_requests_total"] == 3 and folded["raopd_packets_received_total"] == 7
    assert folded['raopd_sessions_ended_total{reason="teardown"}'] == 1
    assert folded["raopd_sessions_total"] == 1 and folded["raopd_sessions_active"] == 0

    other = make_session(2)
    state.totals.observe(other, SessionEnded(EndReason.INTERNAL_ERROR))
    state.server = make_server([])
    gone = scrape(state)
    assert gone['raopd_sessions_ended_total{reason="internal_error"}'] == 1
    assert gone["raopd_sessions_total"] == 2 and gone["raopd_rtsp_requests_total"] == 3


async def test_volume_and_gain():
    state = make_state()
    assert scrape(state)["raopd_volume"] == state.config.default_volume
    state.house = House()
    session = make_session()
    session.arbiter.claim(session)
    state.house.session_event(session, VolumeChanged(-20.0))  # the player state has the volume
    state.totals.gain_of = lambda volume: 0.25 if volume == -20.0 else 1.0
    values = scrape(state)
    assert values["raopd_volume"] == -20.0 and values["raopd_volume_gain"] == 0.25


def test_wrap_passes_every_event_on():
    seen = []
    totals = metrics.SessionTotals()
    sink = totals.wrap(lambda session, event: seen.append(event))
    session = make_session()
    sink(session, VolumeChanged(-3.0))
    sink(session, SessionEnded(EndReason.TIMED_OUT))
    assert seen == [VolumeChanged(-3.0), SessionEnded(EndReason.TIMED_OUT)]
    assert totals.ended["timed_out"] == 1


def test_output_metrics(output):
    state = make_state()
    assert "raopd_output_frames_total" not in scrape(state)
    state.output = output
    values = scrape(state)
    assert values["raopd_output_thread_alive"] == 1
    assert values["raopd_audio_device_open"] == 1
    assert values["raopd_output_frames_total"] == 0
    assert "raopd_drift_ppm" not in values  # unknown until measured: no sample, not NaN
    output.playout.stats.source_drift_ppm = 12.5
    output.playout.stats.sync_error_ms = -1.5
    output._publish()  # what the output thread does after each block: /metrics reads that
    values = scrape(state)
    assert values["raopd_drift_ppm"] == 12.5 and values["raopd_sync_error_seconds"] == -0.0015
    assert values[f'raopd_build_info{{version="{__version__}"}}'] == 1


async def test_clock_counters_are_scraped_and_folded():
    from raopd.core.clock import ClockSync

    state = make_state()
    session = make_session()
    assert session.clock_stats is None  # no stream announced: nothing to count yet
    session._clock = ClockSync()
    session._clock.stats.rejected = 2
    session._clock.stats.syncs_late = 5
    state.server = make_server([session])
    live = scrape(state)
    assert live["raopd_timing_rejected_total"] == 2
    assert live["raopd_sync_packets_late_total"] == 5
    state.totals.observe(session, SessionEnded(EndReason.TEARDOWN))
    state.server = make_server([])
    folded = scrape(state)
    assert folded["raopd_timing_rejected_total"] == 2
    assert folded["raopd_sync_packets_late_total"] == 5
    assert folded["raopd_clock_steps_total"] == 0


async def test_house_consumers_are_counted():
    from raopd.house.state import Change, ChangeKind, PlayerState

    state = make_state()
    state.house = House()
    slow = state.house.fanout.subscribe("slow", maxlen=2)
    state.house.fanout.publish(
        [Change(ChangeKind.PROGRESS, PlayerState(), float(n)) for n in range(5)]
    )
    values = scrape(state)
    assert values['raopd_house_changes_dropped_total{consumer="slow"}'] == 3
    assert values['raopd_house_changes_delivered_total{consumer="slow"}'] == 0
    assert values["raopd_artwork_dropped_total"] == 0
    assert slow.pending() == 2
