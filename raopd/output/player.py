"""The one audio output thread: typed commands in through a queue, audio out to the sink.

The event loop never touches the sink and the output thread never touches the network: the
loop `submit()`s commands (Push, Flush, UseClock, SetGain, EndStream), the thread owns the
Playout and the sink. A clocked sink (ALSA) is fed by `Playout.pull(now, delay, period)` where
`now` and `delay` are read together by `sink.measure()`, paced by the device's blocking writes;
a file is fed untimed, in RTP order, as soon as audio arrives.

While a clocked device is gone (unplugged), the thread keeps pulling and discarding audio at
real time, so the stream's timeline moves on and playback resumes in sync when the device is
back; it retries the device through `sink.reopen_if_due()` and keeps its heartbeat.

The thread never dies of what it is given: a Push whose audio is not (frames, 2) int16 is
counted in `rejected_frames` and dropped, and any other exception in one round of the loop is
logged (at most once every ERROR_LOG_INTERVAL seconds), counted in `errors`, and the loop goes
on. A sink that fails for good says so in its `fault` (disk full, broken pipe), which the
snapshot carries to /readyz.

Whenever the sink's device opens or closes, its fault appears or clears, or the thread ends,
the thread calls `on_health_change` (the daemon's readiness log schedules its check from
there), so nothing has to poll for those.

Other threads read `snapshot()`: a copy of the playout and sink counters published by the output
thread under a lock, plus the smallest DAC queue and whether every block was bit-exact since the
previous `snapshot(reset=True)` (the statistics line's interval).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from raopd.core.audio_format import SAMPLE_RATE as RATE
from raopd.core.clock import ClockEstimate
from raopd.core.latency import output_lead
from raopd.core.playout import Playout, PlayoutSettings, PlayoutStats
from raopd.output.alsa import AlsaCounters
from raopd.output.sinks import AudioSink

logger = logging.getLogger(__name__)

IDLE_POLL = 0.5  # seconds between liveness ticks while nothing plays
ERROR_LOG_INTERVAL = 10.0  # seconds between logged tracebacks of a repeating failure


@dataclass(frozen=True, slots=True)
class Push:
    """Audio for the timeline, in RTP order."""

    rtptime: int
    pcm: npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Flush:
    """Drop audio before `until_rtptime` (None: all of it)."""

    until_rtptime: int | None


@dataclass(frozen=True, slots=True)
class UseClock:
    """A new RTP-to-local-time estimate."""

    estimate: ClockEstimate


@dataclass(frozen=True, slots=True)
class SetGain:
    """Linear gain for software volume (1.0 = bit-exact)."""

    gain: float


@dataclass(frozen=True, slots=True)
class EndStream:
    """The session ended: drop what is queued and go idle."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Shut the thread down."""


Command = Push | Flush | UseClock | SetGain | EndStream | Stop


@dataclass(frozen=True, slots=True)
class OutputSnapshot:
    """The output side, as one consistent copy for statistics and health checks."""

    heartbeat: float
    playing: bool
    opened: bool
    gain: float
    frames_written: int
    playout: PlayoutStats
    interval_min_dac_queue: int | None
    """Smallest DAC queue (frames) seen since the previous reset; None when nothing played."""
    interval_bit_exact: bool
    """Every block written since the previous reset was the sender's samples untouched."""
    sink: AlsaCounters | None
    """ALSA counters (None for a file)."""
    fault: str | None = None
    """Why the output cannot take audio now (disk full, broken pipe); None when it can."""
    errors: int = 0
    """Rounds of the output loop that failed with an exception (and were survived)."""
    rejected_frames: int = 0
    """Frames dropped because their block was not (frames, 2) int16."""
    sink_dropped_frames: int = 0
    """Frames a faulted file sink could not write."""


class OutputThread:
    """Runs the playout and the sink on a dedicated thread."""

    def __init__(
        self,
        sink: AudioSink,
        settings: PlayoutSettings | None = None,
        *,
        period_frames: int = 2048,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.playout = Playout(settings or PlayoutSettings(timed=sink.clocked))
        self.period_frames = period_frames
        self.heartbeat = 0.0  # monotonic time of the thread's last loop: /healthz reads it
        self.frames_written = 0
        self.rejected_frames = 0
        self._channels = self.playout.settings.channels
        self._clock = clock
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="raopd-output", daemon=True)
        self._playing = False
        self._gain = 1.0
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._published = PlayoutStats()
        self._interval_min: int | None = None
        self._interval_exact = True
        self.errors = 0
        self._error_logged_at = float("-inf")
        # How full to keep the device buffer and how much to write at a time: from the
        # stream's latency (core/latency.py). None: full, a period at a time (2 s senders).
        self._fill_frames: int | None = None
        self._write_frames = period_frames
        # Called on this thread when (opened, fault) changes or the thread ends: must be quick
        # and thread-safe (the daemon's hands the check to the event loop).
        self.on_health_change: Callable[[], None] | None = None
        self._health: tuple[bool, str | None] | None = None

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (the sink must already be open)."""
        self.heartbeat = self._clock()
        self._health = self._sink_health()
        self._thread.start()

    def submit(self, command: Command) -> None:
        """Queue a command; safe from any thread, never blocks."""
        self._queue.put(command)

    def snapshot(self, reset: bool = False) -> OutputSnapshot:
        """A consistent copy of the output's counters; `reset` starts a new interval."""
        counters = getattr(self.sink, "counters", None)
        sink = counters() if callable(counters) else None
        fault = getattr(self.sink, "fault", None)
        dropped = int(getattr(self.sink, "frames_dropped", 0))
        with self._lock:
            snap = OutputSnapshot(
                heartbeat=self.heartbeat,
                playing=self._playing,
                opened=self.sink.opened,
                gain=self._gain,
                frames_written=self.frames_written,
                playout=dataclasses.replace(self._published),
                interval_min_dac_queue=self._interval_min,
                interval_bit_exact=self._interval_exact,
                sink=sink if isinstance(sink, AlsaCounters) else None,
                fault=fault if isinstance(fault, str) else None,
                errors=self.errors,
                rejected_frames=self.rejected_frames,
                sink_dropped_frames=dropped,
            )
            if reset:
                self._interval_min = None
                self._interval_exact = True
        return snap

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and wait for it (at most `timeout` seconds)."""
        self._queue.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _sink_health(self) -> tuple[bool, str | None]:
        fault = getattr(self.sink, "fault", None)
        return self.sink.opened, fault if isinstance(fault, str) else None

    def _note_health(self) -> None:
        """Call `on_health_change` if the device opened or closed or the fault changed."""
        health = self._sink_health()
        if health != self._health:
            self._health = health
            if self.on_health_change is not None:
                self.on_health_change()

    def _run(self) -> None:
        try:
            self._supervise()
        finally:
            self._health = None
            if self.on_health_change is not None:
                self.on_health_change()  # `alive` is about to turn False

    def _supervise(self) -> None:
        run = self._run_clocked if self.sink.clocked else self._run_untimed
        while True:
            try:
                run()
                return  # a Stop command
            except Exception as exc:  # the thread's one supervision point: count, log, go on
                self._error = exc
                self.errors += 1
                now = self._clock()
                if now - self._error_logged_at >= ERROR_LOG_INTERVAL:
                    self._error_logged_at = now
                    logger.exception("audio output failed (%d times so far); going on", self.errors)
                try:
                    self.playout.flush(None)  # whatever state led here is not replayed
                except Exception:  # the loop must survive a broken playout too
                    logger.debug("playout flush after an error failed", exc_info=True)
                time.sleep(0.1)  # a failure that repeats at once must not spin a core

    def _run_untimed(self) -> None:
        while True:
            try:
                command = self._queue.get(timeout=IDLE_POLL)
            except queue.Empty:
                self.heartbeat = self._clock()
                self.sink.reopen_if_due()  # a faulted file looks whether it works again
                self._note_health()
                continue
            self.heartbeat = self._clock()
            if isinstance(command, Stop):
                return
            self._apply(command)
            block = self.playout.pull_available()
            if len(block):
                self.sink.write(block)  # a file sink never raises: it faults and counts
                self._account(len(block), None)
                self._note_health()

    def _run_clocked(self) -> None:
        sink = self.sink
        next_discard = 0.0  # when the next block is due while the device is away
        while True:
            self.heartbeat = self._clock()
            self._note_health()  # after the last round's reopen, measure or write
            if not self._playing or not sink.opened:
                if not sink.opened and sink.reopen_if_due():
                    continue
                if self._playing:
                    # Device away: consume the timeline at real time so it resumes in sync.
                    now = self._clock()
                    if now >= next_discard:
                        next_discard = max(next_discard, now - 1.0) + self._period_s
                        self.playout.pull(now, 0, self.period_frames)
                        self._publish()
                    timeout = min(IDLE_POLL, max(0.0, next_discard - now))
                else:
                    timeout = IDLE_POLL
                try:
                    command = self._queue.get(timeout=timeout)
                except queue.Empty:
                    continue
                if isinstance(command, Stop):
                    return
                self._apply(command)
                continue
            while True:
                try:
                    command = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(command, Stop):
                    return
                self._apply(command)
            if not self._playing:
                continue
            now, delay = sink.measure()
            if not sink.opened:
                continue  # lost while measuring
            if self._fill_frames is not None and delay > self._fill_frames:
                # A low-latency sender: keep the device only as full as its budget allows,
                # or audio would have to reach us earlier than the sender sends it.
                try:
                    command = self._queue.get(timeout=(delay - self._fill_frames) / RATE)
                except queue.Empty:
                    continue
                if isinstance(command, Stop):
                    return
                self._apply(command)
                continue
            block = self.playout.pull(now, delay, self._write_frames)
            underruns = sink.underruns
            sink.write(block)  # blocks until the device has room: this paces the loop
            if sink.underruns != underruns:
                self.playout.output_ran_dry()
            self._account(len(block), delay)

    @property
    def _period_s(self) -> float:
        return self.period_frames / self.playout.settings.rate

    def _account(self, frames: int, delay: int | None) -> None:
        """Publish counters after a block was written."""
        self.frames_written += frames
        with self._lock:
            if delay is not None:
                self._interval_min = (
                    delay if self._interval_min is None else min(self._interval_min, delay)
                )
            self._interval_exact = self._interval_exact and self.playout.stats.bit_exact
            self._published = dataclasses.replace(self.playout.stats)

    def _publish(self) -> None:
        with self._lock:
            self._published = dataclasses.replace(self.playout.stats)

    def _apply(self, command: Command) -> None:
        if isinstance(command, Push):
            pcm = command.pcm
            if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[1] != self._channels:
                # The decoders never make such a block; if one ever comes, it is counted
                # and dropped here rather than raised from numpy in the middle of playout.
                self.rejected_frames += len(pcm)
                logger.error("dropped a block of audio shaped %s %s", pcm.shape, pcm.dtype)
                return
            self.playout.push(command.rtptime, pcm)
            self._playing = True
        elif isinstance(command, Flush):
            self.playout.flush(command.until_rtptime)
            if command.until_rtptime is None or self.sink.clocked:
                self.sink.stop()
        elif isinstance(command, UseClock):
            self.playout.use_clock(command.estimate)
            self._use_latency(command.estimate)
        elif isinstance(command, SetGain):
            self.playout.set_volume(command.gain)
            self._gain = command.gain
        elif isinstance(command, EndStream):
            self.playout.flush(None)
            self.sink.stop()
            self._playing = False
            self._fill_frames, self._write_frames = None, self.period_frames

    def _use_latency(self, estimate: ClockEstimate) -> None:
        buffer_frames = int(getattr(self.sink, "buffer_frames", 0))
        if buffer_frames <= 0:
            return
        fill, write = output_lead(
            estimate.latency_frames / max(1, estimate.rate), buffer_frames, self.period_frames
        )
        self._fill_frames = fill if fill < buffer_frames else None
        self._write_frames = write
