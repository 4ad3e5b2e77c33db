"""Health, readiness and Prometheus metrics, all read from the daemon's state when asked.

Nothing here runs on the audio path: the session, jitter buffer, playout and sinks keep their
plain integer counters, and a custom collector turns them into Prometheus families at scrape
time, on the event loop. Counters over sessions are running totals: the counters of sessions
that ended are added up when they end (`SessionTotals`), the live sessions' are added at scrape
time, so a total never goes backwards. Labels are few and fixed (no session ids, names or
addresses), so the series count does not grow with use.

- `health(state)`: the event loop answers (this code runs) and the audio output thread is
  alive with a heartbeat newer than `HEARTBEAT_STALE` seconds.
- `readiness(state)`: RTSP listening, the mDNS service registered, the audio device open.
- `make_registry(state)`: a `CollectorRegistry` of our own (never the library's global one)
  with the daemon collector and the process collector (CPU seconds, memory, open fds).
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from raopd import __version__
from raopd.core.events import EndReason, Event, SessionEnded
from raopd.core.session import RaopSession, State
from raopd.media.decoder import FrameFault
from raopd.net.http import Response, Route

if TYPE_CHECKING:
    from raopd.daemon import DaemonState


# The classic text format every Prometheus version reads; our names need nothing newer.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEARTBEAT_STALE = 5.0  # seconds: the output loop ticks at least every 0.5 s when healthy

# One label value per EndReason: the set is fixed, so no reason can add series.
END_REASON_LABELS = tuple(reason.value for reason in EndReason)

EventSink = Callable[[RaopSession, Event], None]


def sink_opened(sink: object) -> bool:
    """True when the sink's device is open. ALSA sinks say so in `opened`; a sink without
    the flag (a file) is open from the moment the daemon has it."""
    return bool(getattr(sink, "opened", True))


@dataclass(slots=True)
class SessionTotals:
    """Counters of the sessions that ended, and what the daemon saw in their events."""

    ended: Counter[str] = field(default_factory=Counter)  # by END_REASON_LABELS
    session: Counter[str] = field(default_factory=Counter)  # SessionStats fields
    jitter: Counter[str] = field(default_factory=Counter)  # JitterStats fields
    audio: Counter[str] = field(default_factory=Counter)  # AudioStats counters
    clock: Counter[str] = field(default_factory=Counter)  # ClockStats counters
    undecodable: Counter[str] = field(default_factory=Counter)  # by FrameFault label
    # AirPlay volume -> the linear gain the output applies (None: volume is not applied).
    gain_of: Callable[[float], float] | None = None
    _folded: weakref.WeakSet[RaopSession] = field(default_factory=weakref.WeakSet)

    def observe(self, session: RaopSession, event: Event) -> None:
        """Account for one session event (called before the daemon's own router)."""
        # Every connection's end, played or not; the player state (raopd.house) has the rest.
        if isinstance(event, SessionEnded) and session not in self._folded:
            self._folded.add(session)
            self.ended[event.reason.value] += 1
            self.session.update(asdict(session.stats))
            self.jitter.update(asdict(session.jitter_stats))
            audio = session.audio_stats
            self.audio.update({key: getattr(audio, key) for _, key, _ in _AUDIO_COUNTERS})
            self.undecodable.update(audio.undecodable_by_reason)
            clock = session.clock_stats
            if clock is not None:
                self.clock.update({key: getattr(clock, key) for _, key, _ in _CLOCK_COUNTERS})

    def wrap(self, sink: EventSink) -> EventSink:
        """An event sink that accounts for each event, then passes it on to `sink`."""

        def observed(session: RaopSession, event: Event) -> None:
            self.observe(session, event)
            sink(session, event)

        return observed

    def gain(self, volume: float) -> float:
        """The linear gain the output applies at `volume`."""
        return 1.0 if self.gain_of is None else self.gain_of(volume)

    def live(self, sessions: Iterable[RaopSession]) -> list[RaopSession]:
        """The sessions among `sessions` whose counters are not folded in yet."""
        return [s for s in sessions if s not in self._folded]


# -------------------------------------------------------------------------- probes


def health(state: DaemonState, now: float | None = None) -> tuple[bool, list[str]]:
    """(healthy, problems). The event loop is alive, since this runs on it."""
    output = state.output
    if output is None:
        return False, ["audio output thread not started"]
    if not output.alive:
        return False, ["audio output thread has stopped"]
    age = (time.monotonic() if now is None else now) - output.heartbeat
    if age > HEARTBEAT_STALE:
        return False, [f"audio output thread stuck: no heartbeat for {age:.1f} s"]
    return True, []


def output_fault(state: DaemonState) -> str | None:
    """Why the output cannot take audio now (disk full, broken pipe, thread gone), or None.

    The one definition /readyz and ANNOUNCE (through the arbiter's fault_source) both read.
    """
    output = state.output
    if output is None:
        return None
    if not output.alive:
        return "the audio output thread stopped"
    return output.snapshot().fault


def readiness(state: DaemonState) -> tuple[bool, list[str]]:
    """(ready, what is not ready yet): RTSP listening, mDNS registered, audio device open."""
    missing: list[str] = []
    if state.server is None or not state.server.listening:
        missing.append("RTSP server not listening")
    if state.mdns is None or not state.mdns.registered:
        missing.append("mDNS service not registered")
    elif not state.mdns.addresses:
        # Announced with no address record: no sender can find this speaker.
        where = ", ".join(state.mdns.interfaces or ["any interface"])
        missing.append(f"no network address to advertise on {where}")
    if state.output is None or not sink_opened(state.output.sink):
        missing.append("audio device not open")
    elif (fault := output_fault(state)) is not None:
        missing.append(f"audio output failed: {fault}")
    return not missing, missing


def _probe_response(ok: bool, problems: list[str], good: str) -> Response:
    if ok:
        return Response.text(200, good)
    return Response.text(503, "\n".join(problems))


def routes(state: DaemonState, registry: CollectorRegistry) -> dict[str, Route]:
    """The probe and metrics routes: /healthz, /readyz, /metrics (the page at / is raopd.web)."""

    def healthz() -> Response:
        return _probe_response(*health(state), "ok")

    def readyz() -> Response:
        return _probe_response(*readiness(state), "ready")

    def metrics() -> Response:
        return Response(200, generate_latest(registry), CONTENT_TYPE)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


# -------------------------------------------------------------------------- metrics


def make_registry(state: DaemonState) -> CollectorRegistry:
    """A registry of our own with the daemon's collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(state))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, memory, fds (Linux)
    return registry


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


# (metric name without raopd_ and _total, source field, help). Session and jitter counters
# are totals over every session since start.
_SESSION_COUNTERS = (
    ("rtsp_requests", "requests", "RTSP requests received"),
    ("rtsp_bad_requests", "bad_requests", "RTSP requests refused as malformed or invalid"),
    (
        "rtsp_oversized_requests",
        "oversized_requests",
        "RTSP requests refused (413) for a body over the limit, skipped unread",
    ),
    ("datagrams", "datagrams", "UDP datagrams received on session ports"),
    ("bad_datagrams", "bad_datagrams", "UDP datagrams dropped as malformed or unexpected"),
    ("foreign_datagrams", "foreign_datagrams", "UDP datagrams dropped: not from the sender"),
    ("resend_request_datagrams", "resend_datagrams", "Resend request datagrams sent"),
    (
        "rtsp_refused_in_state",
        "refused_in_state",
        "RTSP requests refused 455: not valid in the session's state",
    ),
    (
        "rtsp_refused_not_playing",
        "refused_not_playing",
        "RTSP requests refused 453: stream requests from a session without the play lock",
    ),
    ("rtsp_auth_failures", "auth_failures", "Wrong Digest answers"),
)
_CLOCK_COUNTERS = (
    ("timing_replies", "replies", "Timing replies received"),
    (
        "timing_rejected",
        "rejected",
        "Timing replies not used: inconsistent with the clock estimate beyond jitter and drift",
    ),
    ("clock_steps", "steps", "Clock estimates restarted on a confirmed step of a sender's clock"),
    ("sync_packets", "syncs", "Sync packets received"),
    ("sync_packets_late", "syncs_late", "Sync packets stamped later than the anchor line"),
    (
        "sync_packets_rejected",
        "syncs_rejected",
        "Sync packets more than 250 ms off the anchor line (discontinuity candidates)",
    ),
    ("anchor_resets", "anchor_resets", "Sync anchors restarted (FLUSH, a jump the sender meant)"),
)
_AUDIO_COUNTERS = (
    ("packets_resent", "resent_packets", "Audio packets received as resends"),
    ("packets_flushed", "flushed_packets", "Audio packets dropped as older than a flush"),
    (
        "packets_paced",
        "paced_packets",
        "Audio packets dropped: due more than 10 s ahead (a sender far ahead of real time)",
    ),
    ("session_frames", "frames_out", "Frames the sessions passed to the output"),
    (
        "session_silent_frames",
        "silent_frames_out",
        "Frames of silence standing in for lost or undecodable audio",
    ),
    ("session_overlap_frames", "overlap_frames", "Frames dropped as overlapping earlier audio"),
)
# Every reason an audio packet can be undecodable, so the series exist from the start.
UNDECODABLE_REASONS = tuple(fault.value for fault in FrameFault)
_JITTER_COUNTERS = (
    ("packets_received", "received", "Audio packets received, first copies (jitter buffer)"),
    ("packets_duplicate", "duplicates", "Audio packets received more than once"),
    ("packets_late", "late", "Audio packets received after their gap was given up"),
    ("packets_missing", "missing", "Audio packets found missing (sequence gaps)"),
    ("packets_lost", "lost", "Missing audio packets never repaired (played as silence)"),
    (
        "packets_overfull",
        "overfull",
        "Of the lost packets, gaps given up early because the jitter buffer was full",
    ),
    ("packets_resend_requested", "resend_requests", "Sequence numbers asked for again"),
    ("jitter_restarts", "restarts", "Sender sequence jumps followed (jitter buffer restarts)"),
    ("packets_stray", "stray", "Audio packets far from the stream that nothing followed"),
    (
        "packets_flushed_buffered",
        "flushed",
        "Audio packets still buffered at a flush or at the end of a stream",
    ),
)


class DaemonCollector(Collector):
    """Reads the daemon's counters at scrape time."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        totals = state.totals
        server = state.server
        sessions = [c.session for c in server.connections] if server is not None else []
        live = totals.live(s for s in sessions if s is not None)

        info = InfoMetricFamily("raopd_build", "raopd version")
        info.add_metric([], {"version": __version__})
        yield info

        ready, _ = readiness(state)
        healthy, _ = health(state)
        yield _gauge("raopd_ready", "1 when /readyz would answer 200", ready)
        yield _gauge("raopd_healthy", "1 when /healthz would answer 200", healthy)
        yield _gauge(
            "raopd_rtsp_listening",
            "1 while the RTSP server listens",
            server is not None and server.listening,
        )
        yield _gauge(
            "raopd_mdns_registered",
            "1 while the speaker is advertised over mDNS",
            state.mdns is not None and state.mdns.registered,
        )

        # Sessions: one per RTSP connection; a stream is a session that sent RECORD.
        yield _counter(
            "raopd_sessions", "RTSP sessions since start", sum(totals.ended.values()) + len(live)
        )
        yield _gauge(
            "raopd_sessions_active",
            "RTSP sessions open now",
            sum(1 for s in live if s.state is not State.ENDED),
        )
        ended = CounterMetricFamily(
            "raopd_sessions_ended", "RTSP sessions ended, by reason", labels=["reason"]
        )
        for reason in END_REASON_LABELS:
            ended.add_metric([reason], totals.ended[reason])
        yield ended
        yield _counter("raopd_streams_started", "Streams started (RECORD)", state.sessions_started)
        yield _gauge("raopd_streams_playing", "1 while a stream plays", state.playing is not None)

        for name, key, doc in _SESSION_COUNTERS:
            value = totals.session[key] + sum(getattr(s.stats, key) for s in live)
            yield _counter(f"raopd_{name}", doc, value)
        for name, key, doc in _JITTER_COUNTERS:
            value = totals.jitter[key] + sum(getattr(s.jitter_stats, key) for s in live)
            yield _counter(f"raopd_{name}", doc, value)
        for name, key, doc in _AUDIO_COUNTERS:
            value = totals.audio[key] + sum(getattr(s.audio_stats, key) for s in live)
            yield _counter(f"raopd_{name}", doc, value)
        for name, key, doc in _CLOCK_COUNTERS:
            value = totals.clock[key] + sum(
                getattr(c, key) for c in (s.clock_stats for s in live) if c is not None
            )
            yield _counter(f"raopd_{name}", doc, value)
        undecodable = CounterMetricFamily(
            "raopd_packets_undecodable",
            "Audio packets that could not be decrypted or decoded (played as silence), by reason",
            labels=["reason"],
        )
        for reason in UNDECODABLE_REASONS:
            value = totals.undecodable[reason] + sum(
                s.audio_stats.undecodable_by_reason[reason] for s in live
            )
            undecodable.add_metric([reason], value)
        yield undecodable
        yield _counter(
            "raopd_session_processing_seconds",
            "Event-loop time spent on sender input: RTSP, datagram parsing, jitter buffer, "
            "decryption and decoding, and handing audio to the output thread",
            server.busy_seconds if server is not None else 0.0,
        )
        yield _counter(
            "raopd_rtsp_connections_evicted",
            "Idle RTSP connections closed to make room for new ones",
            server.evicted if server is not None else 0,
        )
        yield _counter(
            "raopd_rtsp_connections_refused",
            "RTSP connections refused at accept: over the limits, nothing to evict",
            server.refused if server is not None else 0,
        )
        yield _counter(
            "raopd_rsa_requests_delayed",
            "RTSP requests held for the per-address RSA budget (challenges, encrypted ANNOUNCE)",
            server.throttle.challenges_delayed if server is not None else 0,
        )
        http = state.http
        yield _counter(
            "raopd_http_connections_evicted",
            "HTTP clients closed while waiting for their request head, to make room",
            http.evicted if http is not None else 0,
        )

        player_volume = state.house.fanout.state.volume if state.house is not None else None
        volume = player_volume.airplay if player_volume is not None else state.config.default_volume
        yield _gauge("raopd_volume", "AirPlay volume: -30 (quietest) to 0, -144 = mute", volume)
        yield _gauge(
            "raopd_volume_gain",
            "Linear gain applied to the audio (1 = untouched)",
            totals.gain(volume),
        )

        yield from self._output()
        yield from self._house()
        yield from self._web()

    def _house(self) -> Iterator[Metric]:
        """The player state's consumers (raopd.house): what they delivered, dropped, failed."""
        house = self.state.house
        if house is None:
            return
        families = {
            "delivered": CounterMetricFamily(
                "raopd_house_changes_delivered",
                "Player-state changes a consumer handled",
                labels=["consumer"],
            ),
            "dropped": CounterMetricFamily(
                "raopd_house_changes_dropped",
                "Player-state changes a slow consumer lost (its queue was full)",
                labels=["consumer"],
            ),
            "failed": CounterMetricFamily(
                "raopd_house_consumer_failures",
                "Player-state changes whose consumer raised",
                labels=["consumer"],
            ),
        }
        totals: dict[str, Counter[str]] = {key: Counter() for key in families}
        for subscription in house.fanout.subscriptions:
            totals["delivered"][subscription.name] += subscription.counters.delivered
            totals["dropped"][subscription.name] += subscription.counters.dropped
            totals["failed"][subscription.name] += subscription.counters.failed
        for key, family in families.items():
            for name, value in sorted(totals[key].items()):
                family.add_metric([name], value)
            yield family
        yield _counter(
            "raopd_artwork_dropped",
            "Cover art dropped as too large",
            house.tracker.counters.artwork_dropped,
        )
        if house.pipe is not None:
            for sink in (house.pipe.pipe, house.pipe.udp):
                if sink is not None:
                    kind = "pipe" if sink is house.pipe.pipe else "udp"
                    yield _counter(
                        f"raopd_metadata_{kind}_items_dropped",
                        f"Metadata items not written to the {kind} (no or stalled reader)",
                        sink.counters.items_dropped,
                    )
        if house.mqtt is not None:
            yield _gauge(
                "raopd_mqtt_connected",
                "1 while connected to the MQTT broker",
                house.mqtt.connected.is_set(),
            )
            yield _counter(
                "raopd_mqtt_changes_dropped",
                "Changes not published because the broker was unreachable",
                house.mqtt.counters.dropped,
            )
        if house.hooks is not None:
            hook_counters = house.hooks.counters
            yield _counter("raopd_hook_runs", "Hook commands run", hook_counters.runs)
            yield _counter(
                "raopd_hook_failures",
                "Hooks that failed or could not start",
                hook_counters.failures,
            )
            yield _counter(
                "raopd_hook_timeouts", "Hooks killed at their timeout", hook_counters.timeouts
            )
            yield _counter(
                "raopd_webhook_failures",
                "Webhook posts that failed every attempt",
                hook_counters.webhook_failures,
            )
        if house.remote is not None:
            yield _counter(
                "raopd_remote_commands_sent", "Remote commands done", house.remote.counters.sent
            )
            yield _counter(
                "raopd_remote_commands_refused",
                "Remote commands refused (no DACP, nothing playing, sender said no)",
                house.remote.counters.refused,
            )
        router = self.state.router
        if router is not None:
            yield _counter(
                "raopd_audio_held_frames",
                "Frames held back while play-start hooks ran (hook_wait_for_completion)",
                router.held_frames,
            )
            yield _counter(
                "raopd_audio_held_dropped_frames",
                "Held frames dropped: held too long, or flushed",
                router.held_dropped_frames,
            )

    def _web(self) -> Iterator[Metric]:
        """The HTTP port (connections the guard closed) and the page's API and event stream."""
        http = self.state.http
        if http is not None:
            yield _gauge("raopd_http_connections", "HTTP connections open", http.connections)
            for name, value, doc in (
                ("evicted", http.evicted, "closed while waiting for a head, to make room"),
                ("refused", http.refused, "closed at once: too many connections"),
                ("expired", http.expired, "closed for sending no request head in time"),
                ("cut", http.cut, "closed for not taking an answer in time"),
            ):
                yield _counter(f"raopd_http_connections_{name}", f"HTTP connections {doc}", value)
            yield _counter(
                "raopd_http_bad_requests",
                "HTTP requests that did not parse (answered 400), or whose client left first",
                http.bad_requests,
            )
        web = self.state.web
        if web is not None:
            hub = web.hub
            yield _gauge("raopd_web_event_clients", "Event streams open", len(hub.clients))
            yield _counter(
                "raopd_web_event_clients_dropped",
                "Event streams cut off for falling behind (not reading)",
                hub.counters.dropped,
            )
            yield _counter(
                "raopd_web_event_clients_refused",
                "Event streams refused: web_event_clients were open",
                hub.counters.refused,
            )
            api = web.api.counters
            yield _counter("raopd_api_control", "API control requests done", api.control)
            yield _counter(
                "raopd_api_control_refused",
                "API control requests answered 409 (the sender cannot be controlled)",
                api.refused,
            )
            yield _counter(
                "raopd_api_unauthorized",
                "API requests refused for no or a wrong token",
                api.unauthorized,
            )

    def _output(self) -> Iterator[Metric]:
        output = self.state.output
        alive = output is not None and output.alive
        yield _gauge("raopd_output_thread_alive", "1 while the audio output thread runs", alive)
        if output is None:
            return
        # Everything below comes from the thread's locked snapshot, never its live objects.
        snap = output.snapshot()
        yield _gauge(
            "raopd_output_heartbeat_age_seconds",
            "Seconds since the audio output thread last went round its loop",
            max(0.0, time.monotonic() - snap.heartbeat),
        )
        yield _gauge("raopd_audio_device_open", "1 while the audio device is open", snap.opened)
        yield _gauge(
            "raopd_output_failed",
            "1 while the output cannot take audio (disk full, broken pipe)",
            snap.fault is not None,
        )
        yield _counter(
            "raopd_output_frames", "Frames written to the audio output", snap.frames_written
        )
        yield _counter(
            "raopd_output_rejected_frames",
            "Frames dropped by the output for a shape or sample type it cannot play",
            output.rejected_frames,
        )
        yield _counter(
            "raopd_output_underruns",
            "ALSA underruns (the device ran dry)",
            snap.sink.underruns if snap.sink is not None else 0,
        )
        yield _counter(
            "raopd_audio_device_reopen_attempts",
            "Attempts to open the audio device again after it failed or was missing",
            snap.sink.reopen_attempts if snap.sink is not None else 0,
        )
        yield _counter(
            "raopd_output_errors",
            "Rounds of the output loop that failed and were survived",
            snap.errors,
        )
        yield _counter(
            "raopd_output_rejected_frames",
            "Frames dropped by the output: not 16-bit stereo",
            snap.rejected_frames,
        )
        yield _counter(
            "raopd_output_fault_dropped_frames",
            "Frames dropped while the output failed (disk full, broken pipe)",
            snap.sink_dropped_frames,
        )
        stats = snap.playout
        yield _gauge(
            "raopd_sync_error_seconds",
            "Recent median playout timing error, positive = late",
            stats.sync_error_ms / 1e3,
        )
        yield _gauge(
            "raopd_correction_ppm",
            "Drift correction applied now, positive = dropping frames",
            stats.correction_ppm,
        )
        yield _gauge(
            "raopd_net_correction_ppm",
            "Frames dropped minus inserted per million played, this stream",
            stats.all_sync_ppm,
        )
        if stats.source_drift_ppm is not None:  # no sample until measured, rather than NaN
            yield _gauge(
                "raopd_drift_ppm", "Sender clock rate versus ours, ppm", stats.source_drift_ppm
            )
        yield _gauge("raopd_playout_queue_frames", "Frames queued for playout", stats.queue_frames)
        yield _gauge(
            "raopd_dac_drift_ppm",
            "DAC clock against the sender's timeline as the corrections imply (+ = DAC slow)",
            stats.drift_ppm,
        )
        yield _gauge(
            "raopd_sync_tolerance_seconds",
            "Tolerance band in use: the setting, or wider for a noisy delay reading",
            stats.band_ms / 1e3,
        )
        for name, value, doc in (
            ("playout_frames_played", stats.frames_played, "Frames played by timed playout"),
            ("playout_frames_inserted", stats.frames_inserted, "Frames inserted (drift)"),
            ("playout_frames_dropped", stats.frames_dropped, "Frames dropped (drift)"),
            ("playout_silence_frames", stats.silence_frames, "Frames of silence written"),
            ("playout_skipped_frames", stats.skipped_frames, "Late or flushed frames skipped"),
            ("playout_resyncs", stats.resyncs, "Jumps because the sync error passed the threshold"),
            ("playout_realignments", stats.realignments, "Realignments after the DAC ran dry"),
            ("playout_underflows", stats.underflows, "Pulls where due audio was not there"),
        ):
            yield _counter(f"raopd_{name}", doc, value)
