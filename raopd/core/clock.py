"""Clock sync: timing replies and sync packets -> when each RTP frame must leave the DAC.

Two relations make up the timeline (protocol.md §5.3, §6):

* the **clock offset** between the sender's "NTP" clock and our monotonic clock `now`, measured
  with NTP-style exchanges on the timing channel: we send 0xD2 requests carrying our time T1, the
  sender answers 0xD3 with T1 echoed, its receive time T2 and its transmit time T3; the reply
  arrives at T4. RTT = (T4 - T1) - (T3 - T2); offset (sender - local) = ((T2-T1) + (T3-T4)) / 2.
  Each reply gives one noisy sample: its error is half the difference between the outbound and
  the return delay, so network jitter that is not symmetric shows up directly in the offset.
* the **RTP anchor** from sync packets (0x54): frame `rtp_now - L` is to be heard at the sync
  packet's NTP time, with L = sender latency + 11025 (clamped to the SDP min/max latency, plus the
  user's `latency_offset`).

`ClockEstimate.local_time(rtptime)` combines both: sender time of the frame from the anchor, then
minus the offset, extrapolated with the drift (ppm) between the two clocks.

Filters. Samples with RTT > 200 ms are discarded, replies that do not echo one of our requests
are counted and ignored. The kept samples (a window of the newest `window`) feed:

* a drift estimate: least squares line of offset against local time, each sample weighted by
  1/(RTT + 1 ms)^2 (a sample's error is bounded by RTT/2, so that is its inverse variance, give or
  take). The slope is shrunk towards 0 by its own standard error against a 100 ppm crystal prior,
  so the start-up burst (where 1 ms of jitter over 2 s reads as +-100 ppm) cannot throw the
  timeline off, while a minute of samples is trusted fully;
* a window choice: the newest k samples, k minimising noise^2/k + (drift_stderr * mean age)^2;
* an offset filter over that window, behind the `OffsetFilter` interface:
  - `MinRttFilter` (NTP's clock filter, shairport-sync's choice): the offset of the sample with
    the smallest RTT, carried forward with the drift;
  - `MedianFilter` (snapcast's choice): the median of the samples, each carried to one instant;
  - `LowRttMedianFilter`: the median of the lowest-RTT quarter (measured, not better overall).

Why `median` is the default. benchmarks/sync.py, 10 simulated minutes per scenario, each
direction's delay 0.2 ms + uniform(0, jitter), independent; p99 of |estimated - true offset|
after 5 s, for clock differences -200/-50/0/+50/+200 ppm:

  jitter 1 ms:   median 0.24/0.26/0.23/0.24/0.24 ms    min_rtt 0.25/0.34/0.28/0.34/0.25 ms
  jitter 20 ms:  median 3.97 ms (-200 ppm) ... 3.13-4.73  min_rtt 4.13 ms (-200 ppm)
  60 s runs, 20 ms, 0 ppm: median 3.19 ms, min_rtt 5.22 ms

Min-RTT needs one lucky exchange with small delays both ways; with 3 s between requests that
is rare, and between lucky samples it rides on a single noisy value. The median averages the
asymmetry away. On the recorded captures (loopback, RTT 30 us..3 ms, 14 exchanges each; error
predicting each next sample from the earlier ones) the two are within 0.1 ms of each other:
node-airtunes median |err| 0.23 ms (min_rtt 0.14; its clock has 1 ms steps), cliraop 0.005 ms
(0.004), pyatv 0.026 ms (0.015), worst 1.6 ms for both (one 3.2 ms exchange); drift -8.5, -0.3,
-0.1 ppm. There the reference itself is one noisy sample, so the simulated scenarios decide.
"""

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from raopd.core.ntp import NTP_EPOCH_OFFSET, ns_to_ntp, ntp_to_ns
from raopd.core.packets import SyncPacket, TimingPacket
from raopd.core.seq import rtp_add, rtp_diff

FIXED_LATENCY_FRAMES = 11025
"""Frames every Apple sender expects on top of the sync packet's latency (protocol.md §6.2)."""

DRIFT_PRIOR = 100e-6
"""Spread of real clock drift (crystals): the prior the drift fit is shrunk towards 0 with."""

MAX_RTT = 0.200
"""Replies with a longer round trip say more about the network than about the clocks."""

_NS = 1_000_000_000
_LOCAL_EPOCH_NS = NTP_EPOCH_OFFSET * _NS
"""Our requests carry `now` as if the monotonic clock counted from 1970, so T1 is never zero and
looks like an ordinary NTP time to the sender."""


@dataclass(frozen=True, slots=True)
class TimingSample:
    """One timing exchange at local time `local` (the exchange's midpoint): offset (sender -
    local, seconds, relative to the session's first sample so floats keep ns resolution)."""

    local: float
    offset: float
    rtt: float


class OffsetFilter(Protocol):
    """Turns the kept samples into one offset at local time `at`, given the drift estimate."""

    name: str

    def offset_at(self, samples: list[TimingSample], drift: float, at: float) -> float: ...


class MinRttFilter:
    """The sample with the smallest round trip wins: its error is bounded by RTT/2."""

    name = "min_rtt"

    def offset_at(self, samples: list[TimingSample], drift: float, at: float) -> float:
        best = min(samples, key=lambda s: s.rtt)
        return best.offset + drift * (at - best.local)


class MedianFilter:
    """The median of every window sample, each carried to `at` with the drift."""

    name = "median"

    def offset_at(self, samples: list[TimingSample], drift: float, at: float) -> float:
        values = sorted(s.offset + drift * (at - s.local) for s in samples)
        mid = len(values) // 2
        if len(values) % 2:
            return values[mid]
        return (values[mid - 1] + values[mid]) / 2


class LowRttMedianFilter:
    """The median of the quarter of the window with the smallest round trips (at least 3)."""

    name = "low_rtt_median"

    def offset_at(self, samples: list[TimingSample], drift: float, at: float) -> float:
        keep = max(3, len(samples) // 4)
        best = sorted(samples, key=lambda s: s.rtt)[:keep]
        return MedianFilter().offset_at(best, drift, at)


FILTERS: dict[str, type[MinRttFilter] | type[MedianFilter] | type[LowRttMedianFilter]] = {
    "min_rtt": MinRttFilter,
    "median": MedianFilter,
    "low_rtt_median": LowRttMedianFilter,
}
DEFAULT_FILTER = "median"


@dataclass(frozen=True, slots=True)
class DriftFit:
    """Weighted least-squares line of offset against local time."""

    drift: float
    """Slope, dimensionless (1e-6 = 1 ppm): positive when the sender clock runs fast."""
    stderr: float
    """Standard error of the slope, same unit."""
    noise: float
    """Residual standard deviation of one sample's offset (s)."""


def fit_drift(samples: list[TimingSample]) -> DriftFit | None:
    """Offset slope over the samples, weighting each by 1/(RTT + 1 ms)^2; None if undefined."""
    if len(samples) < 3:
        return None
    weights = [1.0 / (s.rtt + 0.001) ** 2 for s in samples]
    total = sum(weights)
    mean_t = sum(w * s.local for w, s in zip(weights, samples, strict=True)) / total
    mean_o = sum(w * s.offset for w, s in zip(weights, samples, strict=True)) / total
    sxx = sum(w * (s.local - mean_t) ** 2 for w, s in zip(weights, samples, strict=True))
    if sxx <= 0.0:
        return None
    sxy = sum(
        w * (s.local - mean_t) * (s.offset - mean_o) for w, s in zip(weights, samples, strict=True)
    )
    slope = sxy / sxx
    residual = sum(
        w * (s.offset - mean_o - slope * (s.local - mean_t)) ** 2
        for w, s in zip(weights, samples, strict=True)
    )
    # Weighted residual variance with n - 2 degrees of freedom; the weights only set the
    # relative trust, so the scale comes from the residuals themselves.
    variance = residual / (len(samples) - 2) if len(samples) > 2 else math.inf
    # Unweighted residual spread, as the per-sample offset noise for the window choice.
    spread = [s.offset - mean_o - slope * (s.local - mean_t) for s in samples]
    noise = math.sqrt(sum(r * r for r in spread) / (len(samples) - 2))
    return DriftFit(slope, math.sqrt(variance / sxx), noise)


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """An immutable snapshot of the timeline, safe to hand to the output thread."""

    anchor_rtp: int
    """The RTP frame to be heard at `anchor_local` (rtp_now - latency of the latest sync)."""
    anchor_local: float
    """Local time of the anchor frame, computed with the offset at `reference` (no drift)."""
    reference: float
    """Local time at which the offset is `offset_ns`; drift extrapolates from here."""
    drift: float
    """Sender clock rate minus local clock rate, dimensionless (0 until measured well)."""
    rate: int
    """Sample rate, frames per second."""
    latency_frames: int
    """L: frames between the sender producing a frame and it being heard."""
    offset_ns: int
    """Sender clock minus local clock (ns) at `reference`, for statistics."""
    samples: int
    """Timing samples the offset came from."""
    filter: str
    """Name of the offset filter in use."""

    @property
    def drift_ppm(self) -> float:
        """Source drift in ppm (shairport-sync's "source drift ppm")."""
        return self.drift * 1e6

    def local_time(self, rtptime: int) -> float:
        """When frame `rtptime` should leave the DAC (be heard), in local `now` seconds."""
        # Sender time of the frame minus the offset, where the offset itself moves with the
        # drift: t + offset(ref) + drift * (t - ref) = sender_time, solved for t.
        frames = rtp_diff(rtptime, self.anchor_rtp)
        return (self.anchor_local + frames / self.rate + self.drift * self.reference) / (
            1.0 + self.drift
        )


@dataclass(slots=True)
class ClockStats:
    """Counters for the statistics line and metrics."""

    requests: int = 0
    replies: int = 0
    discarded_rtt: int = 0
    """Replies dropped for RTT > 200 ms (or a negative RTT: a broken sender clock)."""
    unmatched: int = 0
    """Replies whose origin echoes no request we sent (or one we already used)."""
    syncs: int = 0
    last_rtt_ms: float = math.nan


@dataclass(slots=True)
class _Pending:
    sent: float
    origin: int


class ClockSync:
    """Sends timing requests on a schedule and turns replies + sync packets into estimates.

    Schedule: `burst` requests `burst_interval` apart from the first `make_request`, then one
    every `interval` seconds. `next_request_time()` is None until the session sends the first
    request (it calls `make_request(now)` when the timing channel is up).
    """

    def __init__(
        self,
        rate: int = 44100,
        *,
        min_latency_frames: int | None = None,
        max_latency_frames: int | None = None,
        latency_offset: float = 0.0,
        filter: str = DEFAULT_FILTER,
        window: int = 64,
        burst: int = 8,
        burst_interval: float = 0.25,
        interval: float = 3.0,
    ) -> None:
        """`latency_offset` is the user's offset in seconds (+ = later), added to L; `window`
        samples are kept (64 at 3 s is about 3 minutes, enough for a drift fit to a few ppm)."""
        self.rate = rate
        self.min_latency_frames = min_latency_frames
        self.max_latency_frames = max_latency_frames
        self.latency_offset = latency_offset
        self.burst = burst
        self.burst_interval = burst_interval
        self.interval = interval
        self.stats = ClockStats()
        self._filter: OffsetFilter = FILTERS[filter]()
        self._samples: deque[TimingSample] = deque(maxlen=window)
        # A few outstanding requests are enough: replies later than 200 ms are useless anyway.
        self._pending: deque[_Pending] = deque(maxlen=16)
        self._base_ns: int | None = None
        self._drift = 0.0
        self._drift_stderr = DRIFT_PRIOR
        self._noise = math.inf  # offset noise (s) per sample, from the fit's residuals
        self._next_request: float | None = None
        self._sent = 0
        self._sync: SyncPacket | None = None
        self._estimate: ClockEstimate | None = None

    # -- timing channel -------------------------------------------------------------------------

    def make_request(self, now: float) -> bytes:
        """A 0xD2 request carrying `now` as its transmit time; schedules the next one."""
        origin = ns_to_ntp(round(now * _NS) + _LOCAL_EPOCH_NS)
        self._pending.append(_Pending(now, origin))
        self._sent += 1
        self.stats.requests += 1
        step = self.burst_interval if self._sent < self.burst else self.interval
        self._next_request = now + step
        return bytes(TimingPacket(False, 0, 0, origin))

    def next_request_time(self) -> float | None:
        """When `make_request` is due next (None before the first request)."""
        return self._next_request

    def reply_received(self, packet: TimingPacket, now: float) -> None:
        """A 0xD3 reply arrived at `now`."""
        pending = next((p for p in self._pending if p.origin == packet.origin), None)
        if pending is None or not packet.reply:
            self.stats.unmatched += 1
            return
        self._pending.remove(pending)
        self.stats.replies += 1
        t1 = round(pending.sent * _NS)
        t4 = round(now * _NS)
        t2 = ntp_to_ns(packet.receive)
        t3 = ntp_to_ns(packet.transmit)
        rtt_ns = (t4 - t1) - (t3 - t2)
        self.stats.last_rtt_ms = rtt_ns / 1e6
        if not 0 <= rtt_ns <= MAX_RTT * _NS:
            self.stats.discarded_rtt += 1
            return
        offset_ns = ((t2 - t1) + (t3 - t4)) // 2
        if self._base_ns is None:
            self._base_ns = offset_ns
        self.add_sample(
            TimingSample((pending.sent + now) / 2, (offset_ns - self._base_ns) / _NS, rtt_ns / _NS)
        )

    def add_sample(self, sample: TimingSample) -> None:
        """Keep one sample (offset relative to the first) and refresh the estimate."""
        self._samples.append(sample)
        fit = fit_drift(list(self._samples))
        if fit is not None and math.isfinite(fit.stderr):
            # Shrink the fitted slope towards 0 by its uncertainty against the crystal prior
            # (Bayesian, Gaussian): a burst of 2 s with 1 ms of jitter reads as +-100 ppm of noise,
            # which must not be taken at face value, while a minute of samples is trusted fully.
            prior = DRIFT_PRIOR**2
            variance = fit.stderr**2
            self._drift = max(-1e-3, min(1e-3, fit.drift * prior / (prior + variance)))
            self._drift_stderr = math.sqrt(prior * variance / (prior + variance))
            self._noise = fit.noise
        self._update()

    def _window(self) -> list[TimingSample]:
        """The newest k samples, k chosen to minimise the expected offset error: averaging more
        samples cuts the noise (noise / sqrt(k)) but carries old ones further with an uncertain
        drift (drift_stderr * age)."""
        samples = list(self._samples)
        if self._noise == 0.0:
            return samples[-1:] if self._drift_stderr > 0 else samples
        newest = samples[-1].local
        best_k, best_cost = 1, math.inf
        age_sum = 0.0
        for k in range(1, len(samples) + 1):
            age_sum += newest - samples[-k].local
            cost = self._noise**2 / k + (self._drift_stderr * age_sum / k) ** 2
            if cost < best_cost:
                best_k, best_cost = k, cost
        return samples[-best_k:]

    # -- control channel ------------------------------------------------------------------------

    def sync_received(self, packet: SyncPacket, now: float) -> None:
        """A sync packet: re-anchor RTP time to the sender clock (kept until timing is known)."""
        self.stats.syncs += 1
        self._sync = packet
        self._update()

    def latency_frames(self, packet: SyncPacket) -> int:
        """L for this sync packet: sender latency + 11025, clamped, plus the user offset."""
        latency = packet.latency_frames + FIXED_LATENCY_FRAMES
        if self.min_latency_frames is not None:
            latency = max(latency, self.min_latency_frames)
        if self.max_latency_frames is not None:
            latency = min(latency, self.max_latency_frames)
        return latency + round(self.latency_offset * self.rate)

    def estimate(self) -> ClockEstimate | None:
        """The current timeline, or None until one sync packet and one timing reply arrived."""
        return self._estimate

    @property
    def drift_ppm(self) -> float:
        return self._drift * 1e6

    def _update(self) -> None:
        sync = self._sync
        if sync is None or not self._samples or self._base_ns is None:
            return
        reference = self._samples[-1].local
        offset = self._filter.offset_at(self._window(), self._drift, reference)
        offset_ns = self._base_ns + round(offset * _NS)
        latency = self.latency_frames(sync)
        sender_ns = ntp_to_ns(sync.ntp)
        self._estimate = ClockEstimate(
            anchor_rtp=rtp_add(sync.rtptime_now, -latency),
            anchor_local=(sender_ns - offset_ns) / _NS,
            reference=reference,
            drift=self._drift,
            rate=self.rate,
            latency_frames=latency,
            offset_ns=offset_ns,
            samples=len(self._samples),
            filter=self._filter.name,
        )
