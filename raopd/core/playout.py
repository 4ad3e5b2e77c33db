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
* **Playing**: every pull's error goes into a short window (`error_window` pulls); its median
  (the *filtered error*, robust to odd readings) drives
  - a **resync** when it exceeds `resync_threshold` (50 ms, like shairport-sync): realign once,
    exactly as when starting. Error that a move of the estimate explains (a better sync anchor,
    a clock update; under 250 ms) does not count towards it: that is slewed to, not jumped;
  - otherwise a correction in ppm that is the sum of two terms, and zero until the filtered
    error first leaves the **tolerance band**, so with agreeing clocks no frame is touched:
    * the **drift rate**: the slope of the *uncorrected* error (filtered error plus every frame
      already dropped or inserted, minus every move of the estimate itself) over the last
      `drift_window` seconds (at least 3 s), by least squares, used once it is 4 standard
      errors from 0 (counting one independent point per filter window). It is the DAC-vs-sender
      clock difference, learnt from the error's trend rather than by an integrator, so noise on
      the reading does not wind anything up and the frames corrected are the ones the difference
      needs (`stats.drift_ppm` reports it). A raw reading that jumps by more than 4 bands (and
      1 ms) is a step of the DAC position, not drift: the fit starts again after it;
    * a **proportional** term, `kp_ppm_per_ms * (error -+ band / 2)`, from when the filtered
      error leaves the band until it is back within half of it: it works off a start error, a
      move of the anchor or what the drift rate has not caught yet, 0.5 s time constant, capped
      at `max_slew_ppm` (0.5 %: a 10 ms error is gone in about 2 s).
    The band is `tolerance` or five times the measured noise of the filtered error (from the
    robust spread of raw errors around it), whichever is larger (`stats.band_ms`): a DAC whose
    delay reads with +-2 ms of noise must not be "corrected" by the noise. Nothing is corrected
    in the first 16 pulls of a stream, before that noise is known. The total is capped
    at `max_correction_ppm` + `max_slew_ppm`. Corrections are whole frames (22.7 us at 44.1 kHz)
    inserted or dropped at spread positions (`pcm.stuff`), accumulated from the ppm so the
    average rate is exact.
* **Underflow**: the next frame is due but not here: silence, count it, and go back to starting
  so the late audio is realigned to its own time instead of shifting the whole timeline.
* **Underrun** (the DAC ran dry: the output thread or the audio server was not scheduled in
  time): the output thread calls `output_ran_dry()` and the next pull realigns like a start.
  On the paced PulseAudio sink a 150 ms pause of the machine left the audio 11-25 ms late,
  which slewing took 2-5 s to work off (tests/live_sync.py measures it).

Untimed mode (`timed=False`, file/stdout output): frames pass through in RTP order, bit-exact; no
silence except the loss blocks the jitter buffer pushes; `pull` returns *up to* `frames` frames
(fewer, even none, when the queue is short) and `pull_available()` everything queued.

Volume is applied last (gain + TPDF dither; unity gain is an exact no-op), so `stats.bit_exact`
is true whenever the gain is 1.0 and the block had no frame inserted or dropped.
"""

import math
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
    """Tolerance band (s): nothing is corrected while the filtered error stays inside. The
    band in use is this or BAND_NOISE times the measured reading noise, whichever is larger."""
    max_correction_ppm: float = 500.0
    """Cap on the drift rate: 500 ppm (snapcast's cap) covers crystal errors of +-200 ppm on
    both ends and is one frame in 2000: inaudible with spread single-frame edits."""
    max_slew_ppm: float = 5000.0
    """Cap on the proportional term: one frame in 200, for a few seconds after a start error
    or an anchor move (shairport-sync's basic stuffing goes to one in 352)."""
    resync_threshold: float = 0.050
    """Error (s) past which playout jumps instead of stuffing; 0 = never (shairport-sync: 50 ms)."""
    error_window: int = 9
    """Pulls in the median filter (9 periods of 2048 = 0.42 s)."""
    kp_ppm_per_ms: float = 2000.0
    """Proportional gain: 2000 ppm per ms of error is a 0.5 s time constant."""
    drift_window: float = 30.0
    """Seconds of uncorrected error the drift rate is fitted over."""
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
    realignments: int = 0
    """Realignments after the DAC ran dry (`output_ran_dry`): not resyncs, the gap was the
    DAC's; each is also one of the sink's underruns."""
    underflows: int = 0
    """Pulls where audio was due but none was queued."""
    queue_frames: int = 0
    min_dac_queue: int | None = None
    """Smallest DAC queue (frames) seen while playing."""
    bit_exact: bool = True
    """The last pulled block left the sender's samples untouched (unity gain, no stuffing)."""
    edited_frames: int = 0
    """Frames written in blocks that had a frame inserted or dropped (1 - edited / played is
    the bit-exact fraction at unity gain)."""
    drift_ppm: float = 0.0
    """DAC clock vs the sender's timeline as the corrections imply (+ = the DAC is slow, frames
    are dropped); 0 until measured."""
    band_ms: float = 0.0
    """Tolerance band in use (ms): the setting or 3x the measured reading noise."""
    anchor_moves_ms: float = 0.0
    """Sum of |moves| of the estimate under the playing audio (ms): anchor and clock updates."""
    slewing_ms: float = 0.0
    """Part of `sync_error_ms` that moves of the estimate explain and that is being slewed to
    (a better sync anchor); the rest is the control loop's own error."""


ANCHOR_SLEW_LIMIT = 0.25
"""Moves of the estimate smaller than this (s; the anchor's own limit for a late stamp) are
slewed to, however far past the resync threshold: a better anchor is not a discontinuity."""

DRIFT_MIN_SPAN = 3.0
"""Seconds of error the drift fit needs before it is used."""

STEP_MIN = 0.001
"""A jump of the uncorrected error (s) between two pulls beyond 4 bands and this is a step of
the DAC position, kept out of the drift fit."""

NOISE_WINDOW = 64
BAND_NOISE = 5.0
"""The band is this many standard deviations of the filtered error's noise."""
NOISE_MIN = 16
"""Pulls before the reading noise is known (0.74 s at 2048 frames): no correction before."""
"""Pulls over which the reading noise (raw error around the filtered one) is measured."""

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
        self._deviations: deque[float] = deque(maxlen=NOISE_WINDOW)  # raw - filtered error
        self._engaged = False  # the filtered error has left the band at least once
        self._slewing = False  # the proportional term is on
        self._band = self.settings.tolerance  # the band in use (s)
        self._accumulator = 0.0  # fractional frames owed to correction
        self._corrected_s = 0.0  # s of audio dropped (+) or inserted (-) since the stream began
        self._explained = 0.0  # s of the current error that estimate moves explain
        self._moved = 0.0  # s the estimate moved the due time of the playing audio (+ = later)
        self._trend: deque[tuple[float, float]] = deque()  # (now, uncorrected error)
        self._last_uncorrected = 0.0  # the previous pull's raw uncorrected error
        self._rate = 0.0  # ppm, the drift rate in use
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
            old = self._estimate
            if old is not None and self._state == _PLAYING and self._next_rtp is not None:
                # The due time of the playing audio moved: that is not DAC drift, so it is
                # kept out of the drift fit (the proportional term deals with it).
                move = estimate.local_time(self._next_rtp) - old.local_time(self._next_rtp)
                self._moved += move
                self.stats.anchor_moves_ms += abs(move) * 1e3
                # Errors already in the filter window were read against the old estimate.
                shifted = [e - move for e in self._errors]
                self._errors.clear()
                self._errors.extend(shifted)
                if abs(move) < ANCHOR_SLEW_LIMIT:
                    # A better estimate, not a discontinuity: slewed to, never a resync.
                    self._explained -= move
            self._estimate = estimate
            self.stats.source_drift_ppm = estimate.drift_ppm if estimate.drift else None

    def output_ran_dry(self) -> None:
        """The DAC underran: the listener heard a gap and the audio written since comes out
        that much later. Realign at the next pull (pad or skip to the frame, as at a start)
        instead of slewing the step off over seconds: the glitch has already been heard."""
        if self._state == _PLAYING:
            self._state = _STARTING
            self.stats.realignments += 1

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
            # The part of the error that moves of the estimate explain shrinks with the error.
            explained = self._explained
            if explained * median <= 0.0:
                explained = 0.0
            elif abs(explained) > abs(median):
                explained = median
            self._explained = explained
            stats.slewing_ms = explained * 1e3
            unexplained = median - explained
            if settings.resync_threshold > 0 and abs(unexplained) > settings.resync_threshold:
                stats.resyncs += 1
                self._state = _STARTING
            else:
                self._observe(now, error, median)
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
                self._corrected_s -= gap / rate
                audio = self._take(frames - gap)
                pad = self._silence(gap + (frames - gap - len(audio)))
                if len(audio) < frames - gap:
                    self.stats.underflows += 1
                    self._state = _STARTING
                if gap == 0 and len(audio) == frames:
                    return audio
                return np.concatenate([pad[:gap], audio, pad[gap:]])
            skipped = self._skip(-gap)
            self._corrected_s += skipped / rate
            self.stats.skipped_frames += skipped
        return self._silence(frames)

    def _enter_playing(self) -> None:
        self._state = _PLAYING
        self._errors.clear()
        self._accumulator = 0.0
        # A (re)start is a discontinuity of the error: the drift fit starts over (the rate
        # learnt so far stays: the clocks did not change).
        self._trend.clear()
        self._last_uncorrected = math.inf  # the first pull of a run is not a step
        self._slewing = False
        self._explained = 0.0

    def _observe(self, now: float, error: float, median: float) -> None:
        """Update the reading noise, the band and the drift rate from one pull's error."""
        settings, stats = self.settings, self.stats
        self._deviations.append(error - median)
        known = len(self._deviations) >= NOISE_MIN
        # Robust standard deviation of one reading, then of the median of the window (x1.25
        # / sqrt(n) for a median): the band is 4 of those, so noise alone leaves it about
        # once in 30,000 pulls.
        spread = statistics.median(abs(d) for d in self._deviations) * 1.4826
        noise = spread * 1.2533 / math.sqrt(max(1, len(self._errors)))
        band = max(settings.tolerance, BAND_NOISE * noise)
        stats.band_ms = band * 1e3
        trend = self._trend
        offset = self._corrected_s + self._moved
        if abs(error + offset - self._last_uncorrected) > max(4.0 * band, STEP_MIN):
            # The DAC position stepped (a reading no noise explains): not a drift, so the fit
            # starts over past it; the proportional term works the step off.
            trend.clear()
        self._last_uncorrected = error + offset
        # The fit takes the filtered error: one odd reading (a late wake-up) is not a trend.
        trend.append((now, median + offset))
        while trend and trend[0][0] < now - settings.drift_window:
            trend.popleft()
        if len(trend) >= 16 and trend[-1][0] - trend[0][0] >= DRIFT_MIN_SPAN:
            slope, stderr = _slope(trend)
            # Neighbouring medians share most of their window: about one independent point
            # per window, so the least-squares error is too small by sqrt(window).
            stderr *= math.sqrt(max(1, len(self._errors)))
            if abs(slope) > max(4.0 * stderr, 2e-6):
                cap = settings.max_correction_ppm
                self._rate = max(-cap, min(cap, slope * 1e6))
                stats.drift_ppm = self._rate
        if not known:
            return  # the band is not known yet: nothing is corrected in the first pulls
        if abs(median) > band:
            self._engaged = True
            self._slewing = True
        elif abs(median) < band / 2:
            self._slewing = False
        self._band = band

    def _corrected(self, error: float, frames: int) -> tuple[Pcm, bool]:
        """One block under the drift rate and the proportional term: (pcm, whether frames were
        inserted or dropped)."""
        settings = self.settings
        ppm = 0.0
        if self._engaged:
            ppm = self._rate
            if self._slewing:
                # Towards the middle half of the band, not its centre: within the band no
                # reading is worth acting on.
                target = math.copysign(self._band / 2, error)
                slew = settings.kp_ppm_per_ms * (error - target) * 1e3
                ppm += max(-settings.max_slew_ppm, min(settings.max_slew_ppm, slew))
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
            self._corrected_s += delta / settings.rate
            self.stats.edited_frames += len(source)
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


def _slope(points: deque[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of (t, y) and its standard error."""
    t = np.fromiter((p[0] for p in points), float, len(points))
    y = np.fromiter((p[1] for p in points), float, len(points))
    t -= t.mean()
    y -= y.mean()
    sxx = float(t @ t)
    if sxx <= 0.0:
        return 0.0, math.inf
    slope = float(t @ y) / sxx
    residual = y - slope * t
    variance = float(residual @ residual) / max(1, len(points) - 2)
    return slope, math.sqrt(variance / sxx)
