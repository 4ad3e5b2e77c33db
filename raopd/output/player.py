"""The one audio output thread: typed commands in through a queue, audio out to the sink.

The event loop never touches the sink and the output thread never touches the network: the
loop `submit()`s commands (Push, Flush, UseClock, SetGain, EndStream), the thread owns the
Playout and the sink. A clocked sink (ALSA) is fed by `Playout.pull(now, delay, period)`, paced
by the device's blocking writes; a file is fed untimed, in RTP order, as soon as audio arrives.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from raopd.core.clock import ClockEstimate
from raopd.core.playout import Playout, PlayoutSettings
from raopd.output.sinks import AudioSink

logger = logging.getLogger(__name__)

IDLE_POLL = 0.5  # seconds between liveness ticks while nothing plays


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


class OutputThread:
    """Runs the playout and the sink on a dedicated thread."""

    def __init__(
        self,
        sink: AudioSink,
        settings: PlayoutSettings | None = None,
        *,
        period_frames: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.playout = Playout(settings or PlayoutSettings(timed=sink.clocked))
        self.period_frames = period_frames
        self.heartbeat = 0.0  # monotonic time of the thread's last loop: /healthz reads it
        self.frames_written = 0
        self._clock = clock
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="raopd-output", daemon=True)
        self._playing = False
        self._error: BaseException | None = None

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (the sink must already be open)."""
        self.heartbeat = self._clock()
        self._thread.start()

    def submit(self, command: Command) -> None:
        """Queue a command; safe from any thread, never blocks."""
        self._queue.put(command)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and wait for it (at most `timeout` seconds)."""
        self._queue.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            if self.sink.clocked:
                self._run_clocked()
            else:
                self._run_untimed()
        except Exception as exc:  # the thread's one supervision point
            self._error = exc
            logger.exception("audio output thread failed")

    def _run_untimed(self) -> None:
        while True:
            try:
                command = self._queue.get(timeout=IDLE_POLL)
            except queue.Empty:
                self.heartbeat = self._clock()
                continue
            self.heartbeat = self._clock()
            if isinstance(command, Stop):
                return
            self._apply(command)
            block = self.playout.pull_available()
            if len(block):
                self.sink.write(block)
                self.frames_written += len(block)

    def _run_clocked(self) -> None:
        while True:
            self.heartbeat = self._clock()
            if not self._playing:
                try:
                    command = self._queue.get(timeout=IDLE_POLL)
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
            delay = self.sink.delay_frames()
            block = self.playout.pull(self._clock(), delay, self.period_frames)
            self.sink.write(block)  # blocks until the device has room: this paces the loop
            self.frames_written += len(block)

    def _apply(self, command: Command) -> None:
        if isinstance(command, Push):
            self.playout.push(command.rtptime, command.pcm)
            self._playing = True
        elif isinstance(command, Flush):
            self.playout.flush(command.until_rtptime)
            if command.until_rtptime is None or self.sink.clocked:
                self.sink.stop()
        elif isinstance(command, UseClock):
            self.playout.use_clock(command.estimate)
        elif isinstance(command, SetGain):
            self.playout.set_volume(command.gain)
        elif isinstance(command, EndStream):
            self.playout.flush(None)
            self.sink.stop()
            self._playing = False
