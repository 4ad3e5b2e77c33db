"""Timed playout: hand the output thread exactly the frames that must be written now.

Theory of operation
-------------------
The output thread loops: read the DAC queue depth, call `pull(now, dac_delay_frames, frames)`,
write the result. A frame written now is heard at

    leave(now) = now + dac_delay_frames / rate + hw_latency

and the `ClockEstimate` says when frame R *should* be heard: `estimate.local_time(R)`. The
**sync error** of a pull is

    error = leave(now) - estimate.local_time(next frame)       (seconds; > 0 = late)

so a positive error means the audio comes out late and frames must be dropped (consumed faster);
a negative error means early and frames must be inserted. `correction_ppm` follows the same sign:
positive = dropping.

Modes, per pull (timed mode):

* **Starting** (first frame of a stream, after a flush, a timestamp jump, an underflow or a
  resync): the gap between `leave(now)` and the head frame's due time is converted to frames and
  filled with silence (early) or skipped (late), so the head frame leaves the DAC at its due time
  to the frame. No audio or no estimate yet -> silence.
* **Playing**: the error of every pull goes into a short window; its median (robust to a single
  odd reading) drives
  - a **resync** when it exceeds `resync_threshold` (50 ms, like shairport-sync): realign once,
    exactly as when starting, then clear the window;
  - otherwise a PI controller in ppm: `Kp * error + integral`, capped at `max_correction_ppm`.
    The integral learns the steady drift between the sender's timeline and the DAC, so the error
    settles at zero rather than at drift / Kp. Until the median error first leaves the dead band
    (`tolerance`) nothing is corrected at all, so when the clocks agree no frame is touched.
    Corrections are whole frames (22.7 us at 44.1 kHz) inserted or dropped at spread positions
    (`pcm.stuff`), accumulated from the ppm so the average rate is exact.
  Loop gains: Kp = 1000 ppm/ms gives a 1 s time constant; Ki = 250 ppm/(ms*s) puts the second
  pole at the same place (critically damped). The integral is frozen while |error| > 2 ms so a
  step in the DAC position (which a resync or the capped P term handles) does not wind it up.
* **Underflow**: the next frame is due but not here: silence, count it, and go back to starting
  so the late audio is realigned to its own time instead of shifting the whole timeline.

Untimed mode (`timed=False`, file/stdout output): frames pass through in RTP order, bit-exact; no
silence except the loss blocks the jitter buffer pushes; `pull` returns *up to* `frames` frames
(fewer, even none, when the queue is short) and `pull_available()` everything queued.

Volume is applied last (gain + TPDF dither; unity gain is an exact no-op), so `stats.bit_exact`
is true whenever the gain is 1.0 and the block had no frame inserted or dropped.
"""

import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

from raopd.core.audio_format import OUTPUT_CHANNELS, SAMPLE_RATE
from raopd.core.clock import ClockEstimate
from raopd.core.seq import rtp_add, rtp_diff
from raopd.media.pcm import Pcm, StuffMethod, apply_gain, silence, stuff


@dataclass(frozen=True, slots=True)
class PlayoutSettings:
    """Tuning of the playout; the defaults are the ones the benchmarks were run with."""

    rate: int = SAMPLE_RATE
    channels: int = OUTPUT_CHANNELS
    timed: bool = True
    hw_latency: float = 0.0
    """Seconds from the DAC's FIFO output to the air (converter, amplifier, HDMI...)."""
    tolerance: float = 0.0001
    """Dead band (s): no new correction while |error| stays inside. 0.1 ms = 4.4 frames, well
    under anything audible as echo between rooms, and above the frame quantization."""
    max_correction_ppm: float = 500.0
    """Cap on stuffing: 500 ppm (snapcast's cap) covers crystal errors of +-200 ppm on both ends
    and is one frame in 2000: inaudible with spread single-frame edits."""
    resync_threshold: float = 0.050
    """Error (s) past which playout jumps instead of stuffing; 0 = never (shairport-sync: 50 ms)."""
    error_window: int = 5
    """Pulls in the median that drives the controller (5 periods of 2048 = 232 ms)."""
    kp_ppm_per_ms: float = 1000.0
    ki_ppm_per_ms_s: float = 250.0
    integral_limit: float = 0.002
    """The integral only learns while |error| is below this (s)."""
    stuff_method: StuffMethod = "spread"
    max_gap: float = 2.0
    """A forward RTP gap up to this (s) between pushes is filled with silence; larger is a new
    stream (realigned, timed mode only)."""
    dither_seed: int | None = None


@dataclass(slots=True)
class PlayoutStats:
    """Names follow shairport-sync's statistics where they mean the same."""

    sync_error_ms: float = 0.0
    """Median recent error, ms, + = late."""
    correction_ppm: float = 0.0
    """Current commanded correction, + = dropping frames."""
    all_sync_ppm: float = 0.0
    """Net frames dropped - inserted per million played, since the stream started."""
    source_drift_ppm: float | None = None
    """Sender clock vs local clock, from the clock estimate (None until measured)."""
    frames_played: int = 0
    frames_inserted: int = 0
    frames_dropped: int = 0
    silence_frames: int = 0
    """Silence written in timed mode: start-up padding, underflows, early realignment."""
    skipped_frames: int = 0
    """Late frames skipped by (re)alignment, plus frames flushed."""
    resyncs: int = 0
    underflows: int = 0
    """Pulls where audio was due but none was queued."""
    queue_frames: int = 0
    min_dac_queue: int | None = None
    """Smallest DAC queue (frames) seen while playing."""
    bit_exact: bool = True
    """The last pulled block left the sender's samples untouched (unity gain, no stuffing)."""


_STARTING = "starting"
_PLAYING = "playing"


class Playout:
    """The output thread's view of the stream: push decoded audio, pull what to write now."""

    def __init__(self, settings: PlayoutSettings | None = None) -> None:
        self.settings = settings or PlayoutSettings()
        self.stats = PlayoutStats()
        self._blocks: deque[tuple[int, Pcm]] = deque()
        self._queued = 0
        self._tail_rtp: int | None = None  # rtptime just after the last queued frame
        self._next_rtp: int | None = None  # rtptime of the next frame to play
        self._flush_until: int | None = None
        self._estimate: ClockEstimate | None = None
        self._state = _STARTING
        self._errors: deque[float] = deque(maxlen=self.settings.error_window)
        self._integral = 0.0  # ppm
        self._engaged = False  # the error has left the dead band at least once
        self._accumulator = 0.0  # fractional frames owed to correction
        self._gain = 1.0
        self._rng = np.random.default_rng(self.settings.dither_seed)

    # -- input side ------------------------------------------------------------------------------

    def push(self, rtptime: int, pcm: Pcm) -> None:
        """Queue `pcm` (int16, (frames, channels)) whose first frame is `rtptime`."""
        if len(pcm) == 0:
            return
        if self._flush_until is not None:
            late = rtp_diff(self._flush_until, rtptime)
            if late >= len(pcm):
                return
            if late > 0:
                pcm, rtptime = pcm[late:], self._flush_until
            self._flush_until = None
        if self._tail_rtp is not None:
            gap = rtp_diff(rtptime, self._tail_rtp)
            if gap < 0:
                # Overlap with what is queued (a duplicate): keep only the new part.
                if -gap >= len(pcm):
                    return
                pcm, rtptime = pcm[-gap:], self._tail_rtp
            elif 0 < gap <= self.settings.max_gap * self.settings.rate:
                self._append(self._tail_rtp, silence(gap, self.settings.channels))
        self._append(rtptime, pcm)

    def flush(self, until_rtptime: int | None) -> None:
        """Drop frames with rtptime < until (None: everything); later pushes obey it too."""
        if until_rtptime is None:
            self.stats.skipped_frames += self._queued
            self._blocks.clear()
            self._queued = 0
            self._tail_rtp = None
            self._flush_until = None
        else:
            while self._blocks:
                start, pcm = self._blocks[0]
                drop = rtp_diff(until_rtptime, start)
                if drop <= 0:
                    break
                if drop >= len(pcm):
                    self._blocks.popleft()
                    self._queued -= len(pcm)
                    self.stats.skipped_frames += len(pcm)
                else:
                    self._blocks[0] = (until_rtptime, pcm[drop:])
                    self._queued -= drop
                    self.stats.skipped_frames += drop
                    break
            if not self._blocks:
                self._tail_rtp = None
                self._flush_until = until_rtptime
        self._state = _STARTING
        self.stats.queue_frames = self._queued

    def use_clock(self, estimate: ClockEstimate | None) -> None:
        """Adopt a new timeline (None keeps the last one)."""
        if estimate is not None:
            self._estimate = estimate
            self.stats.source_drift_ppm = estimate.drift_ppm if estimate.drift else None

    def set_volume(self, gain: float) -> None:
        """Linear gain applied at pull (1.0 = bit-exact, 0.0 = digital silence)."""
        self._gain = gain

    # -- output side -----------------------------------------------------------------------------

    def pull(self, now: float, dac_delay_frames: int, frames: int) -> Pcm:
        """Timed: exactly `frames` frames to write now. Untimed: up to `frames`, as queued."""
        if not self.settings.timed:
            out = self._take(min(frames, self._queued))
            return self._finish(out, edited=False)
        settings = self.settings
        leave = now + dac_delay_frames / settings.rate + settings.hw_latency
        estimate = self._estimate
        if estimate is None or not self._blocks:
            if self._state == _PLAYING and estimate is not None:
                self.stats.underflows += 1
                self._state = _STARTING
            return self._finish(self._silence(frames), edited=False)
        if self._state == _PLAYING:
            stats = self.stats
            head = self._blocks[0][0]
            if head != self._next_rtp:
                # A timestamp jump (a new stream without a flush): align it like a start.
                self._state = _STARTING
                return self._finish(self._start(leave, estimate, frames), edited=False)
            error = leave - estimate.local_time(head)
            self._errors.append(error)
            median = statistics.median(self._errors)
            stats.sync_error_ms = median * 1e3
            stats.min_dac_queue = (
                dac_delay_frames
                if stats.min_dac_queue is None
                else min(stats.min_dac_queue, dac_delay_frames)
            )
            if settings.resync_threshold > 0 and abs(median) > settings.resync_threshold:
                stats.resyncs += 1
                self._state = _STARTING
            else:
                return self._finish(*self._corrected(median, frames))
        return self._finish(self._start(leave, estimate, frames), edited=False)

    def pull_available(self) -> Pcm:
        """Untimed mode: everything queued, in RTP order."""
        return self._finish(self._take(self._queued), edited=False)

    # -- internals -------------------------------------------------------------------------------

    def _start(self, leave: float, estimate: ClockEstimate, frames: int) -> Pcm:
        """Align the head frame to its due time: pad with silence or skip late frames."""
        rate = self.settings.rate
        while self._blocks:
            head = self._blocks[0][0]
            gap = round((estimate.local_time(head) - leave) * rate)
            if gap >= frames:
                return self._silence(frames)
            if gap >= 0:
                self._enter_playing()
                audio = self._take(frames - gap)
                pad = self._silence(gap + (frames - gap - len(audio)))
                if len(audio) < frames - gap:
                    self.stats.underflows += 1
                    self._state = _STARTING
                if gap == 0 and len(audio) == frames:
                    return audio
                return np.concatenate([pad[:gap], audio, pad[gap:]])
            skipped = self._skip(-gap)
            self.stats.skipped_frames += skipped
        return self._silence(frames)

    def _enter_playing(self) -> None:
        self._state = _PLAYING
        self._errors.clear()
        self._accumulator = 0.0

    def _corrected(self, error: float, frames: int) -> tuple[Pcm, bool]:
        """One block under the PI controller: (pcm, whether frames were inserted/dropped)."""
        settings = self.settings
        error_ms = error * 1e3
        # The dead band only gates the *start* of correction: once the error has left it, the
        # controller stays engaged (the learned integral is the drift and keeps being refined),
        # so the error settles at zero instead of riding the edge of the band.
        if abs(error) > settings.tolerance:
            self._engaged = True
        if self._engaged:
            if abs(error) < settings.integral_limit:
                period = frames / settings.rate
                self._integral += settings.ki_ppm_per_ms_s * error_ms * period
                cap = settings.max_correction_ppm
                self._integral = max(-cap, min(cap, self._integral))
            ppm = settings.kp_ppm_per_ms * error_ms + self._integral
        else:
            ppm = 0.0
        ppm = max(-settings.max_correction_ppm, min(settings.max_correction_ppm, ppm))
        self.stats.correction_ppm = ppm
        self._accumulator += ppm * 1e-6 * frames
        delta = 0  # frames to drop (> 0) or insert (< 0) in this block
        if self._accumulator >= 1.0:
            delta = int(self._accumulator)
        elif self._accumulator <= -1.0:
            delta = -int(-self._accumulator)
        self._accumulator -= delta
        source = self._take(frames + delta)
        if len(source) < frames + delta:
            # The queue ran dry mid-block: play what there is, realign when audio comes back.
            self._accumulator += delta
            self.stats.underflows += 1
            self._state = _STARTING
            pad = self._silence(max(0, frames - len(source)))
            return np.concatenate([source[:frames], pad]), False
        if delta:
            source = stuff(source, -delta, settings.stuff_method)
            if delta > 0:
                self.stats.frames_dropped += delta
            else:
                self.stats.frames_inserted -= delta
        return source, delta != 0

    def _finish(self, pcm: Pcm, edited: bool) -> Pcm:
        stats = self.stats
        stats.frames_played += len(pcm)
        stats.queue_frames = self._queued
        if stats.frames_played:
            net = stats.frames_dropped - stats.frames_inserted
            stats.all_sync_ppm = net * 1e6 / stats.frames_played
        stats.bit_exact = self._gain == 1.0 and not edited
        return apply_gain(pcm, self._gain, self._rng)

    def _silence(self, frames: int) -> Pcm:
        if self.settings.timed:
            self.stats.silence_frames += frames
        return silence(frames, self.settings.channels)

    def _append(self, rtptime: int, pcm: Pcm) -> None:
        self._blocks.append((rtptime, pcm))
        self._queued += len(pcm)
        self._tail_rtp = rtp_add(rtptime, len(pcm))
        self.stats.queue_frames = self._queued

    def _take(self, frames: int) -> Pcm:
        """Up to `frames` frames off the head of the queue, in order."""
        pieces: list[Pcm] = []
        wanted = frames
        if self._blocks:
            self._next_rtp = self._blocks[0][0]
        while wanted > 0 and self._blocks:
            start, pcm = self._blocks[0]
            if len(pcm) <= wanted:
                self._blocks.popleft()
                pieces.append(pcm)
                wanted -= len(pcm)
            else:
                pieces.append(pcm[:wanted])
                self._blocks[0] = (rtp_add(start, wanted), pcm[wanted:])
                wanted = 0
        taken = frames - wanted
        self._queued -= taken
        if taken:
            self._next_rtp = rtp_add(self._next_rtp, taken) if self._next_rtp is not None else None
        if len(pieces) == 1:
            return np.ascontiguousarray(pieces[0])
        if not pieces:
            return silence(0, self.settings.channels)
        return np.concatenate(pieces)

    def _skip(self, frames: int) -> int:
        return len(self._take(frames))
