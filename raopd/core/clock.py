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

Estimator (default `filter="envelope"`). Replies with RTT > 200 ms are discarded, replies that do
not echo one of our requests are counted and ignored. Each kept exchange gives two one-way
delays, both placed at the exchange's midpoint t:

    forward  T2 - T1 = base + jitter_f + offset(t)        offset(t) = a + drift * t
    backward T4 - T3 = base + jitter_b - offset(t)

A per-exchange offset ((T2-T1) + (T3-T4)) / 2 is off by (jitter_f - jitter_b) / 2: with 20 ms of
jitter that is several ms, and a median over a few samples cannot average it away. The least
delayed packets, though, are nearly undelayed: the minimum of n uniform(0, J) delays is about
J / (n + 1). So the estimator works on each direction's *lower envelope* (lower convex hull of
(t, delay), all exchanges of the last `horizon` = 10 minutes, trimmed once a minute): for a trial
drift, each envelope's height is min(delay -+ drift * t); their sum is concave in the drift and
the drift that maximises it is taken (if a range of drifts does equally well, the one closest to
0; searched within +-500 ppm). Then offset = (forward height - backward height) / 2: the common
base delay cancels, and only the difference of the two directions' smallest jitters remains.
This is the clock-filter idea of NTP (minimum delay) with the linear-programming skew estimate
of one-way delay work, but with the two directions kept apart (a minimum over each direction
separately beats the single lowest-RTT exchange: ~J/n against ~J*sqrt(2/n)). Only hull vertices
are ever a minimum, so an update is a bisection over a few dozen points (about 0.1 ms of CPU).
The remaining assumption, as for every NTP-style method, is that the *minimum* delays are the
same both ways.

Sync packets are not used as one-way samples: real senders stamp them some ms before sending
(cliraop: about 4 ms in the captures), which would bias the backward envelope.

Outliers (issue 10). Once 8 exchanges are in, an exchange whose forward or backward delay lies
below its envelope by more than `2 ms + measured jitter + 200 ppm x time since the last kept
exchange` is not a lucky fast packet but an offset that disagrees with the estimate (a forged
reply that echoes one of our origins, a sender clock that was set): it is counted in
`stats.rejected` and not used. One such reply can therefore move the estimate by at most that
allowance. Recovery from a real step (the sender's clock was set): when 8 consecutive
exchanges are rejected and agree with each other (their offsets within twice the allowance),
the estimator restarts from them, counted in `stats.steps`; the sync anchor restarts too, as its
stamps are in the sender's clock. Until then the old estimate stays in use.

The RTP anchor (`SyncAnchor`). Some senders stamp sync packets late: node-airtunes2 sends in
100 ms bursts and stamps each sync packet when its burst goes out, so the stamp is 0..100 ms
after the time of the frame it names. Taking each sync at face value moved the whole timeline
by up to 100 ms once a second (hard resyncs). A stamp can be late but is never early, so the
relation is fitted to the *lower envelope* of the syncs: y = stamp - rtp_now / rate against
x = rtp_now / rate over the last 120 s (at most 256 syncs); the line under all points that
touches the hull where the points are (the linear-programming fit of one-sided noise) gives the
RTP clock's rate against the sender clock (shrunk towards 0 by its uncertainty, 0 for the first
30 s) and its offset. A late stamp lies above the line and moves nothing; an earlier one (a
better stamp) lowers it. With uniform lateness of width J the envelope is about J / (n + 1) late
after n syncs. A sync more than 250 ms off the line is counted as rejected; three such in a row
that agree with each other, or one flagged as the first of a stream (0x90), are a discontinuity
the sender meant: the anchor restarts from them (`stats.anchor_resets`). `flushed()` (a FLUSH)
restarts it at the next sync.

Schedule. The envelope needs many exchanges, and a drift that is only poorly known early on
must be pinned by recent samples, so requests are sent 10 ms apart at first, until there are
100 samples per ms of measured jitter (at least 300 = 3 s, at most 2000 = 20 s; measured jitter =
median - minimum RTT of the last 100 exchanges), then every 0.5 ms / jitter seconds, between
0.1 and 1 s. A request is 32 bytes: at worst (20 ms jitter) that is 10 requests a second, 0.6 kB/s
each way, beside ~100 kB/s of audio; on a quiet LAN one a second after 3 s.

Measured (idealised offset-only model, each direction 0.3 ms + uniform(0, 20 ms), drift
-100..+100 ppm, worst |offset error| over 40 runs at t = 5/10/30/60/120 s):

  10 ms burst of 300, then 1 s:         0.38 / 0.60 / 1.36 / 1.87 / 1.02 ms (drift unknown)
  10 ms for 10 s (1000), then 1 s:      0.18 / 0.08 / 0.45 / 0.51 / 0.99 ms
  10 ms for 20 s (2000), then 0.1 s:    0.18 / 0.15 / 0.05 / 0.11 / 0.04 ms   (chosen)

and through the real Playout on virtual time (tests/core/fake_dac.py, each direction 0.2 ms +
uniform(0, J), 60 s, sender +ppm/2 and DAC -ppm/2), clock offset error p99 after 5 s:

  J = 20 ms: envelope 0.10 ms (-200 ppm) .. 0.15 ms (+-50 ppm); on the same schedule at
             +200 ppm the median filter gives 1.68 ms and min_rtt 2.15 ms (sync error p99
             1.51 / 1.53 ms); the previous 3 s schedule gave the median 3.1-4.7 ms
  J = 5 ms:  0.02-0.04 ms;  J = 1 ms: 0.01-0.02 ms;  J = 0: exact

The per-sample filters of the previous version are kept for comparison (`filter=`):
`min_rtt` (the offset of the lowest-RTT exchange, shairport-sync's choice), `median` (of the
window's offsets, snapcast's), `low_rtt_median`; each uses a weighted least-squares drift shrunk
towards 0 by its standard error and a window of the newest samples chosen to balance noise
against drift uncertainty. On the recorded loopback captures (RTT 30 us..3 ms, 14 exchanges)
all of them predict each next exchange within 2 ms (median under 0.3 ms).
"""

import itertools
import math
import statistics
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from raopd.core.audio_format import FIXED_LATENCY_FRAMES, SAMPLE_RATE
from raopd.core.ntp import NTP_EPOCH_OFFSET, ns_to_ntp, ntp_to_ns
from raopd.core.packets import SyncPacket, TimingPacket
from raopd.core.seq import rtp_add, rtp_diff

DRIFT_PRIOR = 100e-6
"""Spread of real clock drift (crystals): the prior the drift fit is shrunk towards 0 with."""

DRIFT_LIMIT = 500e-6
"""The envelope drift is searched within +-500 ppm: crystals are specified to +-100 ppm."""

_MAX_POINTS = 20_000
"""Memory bound on kept exchanges per direction (the horizon at 10 per second is 6000)."""

EXPIRY_SLACK = 0.1
"""Old exchanges leave the envelope in bulk, once they are this fraction of the horizon past
it: the oldest point is always a hull vertex, so expiring one point at a time rebuilt the
hull from every kept point on every reply once the horizon was full (1.2 ms per reply with
600 points, ~10 ms with 6000; now one rebuild a minute)."""

MAX_RTT = 0.200
"""Replies with a longer round trip say more about the network than about the clocks."""

REJECT_AFTER = 8
"""Exchanges kept before outliers can be told apart (and the step confirmations needed)."""
REJECT_FLOOR = 0.002
"""Allowance (s) under the envelope before an exchange counts as an outlier: sender clocks have
1 ms steps (node-airtunes2), so a legitimate sample can sit up to ~1 ms under its envelope."""
REJECT_DRIFT = 200e-6
"""Drift allowance per second since the last kept exchange (crystals: +-100 ppm each end)."""

STAMP_LIMIT = 0.250
"""A sync stamp this far (s) off the anchor line is not a late stamp but a discontinuity."""
ANCHOR_CONFIRM = 3
"""Consecutive off-line syncs that agree with each other before the anchor restarts on them."""
ANCHOR_HORIZON = 120.0
"""Seconds of RTP time the anchor fit looks back."""
ANCHOR_MAX_POINTS = 256
ANCHOR_SLOPE_SPAN = 30.0
"""The RTP rate against the sender clock is assumed exact until syncs span this long (s)."""
LATE_STAMP = 0.001
"""A sync stamp this much (s) above the anchor line counts as late in the statistics."""

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
        self.rebuilds = 0  # full hull rebuilds, for tests of the expiry's cost

    def add(self, t: float, d: float) -> None:
        self.points.append((t, d))
        if self.hull and t < self.hull[-1][0]:
            self.hull = _lower_hull(sorted([*self.hull, (t, d)]))
        else:
            self.hull = _lower_hull([*self.hull, (t, d)])
        self._slopes()

    def expire(self, before: float, max_points: int, slack: float = 0.0) -> None:
        """Drop points older than `before` (and the oldest beyond `max_points`), but only once
        the oldest is `slack` seconds past `before` or the count 10 % past `max_points`: a
        vertex leaving means a rebuild from every point, so it is done in bulk."""
        points = self.points
        if not points or (
            points[0][0] >= before - slack and len(points) <= max_points + max_points // 10
        ):
            return
        rebuild = False
        while points and (points[0][0] < before or len(points) > max_points):
            rebuild = rebuild or points[0] in self.hull
            points.popleft()
        if rebuild:
            self.rebuilds += 1
            self.hull = _lower_hull(sorted(points))
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
    rejected: int = 0
    """Exchanges inconsistent with the estimate (beyond jitter and drift): not used."""
    steps: int = 0
    """Times the estimator restarted on a confirmed step of the sender's clock."""
    syncs_late: int = 0
    """Sync packets stamped more than 1 ms later than the anchor line (ignored by the fit)."""
    syncs_rejected: int = 0
    """Sync packets more than 250 ms off the anchor line (held as discontinuity candidates)."""
    anchor_resets: int = 0
    """Anchor restarts: after a FLUSH, a sync flagged first, or confirmed off-line syncs."""
    stamp_spread_ms: float = 0.0
    """How far above the anchor line the window's sync stamps reach (90th percentile, ms)."""


@dataclass(frozen=True, slots=True)
class AnchorLine:
    """stamp = x + intercept + slope * x, with x = RTP frames since the anchor's base / rate."""

    intercept: float
    slope: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


class SyncAnchor:
    """RTP time <-> sender clock, fitted to the lower envelope of the sync packets' stamps.

    See the module docstring. `add()` returns True when the line may have changed. Times are
    kept relative to the first sync (RTP unwrapped, stamps in s) so floats keep ns resolution.
    """

    def __init__(self, rate: int, stats: ClockStats) -> None:
        self.rate = rate
        self.stats = stats
        self._points: deque[tuple[float, float]] = deque()  # (x, y = stamp - x)
        self._candidates: list[SyncPacket] = []
        self._base_ns = 0
        self._base_rtp = 0
        self._last_rtp = 0
        self._last_ext = 0
        self._line: AnchorLine | None = None
        self._restart = False

    def clear(self) -> None:
        """Forget every sync: the next one starts a new anchor (after a FLUSH)."""
        self._restart = bool(self._points) or self._restart
        self._points.clear()
        self._candidates.clear()
        self._line = None

    @property
    def ready(self) -> bool:
        return self._line is not None

    def _xy(self, packet: SyncPacket) -> tuple[float, float, int]:
        ext = self._last_ext + rtp_diff(packet.rtptime_now, self._last_rtp)
        x = ext / self.rate
        return x, (ntp_to_ns(packet.ntp) - self._base_ns) / _NS - x, ext

    def _start(self, packets: list[SyncPacket]) -> None:
        first = packets[0]
        if self._restart:
            self.stats.anchor_resets += 1
        self._restart = False
        self._points.clear()
        self._candidates.clear()
        self._base_ns = ntp_to_ns(first.ntp)
        self._base_rtp = self._last_rtp = first.rtptime_now
        self._last_ext = 0
        for packet in packets:
            x, y, ext = self._xy(packet)
            self._points.append((x, y))
            self._last_rtp, self._last_ext = packet.rtptime_now, ext
        self._fit()

    def add(self, packet: SyncPacket) -> bool:
        """One sync packet; True when the anchor line was (re)computed."""
        if self._line is None:
            self._start([packet])
            return True
        x, y, ext = self._xy(packet)
        newest = self._points[-1][0]
        residual = y - self._line.at(x)
        allowance = STAMP_LIMIT + DRIFT_LIMIT * abs(x - newest)
        if abs(residual) > allowance:
            self.stats.syncs_rejected += 1
            if packet.first:
                self._restart = True
                self._start([packet])
                return True
            self._candidates.append(packet)
            if len(self._candidates) >= ANCHOR_CONFIRM:
                ys = [self._xy(p)[1] for p in self._candidates[-ANCHOR_CONFIRM:]]
                if max(ys) - min(ys) <= STAMP_LIMIT:
                    self._restart = True
                    self._start(self._candidates[-ANCHOR_CONFIRM:])
                    return True
            return False
        self._candidates.clear()
        if residual > LATE_STAMP:
            self.stats.syncs_late += 1
        self._last_rtp, self._last_ext = packet.rtptime_now, ext
        points = self._points
        points.append((x, y))
        while len(points) > ANCHOR_MAX_POINTS or points[0][0] < x - ANCHOR_HORIZON:
            points.popleft()
        self._fit()
        return True

    def _fit(self) -> None:
        points = sorted(self._points)
        span = points[-1][0] - points[0][0]
        slope = 0.0
        if span >= ANCHOR_SLOPE_SPAN and len(points) >= 8:
            hull = _lower_hull(points)
            mean_x = sum(p[0] for p in points) / len(points)
            # The edge over the points' mean x minimises the summed height above the line.
            for (ax, ay), (bx, by) in itertools.pairwise(hull):
                if ax <= mean_x <= bx:
                    slope = (by - ay) / (bx - ax)
                    break
            slope = max(-DRIFT_LIMIT, min(DRIFT_LIMIT, slope))
        intercept = min(y - slope * x for x, y in points)
        residuals = sorted(y - slope * x - intercept for x, y in points)
        spread = residuals[int(0.9 * (len(residuals) - 1))]
        if slope:
            # The edge's ends sit up to `spread` above the truth each: shrink by that error.
            error = 2.0 * spread / span
            slope *= DRIFT_PRIOR**2 / (DRIFT_PRIOR**2 + error**2)
            intercept = min(y - slope * x for x, y in points)
        self.stats.stamp_spread_ms = spread * 1e3
        self._line = AnchorLine(intercept, slope)

    def sender_ns(self, rtptime: int) -> int:
        """Sender-clock time (ns) of frame `rtptime` on the anchor line (near the newest sync)."""
        assert self._line is not None
        x = (self._last_ext + rtp_diff(rtptime, self._last_rtp)) / self.rate
        return self._base_ns + round((x + self._line.at(x)) * _NS)


@dataclass(slots=True)
class _Pending:
    sent: float
    origin: int


@dataclass(frozen=True, slots=True)
class _Exchange:
    """One answered request: midpoint (local s), one-way delays with the offset in (ns)."""

    middle: float
    forward_ns: int
    """T2 - T1: outbound delay + offset."""
    backward_ns: int
    """T4 - T3: return delay - offset."""
    rtt_ns: int


# Requests sent without a single usable reply after which the fast phase pauses.
NO_REPLY_LIMIT = 50


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
        rate: int = SAMPLE_RATE,
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
        self._jitter: float | None = None  # from _rtts, see jitter()
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
        self._anchor = SyncAnchor(rate, self.stats)
        self._estimate: ClockEstimate | None = None
        self._offset = 0.0  # seconds relative to _base_ns, at _reference
        self._reference = 0.0
        # The envelope lines of the last solve: (drift, forward at t=0, backward at t=0).
        self._lines: tuple[float, float, float] | None = None
        self._last_kept = 0.0  # midpoint of the last exchange used
        self._suspects: list[_Exchange] = []  # consecutive rejected exchanges

    # -- timing channel -------------------------------------------------------------------------

    def jitter(self) -> float | None:
        """Measured network jitter (s): median minus minimum RTT over the last 100 exchanges
        (for independent uniform(0, J) delays each way, that is J)."""
        return self._jitter

    def _measure_jitter(self) -> None:
        # Once per kept exchange, not per use: the request pacing and the outlier test both
        # ask for it, ~100 times a second during the fast start.
        if len(self._rtts) < 8:
            self._jitter = None
        else:
            self._jitter = statistics.median(self._rtts) - min(self._rtts)

    def _step(self) -> float:
        jitter = self.jitter()
        if self._accepted == 0 and self._sent >= NO_REPLY_LIMIT:
            # The sender is not answering (or not yet): asking 100 times a second will not
            # change that. Ask at the slow pace until a reply comes, then speed up again.
            return self.interval
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
        exchange = _Exchange((pending.sent + now) / 2, t2 - t1, t4 - t3, rtt_ns)
        if self._base_ns is not None and self._is_outlier(exchange):
            self.stats.rejected += 1
            self._suspects.append(exchange)
            if self._step_confirmed():
                self._restart(self._suspects)
            return
        self._suspects.clear()
        self._keep(exchange)

    def _keep(self, exchange: _Exchange) -> None:
        self._accepted += 1
        self._rtts.append(exchange.rtt_ns / _NS)
        self._measure_jitter()
        offset_ns = (exchange.forward_ns - exchange.backward_ns) // 2
        if self._base_ns is None:
            self._base_ns = offset_ns
        base = self._base_ns
        # Both one-way delays at the exchange's midpoint, the offset base taken out so floats
        # keep ns resolution: forward = delay + offset, backward = delay - offset.
        middle = exchange.middle
        self._last_kept = middle
        self._forward.add(middle, (exchange.forward_ns - base) / _NS)
        self._backward.add(middle, (exchange.backward_ns + base) / _NS)
        slack = self.horizon * EXPIRY_SLACK
        self._forward.expire(middle - self.horizon, _MAX_POINTS, slack)
        self._backward.expire(middle - self.horizon, _MAX_POINTS, slack)
        self.add_sample(TimingSample(middle, (offset_ns - base) / _NS, exchange.rtt_ns / _NS))

    def _allowance(self, middle: float) -> float:
        """How far under its envelope (s) a legitimate exchange can be, at time `middle`."""
        return REJECT_FLOOR + (self.jitter() or 0.0) + REJECT_DRIFT * abs(middle - self._last_kept)

    def _is_outlier(self, exchange: _Exchange) -> bool:
        """The exchange disagrees with the estimate by more than jitter and drift allow."""
        if self._accepted < REJECT_AFTER or self._base_ns is None:
            return False
        base, t = self._base_ns, exchange.middle
        allowance = self._allowance(t)
        if self._lines is not None:
            drift, forward, backward = self._lines
            below_f = forward + drift * t - (exchange.forward_ns - base) / _NS
            below_b = backward - drift * t - (exchange.backward_ns + base) / _NS
            return max(below_f, below_b) > allowance
        offset = ((exchange.forward_ns - exchange.backward_ns) / 2 - base) / _NS
        predicted = self._offset + self._drift * (t - self._reference)
        return abs(offset - predicted) > exchange.rtt_ns / _NS / 2 + allowance

    def _step_confirmed(self) -> bool:
        """REJECT_AFTER rejected exchanges in a row that agree with each other: a real step."""
        suspects = self._suspects
        if len(suspects) < REJECT_AFTER:
            return False
        del suspects[:-REJECT_AFTER]
        offsets = [(e.forward_ns - e.backward_ns) / 2 / _NS for e in suspects]
        return max(offsets) - min(offsets) <= 2 * self._allowance(suspects[0].middle)

    def _restart(self, exchanges: list[_Exchange]) -> None:
        """The sender's clock was set: start the estimate again from the exchanges that say so.

        The sync anchor restarts too (its stamps are in the old clock); the estimate already
        handed out stays in use until the next sync packet, and it is still right in local
        time, as both of its halves were in the old clock.
        """
        self.stats.steps += 1
        kept = list(exchanges)
        self._suspects.clear()
        self._forward = _Envelope()
        self._backward = _Envelope()
        self._samples.clear()
        self._base_ns = None
        self._lines = None
        self._accepted = 0
        self._anchor.clear()
        self._sync = None
        for exchange in kept:
            self._keep(exchange)

    def add_sample(self, sample: TimingSample) -> None:
        """Keep one sample (offset relative to the first) and refresh the estimate."""
        self._samples.append(sample)
        if self._filter is None:
            drift, forward, backward = solve_envelopes(self._forward, self._backward, DRIFT_LIMIT)
            self._lines = (drift, forward, backward)
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
        """A sync packet: one more point for the RTP anchor (see `SyncAnchor`)."""
        self.stats.syncs += 1
        if self._anchor.add(packet):
            self._sync = packet
            self._update()

    def flushed(self) -> None:
        """A FLUSH: the sender may start a new RTP timeline; the next sync starts the anchor."""
        self._anchor.clear()

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
        if sync is None or not self._samples or self._base_ns is None or not self._anchor.ready:
            return
        reference = self._reference
        offset_ns = self._base_ns + round(self._offset * _NS)
        latency = self.latency_frames(sync)
        sender_ns = self._anchor.sender_ns(sync.rtptime_now)
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
