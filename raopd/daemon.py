"""The daemon's life: start the output, the RTSP server and mDNS; stop them in reverse order.

`run(config)` returns when the shutdown event is set (SIGTERM or SIGINT, or the caller's own
event in tests). Start-up opens the audio output (falling back to ALSA's `null` device with a
clear message when the machine has no sound card and the user asked for nothing specific),
starts the one output thread, listens for senders, then announces the speaker over mDNS.
Shutdown withdraws the mDNS record first (goodbye packets), ends every session, and stops the
output thread, well within the 2 s a pod's grace period allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from raopd import metrics
from raopd.config import Config
from raopd.core.arbiter import PlayArbiter
from raopd.core.clock import ClockEstimate
from raopd.core.events import (
    AudioReady,
    ClockUpdated,
    EndReason,
    Event,
    Flushed,
    SessionEnded,
    StreamStarted,
    VolumeChanged,
)
from raopd.core.jitter import JitterSettings
from raopd.core.playout import PlayoutSettings
from raopd.core.seq import rtp_add
from raopd.core.session import RaopSession, ReceiverInfo, SessionSettings
from raopd.core.volume import airplay_to_db, db_to_gain
from raopd.errors import ConfigError, OutputError, RaopError
from raopd.house.dacp import DacpRemote
from raopd.house.hooks import Hooks, HookSettings
from raopd.house.house import House, start_log, start_metadata_pipe
from raopd.house.mqtt import MqttClient, MqttSettings
from raopd.house.sps import VolumeRange
from raopd.house.state import PlayerState, SyncFigures
from raopd.media import crypto
from raopd.net.device_id import load_or_create_device_id
from raopd.net.http import HttpServer
from raopd.net.mdns import MdnsAdvertiser
from raopd.net.server import RtspServer, ServerSettings
from raopd.output.mixer import HardwareMixer
from raopd.output.player import EndStream, Flush, OutputThread, Push, SetGain, UseClock
from raopd.output.sinks import AlsaSink, AudioSink, FileSink
from raopd.output.statistics import format_statistics, not_as_sent
from raopd.web import app as web_app
from raopd.web.app import Web
from raopd.web.view import Clock, OutputInfo

logger = logging.getLogger(__name__)

OUTPUT_STOP_TIMEOUT = 1.0  # seconds; shutdown must finish within 2 s in all
# Audio held for play-start hooks beyond this is due before they end anyway (senders' latency
# is 2 to 4 s), so only the newest 5 s are kept.
MAX_HELD_FRAMES = 5 * 44100


@dataclass(slots=True)
class DaemonState:
    """What the daemon is doing, for health checks and metrics."""

    config: Config
    receiver: ReceiverInfo
    output: OutputThread | None = None
    server: RtspServer | None = None
    mdns: MdnsAdvertiser | None = None
    sessions_started: int = 0
    playing: RaopSession | None = None
    counters: dict[str, int] = field(default_factory=dict)
    totals: metrics.SessionTotals = field(default_factory=metrics.SessionTotals)
    http: HttpServer | None = None
    # Packets the playing session had not played as sent at the previous statistics line.
    not_as_sent: tuple[RaopSession, int] | None = None
    house: House | None = None
    router: EventRouter | None = None
    web: Web | None = None


def open_sink(config: Config) -> AudioSink:
    """The configured output, opened; ALSA `null` when there is no sound card at all."""
    if config.output is not None:
        sink: AudioSink = FileSink(str(config.output))
        sink.open()
        logger.info("writing audio to %s (untimed, bit-exact)", sink.description)
        return sink
    alsa = AlsaSink(config.device, config.period_frames, config.buffer_frames)
    try:
        alsa.open()
    except OutputError as exc:
        if config.device != "default":
            # A USB DAC that is unplugged, or not enumerated yet at boot: keep running, report
            # not ready on /readyz, and let the output thread retry it with backoff.
            logger.error(
                "%s; retrying after %.0f s, then less often, down to every %.0f s",
                exc,
                alsa.retry_interval,
                alsa.retry_max,
            )
            alsa.note_failure(str(exc))
            return alsa
        logger.warning(
            "no sound card found: playing to ALSA's null device (audio is discarded); "
            "use --device to choose a card, or --output to write to a file"
        )
        alsa = AlsaSink("null", config.period_frames, config.buffer_frames)
        alsa.open()
    logger.info("playing to %s", alsa.description)
    return alsa


def playout_settings(config: Config, clocked: bool) -> PlayoutSettings:
    """Playout tuning from the configuration."""
    return PlayoutSettings(
        timed=clocked,
        tolerance=config.drift_tolerance,
        resync_threshold=config.resync_threshold,
        max_correction_ppm=config.max_correction_ppm,
    )


class EventRouter:
    """Turns session events into output commands and log lines."""

    def __init__(self, state: DaemonState, output: OutputThread) -> None:
        self.state = state
        self.output = output
        self.apply_volume = output.sink.clocked  # a file gets the stream exactly as sent
        self.mixer: HardwareMixer | None = None  # set: volume in hardware, samples bit-exact
        # Audio blocks (one per packet) are held until the event loop finishes the current
        # callback, then handed over as one Push: a batch of packets costs the output thread
        # one wake-up, not one per packet. A new clock estimate rides along with the next
        # Push (or any other command) instead of waking the thread itself: while a stream
        # plays audio comes every batch, and at the start the fast timing exchanges would
        # otherwise wake it 100 times a second for estimates it cannot use yet.
        self._audio: list[npt.NDArray[np.int16]] = []
        self._audio_rtptime = 0
        self._audio_end = 0
        self._estimate: ClockEstimate | None = None
        self._flush_scheduled = False
        # The player state and its consumers (pipe, MQTT, hooks, log) get every other event.
        self.house: House | None = None
        self._flushed = False  # the house hears once when audio (re)starts after RECORD/FLUSH
        # Closed while play-start hooks run with wait_for_completion: audio is held back
        # here, then handed on when they are done; the playout skips (and counts) what is
        # late by then, so the first note comes right after the hooks and in sync.
        self.audio_gate: asyncio.Event | None = None
        self._held: deque[AudioReady] = deque()
        self._held_count = 0
        self.held_frames = 0  # frames that waited for the hooks
        self.held_dropped_frames = 0  # frames held longer than MAX_HELD_FRAMES, or flushed

    def __call__(self, session: RaopSession, event: Event) -> None:
        output = self.output
        if isinstance(event, AudioReady):
            gate = self.audio_gate
            if gate is not None:
                if not gate.is_set():
                    self._hold(event)
                    return
                if self._held:
                    self.release_held()
            self._accept_audio(event)
            return
        if isinstance(event, ClockUpdated):
            self._estimate = event.estimate
            return
        self._submit_pending()  # everything else keeps its order relative to the audio
        if isinstance(event, Flushed | SessionEnded) and self.state.playing is session:
            self._drop_held()  # held audio is the playing stream's: another session's end keeps it
        if isinstance(event, Flushed):
            # Only the stream that plays may move the output's flush point: a FLUSH before
            # RECORD has nothing there to drop, and its point would outlive the session
            # (nothing ends a stream that never started) and swallow the next sender's audio.
            if self.state.playing is session:
                output.submit(Flush(event.until_rtptime))
                self._flushed = True
        elif isinstance(event, VolumeChanged):
            self.set_volume(event.volume)
        elif isinstance(event, StreamStarted):
            self.state.sessions_started += 1
            self.state.playing = session
            self._flushed = True  # the first audio is a "resume" too
        elif isinstance(event, SessionEnded) and self.state.playing is session:
            self.state.playing = None
            output.submit(EndStream())
        if self.house is not None:
            self.house.session_event(session, event)

    def _hold(self, event: AudioReady) -> None:
        self._held.append(event)
        self._held_count += len(event.pcm)
        self.held_frames += len(event.pcm)
        while self._held_count > MAX_HELD_FRAMES:
            old = self._held.popleft()
            self._held_count -= len(old.pcm)
            self.held_dropped_frames += len(old.pcm)

    def release_held(self) -> None:
        """The hooks are done: the audio held for them goes on, in order."""
        held, self._held, self._held_count = self._held, deque(), 0
        for event in held:
            self._accept_audio(event)

    def _drop_held(self) -> None:
        for event in self._held:
            self.held_dropped_frames += len(event.pcm)
        self._held.clear()
        self._held_count = 0

    def _accept_audio(self, event: AudioReady) -> None:
        if self._audio and event.rtptime != self._audio_end:
            self._submit_pending()  # not contiguous: keep the blocks apart
        if not self._audio:
            self._audio_rtptime = event.rtptime
        self._audio.append(event.pcm)
        self._audio_end = rtp_add(event.rtptime, len(event.pcm))
        self._schedule_submit()
        if self._flushed:
            self._flushed = False
            if self.house is not None:
                self.house.audio_resumed()

    def _schedule_submit(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._submit_pending)

    def _submit_pending(self) -> None:
        """Hand the held audio and the latest clock estimate to the output thread."""
        self._flush_scheduled = False
        if self._estimate is not None:
            self.output.submit(UseClock(self._estimate))
            self._estimate = None
        if self._audio:
            blocks, self._audio = self._audio, []
            pcm = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
            self.output.submit(Push(self._audio_rtptime, pcm))

    def set_volume(self, volume: float) -> None:
        """An AirPlay volume to the hardware mixer, else to the software gain."""
        if self.mixer is not None:
            self.mixer.set_volume(volume)
        elif self.apply_volume:
            self.output.submit(SetGain(self._gain(volume)))

    def volume_db(self, volume: float) -> float:
        """The attenuation in dB this volume gets (hardware or software)."""
        if self.mixer is not None:
            return self.mixer.target_db(volume)
        return self._software_db(volume)

    def _gain(self, volume: float) -> float:
        return db_to_gain(self._software_db(volume))

    def _software_db(self, volume: float) -> float:
        """The configured curve, range, cap and ignore setting applied to `volume`."""
        config = self.state.config
        return airplay_to_db(
            volume,
            config.volume_curve,  # type: ignore[arg-type]
            range_db=config.volume_range_db or 60.0,
            max_volume_db=config.volume_max_db or 0.0,
            ignore_volume=config.ignore_volume,
        )


def open_mixer(config: Config) -> HardwareMixer | None:
    """The configured hardware mixer, or None (software volume) when it cannot be opened."""
    mixer = HardwareMixer(
        str(config.mixer_control),
        config.mixer_device or _card_of(config.device),
        curve=config.volume_curve,  # type: ignore[arg-type]
        range_db=config.volume_range_db,
        max_volume_db=config.volume_max_db,
        ignore_volume=config.ignore_volume,
    )
    try:
        mixer.open()
    except OutputError as exc:
        logger.warning("%s; using software volume", exc)
        return None
    limits = mixer.db_limits
    logger.info(
        "volume on ALSA mixer %s (%s); audio samples left bit-exact",
        mixer.control,
        f"{limits[0]:.1f} to {limits[1]:.1f} dB" if limits else "percent",
    )
    return mixer


def _card_of(device: str) -> str:
    """The mixer device for a PCM name: `hw:1,0` / `plughw:CARD=DAC` -> `hw:1` / `hw:CARD=DAC`."""
    if ":" not in device:
        return "default"
    card = device.split(":", 1)[1].split(",", 1)[0]
    return f"hw:{card}"


def statistics_line(state: DaemonState) -> str:
    """The statistics line for what is playing now."""
    output = state.output.snapshot(reset=True) if state.output is not None else None
    session = state.playing
    if session is None:
        return format_statistics(output)
    count = not_as_sent(session.audio_stats, session.jitter_stats)
    previous = state.not_as_sent
    before = previous[1] if previous is not None and previous[0] is session else 0
    state.not_as_sent = (session, count)
    return format_statistics(
        output,
        session.audio_stats,
        session.jitter_stats,
        session.estimate,
        session.clock_stats,
        session=session.stats,
        replaced_in_interval=count - before,
    )


async def log_statistics(state: DaemonState, interval: float) -> None:
    """One statistics line at INFO every `interval` seconds while a stream plays."""
    while True:
        await asyncio.sleep(interval)
        if state.playing is not None:
            logger.info("statistics: %s", statistics_line(state))


def sync_figures(output: OutputThread, session: object | None = None) -> SyncFigures:
    """The output's sync figures now, from its snapshot (the interval is not reset), with the
    packet counters of the playing `session` (a RaopSession) when there is one."""
    snap = output.snapshot()
    stats = snap.playout
    jitter = getattr(session, "jitter_stats", None)
    session_stats = getattr(session, "stats", None)
    return SyncFigures(
        sync_error_ms=stats.sync_error_ms,
        correction_ppm=stats.correction_ppm,
        drift_ppm=stats.source_drift_ppm,
        frames_inserted=stats.frames_inserted,
        frames_dropped=stats.frames_dropped,
        underruns=snap.sink.underruns if snap.sink is not None else 0,
        bit_exact=stats.bit_exact,
        packets_lost=int(getattr(jitter, "lost", 0)),
        packets_resent=int(getattr(session_stats, "resent_packets", 0)),
    )


def make_web(state: DaemonState) -> Web:
    """The page and the API over the daemon's house (made later: read through `state`)."""
    config = state.config

    def player() -> PlayerState:
        return state.house.fanout.state if state.house is not None else PlayerState()

    def output() -> OutputInfo:
        opened = state.output is not None and metrics.sink_opened(state.output.sink)
        return OutputInfo(device=config.output or config.device, open=opened)

    def remote() -> DacpRemote | None:
        return state.house.remote if state.house is not None else None

    def set_volume() -> Callable[[float], Awaitable[str | None]] | None:
        dacp = remote()
        return dacp.set_volume if dacp is not None else None

    return web_app.build(
        state=player,
        clock=Clock(asyncio.get_running_loop().time),
        output=output,
        remote=remote,
        set_volume=set_volume,
        tokens=tuple(t for t in (config.api_token, config.password) if t),
        tokens_for_reading=config.api_token_for_reading,
        max_event_clients=config.web_event_clients,
        speaker=state.receiver.name,
    )


async def start_house(
    house: House, config: Config, stack: AsyncExitStack, router: EventRouter, device_id: str
) -> None:
    """The house's consumers as configured; closed (after the sessions end) with the stack."""
    start_log(house)
    volume_range = VolumeRange(
        lowest_db=router.volume_db(-30.0),
        highest_db=router.volume_db(0.0),
        ignored=config.ignore_volume,
    )
    house.pipe = await start_metadata_pipe(
        house,
        stack,
        pipe_path=config.metadata_pipe,
        timeout=config.metadata_pipe_timeout,
        socket_address=config.metadata_socket_address,
        socket_port=config.metadata_socket_port,
        msglength=config.metadata_socket_msglength,
        cover_art=config.metadata_cover_art,
        volume_range=volume_range,
    )
    if config.mqtt_host is not None:
        mqtt = MqttClient(
            MqttSettings(
                host=config.mqtt_host,
                port=config.mqtt_port,
                username=config.mqtt_username,
                password=config.mqtt_password,
                topic=config.mqtt_topic or config.name,
                publish_parsed=config.mqtt_publish_parsed,
                publish_raw=config.mqtt_publish_raw,
                publish_cover=config.mqtt_publish_cover,
                retain=config.mqtt_publish_retain,
                empty_payload=config.mqtt_empty_payload,
                remote=config.mqtt_remote,
                discovery=config.mqtt_discovery,
                discovery_prefix=config.mqtt_discovery_prefix,
                device_id=device_id,
                device_name=config.name,
                cover_art=config.metadata_cover_art,
                volume_range=volume_range,
            ),
            lambda: house.fanout.state,
            house.remote,
        )
        mqtt.start()
        stack.push_async_callback(mqtt.close)
        house.add_consumer("mqtt", mqtt)
        house.mqtt = mqtt
    commands = {
        "play_start": config.run_before_play_begins,
        "play_end": config.run_after_play_ends,
        "active_start": config.run_before_entering_active_state,
        "active_end": config.run_after_exiting_active_state,
        "volume": config.run_when_volume_is_set,
        "error": config.run_on_unfixable_error,
    }
    urls = tuple(u.strip() for u in config.webhook_urls.split(",") if u.strip())
    if any(commands.values()) or urls:
        hooks = Hooks(
            HookSettings(
                commands={k: v for k, v in commands.items() if v},
                shell=config.hook_shell,
                timeout=config.hook_timeout,
                wait_for_completion=config.hook_wait_for_completion,
                webhook_urls=urls,
            )
        )
        house.fanout.observe(hooks.observe)
        if hooks.holds_audio:
            router.audio_gate = hooks.audio_gate
            hooks.on_gate_open.append(router.release_held)
        stack.push_async_callback(hooks.close)
        house.add_consumer("hooks", hooks, maxlen=64)
        house.hooks = hooks
    stack.push_async_callback(house.close)


def check_interfaces(setting: str) -> list[str] | None:
    """The interfaces to advertise on (None: all); a name that names no interface is an error.

    An address is accepted whether or not the host has it yet: that is the readiness check's
    business (it can appear later, from DHCP), but a mistyped interface name never will.
    """
    names = [i.strip() for i in setting.split(",") if i.strip()]
    known = [name for _, name in socket.if_nameindex()]
    for name in names:
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
            continue
        except ValueError:
            pass
        if name not in known:
            raise ConfigError(
                f"interface: no network interface named {name!r} on this host "
                f"(there are: {', '.join(known)})"
            )
    return names or None


class ReadinessLog:
    """Logs "raopd ready: ..." when /readyz would answer 200 and "raopd not ready: why" when it
    would not, once per change (`metrics.readiness` is the one definition of ready).

    Nothing polls: `check()` runs once everything has started (`start()`), then whenever an
    input of the readiness can have changed: an mDNS address change (`MdnsAdvertiser.on_change`)
    and the output's device, fault or thread (`OutputThread.on_health_change`, on the output
    thread, hence `check_threadsafe`). The RTSP server and the mDNS registration change only at
    start-up and shutdown; after `close()` (shutdown) nothing more is logged.
    """

    def __init__(self, state: DaemonState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self._loop = loop
        self._last: str | None = None
        self._started = False
        self._closed = False

    def start(self) -> None:
        """Everything is up: log the state as it is, and every change from now on."""
        self._started = True
        self.check()

    def check(self) -> None:
        """Log the readiness if it differs from what was logged last (on the event loop)."""
        if not self._started or self._closed:
            return
        state = self.state
        ready, missing = metrics.readiness(state)
        now = "" if ready else "; ".join(missing)
        if now == self._last:
            return
        self._last = now
        if ready:
            mdns = state.mdns
            logger.info(
                "raopd ready: %s on port %d, %s (device id %s)",
                mdns.service_name if mdns else state.receiver.name,
                state.config.port,
                ", ".join(mdns.addresses) if mdns else "",
                state.receiver.device_id,
            )
        else:
            logger.warning("raopd not ready: %s", now)

    def check_threadsafe(self) -> None:
        """`check()` on the event loop, from any thread."""
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to log any more
            self._loop.call_soon_threadsafe(self.check)

    def close(self) -> None:
        """Shutdown: the server and mDNS going away is not news."""
        self._closed = True


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _hangup(shutdown: asyncio.Event) -> None:
    logger.info("SIGHUP: shutting down cleanly to be restarted with the new configuration")
    shutdown.set()


async def run(config: Config, shutdown: asyncio.Event | None = None) -> None:
    """Run the receiver until `shutdown` is set (SIGTERM/SIGINT when not given)."""
    loop = asyncio.get_running_loop()
    if shutdown is None:
        shutdown = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shutdown.set)
        # SIGHUP: nothing raopd holds can be swapped safely in place (ports, device, name), so
        # it is a clean shutdown (goodbye over mDNS, a complete WAV) for the service manager
        # to restart with the new configuration, rather than death by the default action.
        loop.add_signal_handler(signal.SIGHUP, _hangup, shutdown)
    interfaces = check_interfaces(config.interface)
    hw_addr = load_or_create_device_id(config.state_dir, config.device_id)
    receiver = ReceiverInfo(name=config.name, hw_addr=hw_addr, password=config.password)
    state = DaemonState(config=config, receiver=receiver)
    async with AsyncExitStack() as stack:
        if config.http_port:
            # First, so that probes get an answer (not ready yet) while the rest starts.
            state.web = make_web(state)
            http = HttpServer(
                metrics.routes(state, metrics.make_registry(state)),
                app=state.web.app,
                address=config.address,
                port=config.http_port,
            )
            await http.start()
            stack.push_async_callback(http.close)
            stack.push_async_callback(state.web.hub.close)  # streams end before the server
            state.http = http

        sink = open_sink(config)
        sink_is_file = not sink.clocked
        stack.callback(sink.close)
        output = OutputThread(
            sink, playout_settings(config, sink.clocked), period_frames=config.period_frames
        )
        readiness = ReadinessLog(state, loop)
        output.on_health_change = readiness.check_threadsafe
        output.start()
        stack.callback(output.stop, OUTPUT_STOP_TIMEOUT)
        state.output = output
        router = EventRouter(state, output)
        state.router = router
        if config.mixer_control and router.apply_volume:
            router.mixer = open_mixer(config)
            if router.mixer is not None:
                stack.callback(router.mixer.close)
        router.set_volume(config.default_volume)
        if config.statistics:
            stats_task = asyncio.create_task(log_statistics(state, config.statistics_interval))
            stack.push_async_callback(_cancel, stats_task)

        arbiter: PlayArbiter[RaopSession] = PlayArbiter(config.allow_session_interruption)
        # ANNOUNCE answers 503 while the output cannot take audio; the sink logs when it
        # fails and when it works again, so nothing polls for it here.
        arbiter.fault_source = lambda: metrics.output_fault(state)
        # The AirPort key loaded and RSA run once now, not while the first sender waits.
        crypto.warm_up()
        house = House(
            db_of=router.volume_db,
            active_state_timeout=config.active_state_timeout,
            sync_figures=lambda: sync_figures(output, house.tracker.session),
        )
        remote = DacpRemote(
            lambda: state.mdns.zeroconf if state.mdns is not None else None,
            lambda: house.fanout.state,
            house.stop,
        )
        house.remote = remote
        stack.push_async_callback(remote.close)
        await start_house(house, config, stack, router, receiver.device_id)
        router.house = house
        state.house = house
        if state.web is not None:
            # The page's state and health graph are the only use of the sync refresh.
            house.add_consumer("web", state.web.hub, maxlen=64, sync=True)

        try:
            server = RtspServer(
                receiver=receiver,
                settings=ServerSettings(
                    address=config.address,
                    port=config.port,
                    udp_port_base=config.udp_port_base,
                    udp_port_range=config.udp_port_range,
                    max_per_address=config.max_connections_per_address,
                ),
                session_settings=SessionSettings(
                    jitter=JitterSettings(resend=config.resend),
                    session_timeout=config.session_timeout or float("inf"),
                    idle_timeout=config.idle_timeout,
                    latency_offset=config.latency_offset,
                    initial_volume=config.default_volume,
                    # A file has no device buffer to keep ahead of; ALSA's as configured.
                    output_buffer_frames=0 if sink_is_file else config.buffer_frames,
                    output_period_frames=0 if sink_is_file else config.period_frames,
                ),
                arbiter=arbiter,
                on_event=router,
            )
            house.end_session = lambda session: server.end_session(
                session, EndReason.STOPPED_BY_REMOTE
            )
            server.on_event = state.totals.wrap(server.on_event)  # session totals for /metrics
            state.totals.gain_of = router._gain if router.apply_volume else None
            await server.start()
            stack.push_async_callback(server.close)
            state.server = server

            mdns = MdnsAdvertiser(receiver, config.port, interfaces=interfaces)
            await mdns.start()
            stack.push_async_callback(mdns.close)
            state.mdns = mdns
            mdns.on_change = readiness.check
            readiness.start()
            stack.callback(readiness.close)

            await shutdown.wait()
            logger.info("shutting down")
        except (RaopError, OSError) as exc:
            # Unrecoverable: the error hook runs (and is waited for) before raopd gives up.
            house.error(f"raopd stops: {exc}")
            await house.close(drain=config.hook_timeout + 1.0)
            raise
