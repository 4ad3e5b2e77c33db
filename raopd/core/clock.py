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
import statistics
from bisect import bisect_left
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

DRIFT_LIMIT = 500e-6
"""The envelope drift is searched within +-500 ppm: crystals are specified to +-100 ppm."""

_MAX_POINTS = 20_000
"""Memory bound on kept exchanges per direction (the horizon at 10 per second is 6000)."""

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


SAMPLE_FILTERS: dict[str, type[MinRttFilter] | type[MedianFilter] | type[LowRttMedianFilter]] = {
    "min_rtt": MinRttFilter,
    "median": MedianFilter,
    "low_rtt_median": LowRttMedianFilter,
}
ENVELOPE = "envelope"
FILTERS = (ENVELOPE, *SAMPLE_FILTERS)
"""Every offset estimator `ClockSync(filter=...)` accepts; the per-sample ones are kept for
comparison (benchmarks/sync.py --filter)."""
DEFAULT_FILTER = ENVELOPE


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (Andrew's monotone chain, lower half)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        if hull and hull[-1][0] == p[0]:
            if hull[-1][1] <= p[1]:
                continue  # same instant, higher delay: never on the envelope
            hull.pop()
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            # Drop b unless a -> b -> p turns left (strictly convex from below).
            if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                break
            hull.pop()
        hull.append(p)
    return hull


class _Envelope:
    """Lower envelope of one direction's one-way delays (time, delay), over a time window.

    Only lower-hull vertices can ever be the minimum of `delay - slope * time` for some slope,
    so those are all that the estimate needs; every point is kept too (for when a vertex ages
    out of the window and the hull must be rebuilt).
    """

    def __init__(self) -> None:
        self.points: deque[tuple[float, float]] = deque()
        self.hull: list[tuple[float, float]] = []
        self.slopes: list[float] = []

    def add(self, t: float, d: float) -> None:
        self.points.append((t, d))
        if self.hull and t < self.hull[-1][0]:
            self.hull = _lower_hull(sorted([*self.hull, (t, d)]))
        else:
            self.hull = _lower_hull([*self.hull, (t, d)])
        self._slopes()

    def expire(self, before: float, max_points: int) -> None:
        rebuild = False
        while self.points and (self.points[0][0] < before or len(self.points) > max_points):
            rebuild = rebuild or self.points[0] in self.hull
            self.points.popleft()
        if rebuild:
            self.hull = _lower_hull(sorted(self.points))
            self._slopes()

    def _slopes(self) -> None:
        h = self.hull
        self.slopes = [(h[k + 1][1] - h[k][1]) / (h[k + 1][0] - h[k][0]) for k in range(len(h) - 1)]

    def vertex(self, slope: float) -> tuple[float, float]:
        """The point minimising delay - slope * time (the envelope's support point)."""
        return self.hull[bisect_left(self.slopes, slope)]


def solve_envelopes(
    forward: _Envelope, backward: _Envelope, limit: float
) -> tuple[float, float, float]:
    """The drift that lifts both envelopes highest: (drift, forward line at t=0, backward line).

    Forward delays sit on `base + offset(t)`, backward on `base - offset(t)`, offset(t) = a +
    drift * t. For a trial drift, each envelope's height is min(d -+ drift * t); their sum is
    concave in the drift, with derivative t_backward_vertex - t_forward_vertex (decreasing).
    The maximum is where that derivative changes sign; if it is zero over an interval (the data
    cannot tell those drifts apart), the drift closest to 0 is taken.
    """

    def derivative(drift: float) -> float:
        return backward.vertex(-drift)[0] - forward.vertex(drift)[0]

    def edge(positive: bool) -> float:
        # positive: sup{drift: derivative > 0}; else inf{drift: derivative < 0}.
        lo, hi = -limit, limit
        for _ in range(40):
            mid = (lo + hi) / 2
            if (derivative(mid) > 0) if positive else (derivative(mid) >= 0):
                lo = mid
            else:
                hi = mid
        return lo if positive else hi

    low, high = edge(True), edge(False)
    drift = min(max(0.0, low), high) if low <= high else (low + high) / 2
    tf, df = forward.vertex(drift)
    tb, db = backward.vertex(-drift)
    return drift, df - drift * tf, db + drift * tb


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

    Schedule (adaptive, see the module docstring): requests `fast_interval` apart until the
    estimator has `fast_samples_per_ms` samples per ms of measured jitter (at least
    `fast_min_samples`, at most `fast_max_samples`), then one every `jitter_budget / jitter`
    seconds, between `min_interval` and `interval`. `next_request_time()` is None until the
    session sends the first request (it calls `make_request(now)` when the timing channel is up).
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
        horizon: float = 600.0,
        fast_interval: float = 0.010,
        fast_min_samples: int = 300,
        fast_samples_per_ms: float = 100.0,
        fast_max_samples: int = 2000,
        jitter_budget: float = 0.0005,
        min_interval: float = 0.1,
        interval: float = 1.0,
    ) -> None:
        """`latency_offset` is the user's offset in seconds (+ = later), added to L. The
        envelope estimator keeps `horizon` seconds of exchanges; the per-sample filters keep
        the newest `window` samples."""
        if filter not in FILTERS:
            raise ValueError(f"unknown clock filter {filter!r}")
        self.rate = rate
        self.min_latency_frames = min_latency_frames
        self.max_latency_frames = max_latency_frames
        self.latency_offset = latency_offset
        self.horizon = horizon
        self.fast_interval = fast_interval
        self.fast_min_samples = fast_min_samples
        self.fast_samples_per_ms = fast_samples_per_ms
        self.fast_max_samples = fast_max_samples
        self.jitter_budget = jitter_budget
        self.min_interval = min_interval
        self.interval = interval
        self.stats = ClockStats()
        self.filter_name = filter
        self._filter: OffsetFilter | None = (
            SAMPLE_FILTERS[filter]() if filter in SAMPLE_FILTERS else None
        )
        self._samples: deque[TimingSample] = deque(maxlen=window)
        self._forward = _Envelope()
        self._backward = _Envelope()
        self._rtts: deque[float] = deque(maxlen=100)
        self._accepted = 0
        # Requests in flight: replies later than 200 ms are useless, so this covers 200 ms of
        # the fast schedule.
        self._pending: deque[_Pending] = deque(maxlen=32)
        self._base_ns: int | None = None
        self._drift = 0.0
        self._drift_stderr = DRIFT_PRIOR
        self._noise = math.inf  # offset noise (s) per sample, from the fit's residuals
        self._next_request: float | None = None
        self._sent = 0
        self._sync: SyncPacket | None = None
        self._estimate: ClockEstimate | None = None
        self._offset = 0.0  # seconds relative to _base_ns, at _reference
        self._reference = 0.0

    # -- timing channel -------------------------------------------------------------------------

    def jitter(self) -> float | None:
        """Measured network jitter (s): median minus minimum RTT over the last 100 exchanges
        (for independent uniform(0, J) delays each way, that is J)."""
        if len(self._rtts) < 8:
            return None
        return statistics.median(self._rtts) - min(self._rtts)

    def _step(self) -> float:
        jitter = self.jitter()
        # The fast phase ends by itself after 1.25 x its cap even if replies never come.
        if self._sent < 1.25 * self.fast_max_samples:
            if self._sent < self.fast_min_samples or jitter is None:
                return self.fast_interval
            wanted = min(self.fast_max_samples, self.fast_samples_per_ms * jitter * 1e3)
            if self._accepted < wanted:
                return self.fast_interval
        if not jitter:
            return self.interval
        return min(self.interval, max(self.min_interval, self.jitter_budget / jitter))

    def make_request(self, now: float) -> bytes:
        """A 0xD2 request carrying `now` as its transmit time; schedules the next one."""
        origin = ns_to_ntp(round(now * _NS) + _LOCAL_EPOCH_NS)
        self._pending.append(_Pending(now, origin))
        self._sent += 1
        self.stats.requests += 1
        self._next_request = now + self._step()
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
        self._accepted += 1
        self._rtts.append(rtt_ns / _NS)
        offset_ns = ((t2 - t1) + (t3 - t4)) // 2
        if self._base_ns is None:
            self._base_ns = offset_ns
        base = self._base_ns
        # Both one-way delays at the exchange's midpoint, the offset base taken out so floats
        # keep ns resolution: forward = delay + offset, backward = delay - offset.
        middle = (pending.sent + now) / 2
        self._forward.add(middle, (t2 - t1 - base) / _NS)
        self._backward.add(middle, (t4 - t3 + base) / _NS)
        self._forward.expire(middle - self.horizon, _MAX_POINTS)
        self._backward.expire(middle - self.horizon, _MAX_POINTS)
        self.add_sample(TimingSample(middle, (offset_ns - base) / _NS, rtt_ns / _NS))

    def add_sample(self, sample: TimingSample) -> None:
        """Keep one sample (offset relative to the first) and refresh the estimate."""
        self._samples.append(sample)
        if self._filter is None:
            drift, forward, backward = solve_envelopes(self._forward, self._backward, DRIFT_LIMIT)
            self._drift = drift
            self._reference = sample.local
            self._offset = (forward - backward) / 2 + drift * sample.local
            self._update()
            return
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
        self._reference = sample.local
        self._offset = self._filter.offset_at(self._window(), self._drift, sample.local)
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
        reference = self._reference
        offset_ns = self._base_ns + round(self._offset * _NS)
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
            filter=self.filter_name,
        )
