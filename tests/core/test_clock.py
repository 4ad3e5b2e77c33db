"""ClockSync: request format, schedule, filtering, latency rule, and real captured exchanges."""

import itertools
import json
import statistics
from pathlib import Path

import pytest

from raopd.core.clock import (
    EXPIRY_SLACK,
    FILTERS,
    NO_REPLY_LIMIT,
    ClockSync,
    TimingSample,
    fit_drift,
)
from raopd.core.ntp import ns_to_ntp, ntp_to_ns
from raopd.core.packets import SyncPacket, TimingPacket
from raopd.core.seq import rtp_add
from tests.core.fake_dac import Scenario, simulate

DATA = json.loads((Path(__file__).parent / "data" / "capture_timing.json").read_text())
SENDER_EPOCH = 3_800_000_000 * 1_000_000_000


def reply_to(request: bytes, sender_ns: int, hold_ns: int = 20_000) -> TimingPacket:
    origin = TimingPacket.parse(request).transmit
    return TimingPacket(True, origin, ns_to_ntp(sender_ns), ns_to_ntp(sender_ns + hold_ns))


def test_request_bytes():
    request = ClockSync().make_request(12.5)
    assert len(request) == 32
    assert request[:8] == bytes([0x80, 0xD2, 0x00, 0x07, 0, 0, 0, 0])
    assert request[8:24] == bytes(16)
    assert request[24:32] != bytes(8)  # our time, never zero even at now = 0


def request_times(clock: ClockSync, count: int, answer: bool, rtt: float = 0.0004) -> list[float]:
    """Send `count` requests on the clock's schedule; answer each at once if `answer`."""
    times = []
    now = 0.0
    for _ in range(count):
        request = clock.make_request(now)
        times.append(now)
        if answer:
            clock.reply_received(
                reply_to(request, SENDER_EPOCH + round((now + rtt / 2) * 1e9), 0), now + rtt
            )
        due = clock.next_request_time()
        assert due is not None
        now = due
    return times


def test_schedule_fast_start_then_one_per_second_on_a_quiet_network():
    clock = ClockSync()
    assert clock.next_request_time() is None
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(request_times(clock, 305, True))]
    # 300 requests 10 ms apart (3 s), then, with no jitter measured, one per second.
    assert gaps == [0.01] * 299 + [1.0] * 5
    assert clock.jitter() == 0.0


def test_schedule_slows_down_when_no_reply_comes():
    """A sender that does not answer is not asked 100 times a second for long."""
    clock = ClockSync()
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(request_times(clock, 60, False))]
    assert gaps == [0.01] * (NO_REPLY_LIMIT - 1) + [1.0] * (60 - NO_REPLY_LIMIT)


def test_schedule_follows_measured_jitter():
    """20 ms of jitter: fast until ~100 samples per ms of jitter, then every 0.1 s."""
    result = simulate(Scenario(jitter=0.02, seconds=40))
    clock = result.clock
    jitter = clock.jitter()
    assert jitter is not None and 0.012 < jitter < 0.025
    assert 1000 < clock.stats.replies < 2500
    clock.make_request(40.0)
    assert clock.next_request_time() == pytest.approx(40.1)


def test_estimate_needs_sync_and_reply():
    clock = ClockSync()
    sync = SyncPacket(1000, ns_to_ntp(SENDER_EPOCH + 10**9), rtp_add(1000, 77175))
    clock.sync_received(sync, 1.0)
    assert clock.estimate() is None  # anchor kept, waiting for timing
    request = clock.make_request(1.1)
    clock.reply_received(reply_to(request, SENDER_EPOCH + 1_100_000_000 + 50_000), 1.10012)
    estimate = clock.estimate()
    assert estimate is not None
    # Offset = sender - local = epoch exactly (50 us out, 50 us back, 20 us held).
    assert abs(estimate.offset_ns - SENDER_EPOCH) <= 2  # ns, NTP fraction truncation
    # Frame rtptime_at_ntp (1000) is heard 11025 frames after the sync's NTP time.
    assert estimate.local_time(1000) == pytest.approx(1.0 + 11025 / 44100, abs=3e-9)
    assert estimate.latency_frames == 77175 + 11025


def test_unmatched_and_slow_replies_are_counted_not_used():
    clock = ClockSync()
    clock.reply_received(TimingPacket(True, 12345, 1, 2), 0.5)
    assert clock.stats.unmatched == 1
    request = clock.make_request(1.0)
    clock.reply_received(reply_to(request, SENDER_EPOCH + 10**9), 1.25)  # 250 ms round trip
    assert clock.stats.discarded_rtt == 1
    clock.reply_received(reply_to(request, SENDER_EPOCH + 10**9), 1.26)  # already answered
    assert clock.stats.unmatched == 2
    clock.sync_received(SyncPacket(0, ns_to_ntp(SENDER_EPOCH), 77175), 1.3)
    assert clock.estimate() is None


@pytest.mark.parametrize(
    ("minimum", "maximum", "offset", "expected"),
    [
        (None, None, 0.0, 88200),
        (11025, 80000, 0.0, 80000),
        (99000, None, 0.0, 99000),
        (None, None, -0.1, 88200 - 4410),
    ],
)
def test_latency_rule(minimum, maximum, offset, expected):
    clock = ClockSync(min_latency_frames=minimum, max_latency_frames=maximum, latency_offset=offset)
    assert clock.latency_frames(SyncPacket(5, 0, rtp_add(5, 77175))) == expected


def test_local_time_across_rtp_wrap_and_drift():
    clock = ClockSync()
    t = 0.0
    ppm = 100e-6
    for _ in range(12):  # zero jitter: the envelopes are exact lines
        request = clock.make_request(t)
        sender = SENDER_EPOCH + round(t * 1e9 * (1 + ppm))
        clock.reply_received(reply_to(request, sender, hold_ns=0), t)
        due = clock.next_request_time()
        assert due is not None
        t = due
    assert clock.drift_ppm == pytest.approx(100.0, abs=0.01)
    anchor = (1 << 32) - 100
    sync_ns = SENDER_EPOCH + round(t * 1e9 * (1 + ppm))
    clock.sync_received(SyncPacket(anchor, ns_to_ntp(sync_ns), rtp_add(anchor, 77175)), t)
    estimate = clock.estimate()
    assert estimate is not None
    frame = rtp_add(anchor, 44100 * 10)  # wraps past 2**32
    # Heard 10 s + 11025 frames after the sync's NTP time (sender clock), mapped back to local;
    # relative to the epoch so floats keep ns resolution.
    heard_sender_s = (sync_ns - SENDER_EPOCH) / 1e9 + (44100 * 10 + 11025) / 44100
    expected_local = heard_sender_s / (1 + ppm)
    assert estimate.local_time(frame) == pytest.approx(expected_local, abs=2e-7)


def test_fit_drift_recovers_slope():
    samples = [TimingSample(t, 0.003 + 50e-6 * t, 0.001) for t in range(0, 60, 3)]
    fit = fit_drift(samples)
    assert fit is not None
    assert fit.drift == pytest.approx(50e-6, rel=1e-9)
    assert fit.stderr < 1e-9


def replay_capture(name: str, filter_name: str) -> tuple[ClockSync, list[float], list[float]]:
    """Feed a capture's exchanges (rebuilt with our origin) and syncs; returns the clock, the
    error predicting each sample's offset from the earlier ones, and the sync check values."""
    capture = DATA["captures"][name]
    clock = ClockSync(filter=filter_name)
    events = [(e["t_request"], "x", e) for e in capture["exchanges"]]
    events += [(s["t"], "s", s) for s in capture["syncs"]]
    predictions: list[float] = []
    heard: list[float] = []
    base = None
    for t, kind, item in sorted(events, key=lambda e: e[0]):
        if kind == "x":
            raw = bytes.fromhex(item["reply"])
            reply = TimingPacket.parse(raw)
            request = clock.make_request(t)
            origin = TimingPacket.parse(request).transmit
            t1, t4 = t, item["t_reply"]
            t2, t3 = ntp_to_ns(reply.receive), ntp_to_ns(reply.transmit)
            measured = ((t2 - round(t1 * 1e9)) + (t3 - round(t4 * 1e9))) / 2e9
            estimate = clock.estimate()
            if estimate is not None:
                predicted = estimate.offset_ns / 1e9 + estimate.drift * (t4 - estimate.reference)
                predictions.append(predicted - measured)
            clock.reply_received(TimingPacket(True, origin, reply.receive, reply.transmit), t4)
            base = base or measured
        else:
            packet = SyncPacket.parse(bytes.fromhex(item["packet"]))
            clock.sync_received(packet, t)
            estimate = clock.estimate()
            if estimate is not None:
                heard.append(estimate.local_time(packet.rtptime_at_ntp) - t)
    return clock, predictions, heard


@pytest.mark.parametrize("name", ["node-alac-rsa", "cliraop-alac-plain", "pyatv-l16"])
@pytest.mark.parametrize("filter_name", sorted(FILTERS))
def test_real_captures(name, filter_name):
    clock, predictions, heard = replay_capture(name, filter_name)
    assert clock.stats.replies == 14
    assert clock.stats.discarded_rtt == 0
    # Loopback, one host: the sender and receiver clocks tick together.
    assert abs(clock.drift_ppm) < 25
    # Each next sample is predicted within 2 ms: node-airtunes' clock has 1 ms steps, and one
    # cliraop exchange took 3.2 ms, so that sample itself is off by up to 1.6 ms.
    assert max(abs(p) for p in predictions) < 2e-3
    assert statistics.median(abs(p) for p in predictions) < 0.3e-3
    # Frame rtptime_at_ntp is due 11025 frames (250 ms) after the sync was sent, which on
    # loopback is when it arrived (cliraop stamps its syncs about 4 ms before sending them).
    if name != "node-alac-rsa":
        assert statistics.median(heard) == pytest.approx(0.25, abs=0.005)
        assert clock.stats.syncs_late == 0
        return
    # node-airtunes2 stamps a sync when its burst goes out, after the frame it names: the
    # anchor follows its earliest stamps, so frames are due up to 250 ms after the sync
    # arrived, earlier as better stamps come (the capture's stamps spread 25 ms, the latest
    # syncs land 57 ms earlier than the first did).
    assert max(heard) <= 0.25 + 0.001
    assert heard[-1] < 0.25 - 0.040
    assert clock.stats.syncs_late > len(heard) // 2
    assert clock.stats.syncs_rejected == 0


def test_default_filter_is_the_better_one_under_jitter():
    """Why the default: at 20 ms asymmetric jitter with drift, the envelope beats the median."""
    results = {}
    for name in ("envelope", "median"):
        r = simulate(Scenario(sender_ppm=100, dac_ppm=-100, jitter=0.02, seconds=60, filter=name))
        results[name] = r.summary()["clock_p99_ms"]
    assert results["envelope"] < 0.2
    assert results["envelope"] < results["median"] / 5
    assert ClockSync().filter_name == "envelope"


def test_unknown_filter_is_refused():
    with pytest.raises(ValueError, match="unknown clock filter"):
        ClockSync(filter="mean")


def test_envelope_ignores_drift_it_cannot_see():
    """One exchange says nothing about drift: the estimate assumes none."""
    clock = ClockSync()
    request = clock.make_request(1.0)
    clock.reply_received(reply_to(request, SENDER_EPOCH + 1_000_150_000), 1.0003)
    assert clock.drift_ppm == 0.0


def test_envelope_keeps_the_horizon_and_rebuilds_in_bulk():
    """Old exchanges leave in bulk: once the horizon is full, a reply does not rebuild the hull.

    The oldest kept exchange is always a hull vertex, so dropping them one per reply used to
    rebuild the hull from every point on every reply (1.2 ms per reply at 600 points).
    """
    clock = ClockSync(horizon=60.0)
    times = request_times(clock, 300 + 600, True)  # 3 s fast, then 600 s at one a second
    assert times[-1] > 10 * clock.horizon
    forward = clock._forward
    kept = [t for t, _ in forward.points]
    newest = kept[-1]
    # Everything within the horizon is kept; nothing older than horizon + slack.
    assert kept[0] >= newest - clock.horizon * (1 + EXPIRY_SLACK) - 1.0
    expected_within = sum(1 for t in times if t >= newest - clock.horizon + 0.001)
    assert sum(1 for t in kept if t >= newest - clock.horizon) >= expected_within
    # ~540 s past the first expiry, trimmed every 6 s of slack: about 90 rebuilds, not 540.
    assert 0 < forward.rebuilds <= 100


def fed_clock(count: int = 400, jitter_ns: int = 0) -> tuple[ClockSync, float]:
    """A clock fed `count` clean exchanges (sender = SENDER_EPOCH + local), on its schedule."""
    clock = ClockSync()
    now = 0.0
    for k in range(count):
        request = clock.make_request(now)
        delay = 100e-6 + (k * 7919 % 11) * jitter_ns / 10e9
        clock.reply_received(
            reply_to(request, SENDER_EPOCH + round((now + delay) * 1e9), 0), now + 2 * delay
        )
        now = clock.next_request_time() or now
    return clock, now


def anchored(clock: ClockSync, now: float) -> None:
    clock.sync_received(SyncPacket(1000, ns_to_ntp(SENDER_EPOCH), rtp_add(1000, 77175)), now)


def test_forged_timing_reply_is_rejected_and_counted():
    """Issue 10, case 5: one reply with a matching origin and the sender time 30 min off."""
    clock, now = fed_clock()
    anchored(clock, now)
    before = clock.estimate()
    assert before is not None
    for shift_s in (1800.0, -1800.0, 0.010):
        request = clock.make_request(now)
        forged = SENDER_EPOCH + round((now + shift_s) * 1e9)
        clock.reply_received(reply_to(request, forged, 0), now + 0.0002)
        now += 0.5
    assert clock.stats.rejected == 3
    after = clock.estimate()
    assert after is not None
    assert after.offset_ns == before.offset_ns
    assert after.local_time(5000) == pytest.approx(before.local_time(5000), abs=1e-6)


def test_a_real_step_of_the_sender_clock_is_followed_after_eight_exchanges():
    """The sender's clock is set 5 s ahead: 7 replies are rejected, the 8th restarts the clock."""
    clock, now = fed_clock()
    anchored(clock, now)
    step_ns = 5 * 10**9
    for k in range(8):
        assert clock.stats.steps == 0
        request = clock.make_request(now)
        clock.reply_received(
            reply_to(request, SENDER_EPOCH + step_ns + round((now + 1e-4) * 1e9), 0), now + 2e-4
        )
        now += 1.0
        assert clock.stats.rejected == k + 1
    assert clock.stats.steps == 1
    # The anchor restarts with the next sync, stamped by the new clock.
    stamp = ns_to_ntp(SENDER_EPOCH + step_ns + round(now * 1e9))
    clock.sync_received(SyncPacket(1000, stamp, rtp_add(1000, 77175)), now)
    estimate = clock.estimate()
    assert estimate is not None
    assert estimate.offset_ns == pytest.approx(SENDER_EPOCH + step_ns, abs=200_000)
    assert estimate.local_time(1000) == pytest.approx(now + 11025 / 44100, abs=0.001)


def test_jittery_exchanges_are_not_outliers():
    """20 ms of jitter, drift on both ends: nothing legitimate is rejected (virtual time)."""
    result = simulate(Scenario(sender_ppm=100, dac_ppm=-100, jitter=0.02, seconds=30))
    assert result.clock.stats.rejected == 0
    assert result.clock.stats.steps == 0


def sync_at(rtp_now: int, sender_s: float, first: bool = False) -> SyncPacket:
    return SyncPacket(
        rtp_add(rtp_now, -77175), ns_to_ntp(SENDER_EPOCH + round(sender_s * 1e9)), rtp_now, first
    )


def test_anchor_ignores_late_stamps_and_follows_earlier_ones():
    clock, now = fed_clock()
    rtp0 = (1 << 32) - 44100 * 3  # across the wrap
    # Stamps 40, 90, 10, 60 ms late for frames 1 s apart: the line rests on the 10 ms one.
    for k, late in enumerate((0.040, 0.090, 0.010, 0.060)):
        clock.sync_received(sync_at(rtp_add(rtp0, 44100 * k), now + k + late), now + k + late)
    estimate = clock.estimate()
    assert estimate is not None
    due = estimate.local_time(rtp_add(rtp0, 44100 * 10 - 77175))
    assert due == pytest.approx(now + 10 + 0.010 + 11025 / 44100, abs=2e-6)
    assert clock.stats.syncs_late == 2  # 90 and 60 ms: above the line when they came
    assert clock.stats.syncs_rejected == 0
    assert clock.stats.stamp_spread_ms == pytest.approx(50, abs=1)


def test_anchor_restarts_on_a_confirmed_jump_a_first_flag_or_a_flush():
    clock, now = fed_clock()
    rtp0 = 5_000_000
    for k in range(3):
        clock.sync_received(sync_at(rtp_add(rtp0, 44100 * k), now + k), now + k)

    def due(frame: int) -> float:
        estimate = clock.estimate()
        assert estimate is not None
        return estimate.local_time(frame)

    base = due(rtp0)
    # The sender's timeline jumps 2 s (a seek without FLUSH): two syncs are not enough ...
    for k in range(3, 5):
        clock.sync_received(sync_at(rtp_add(rtp0, 44100 * k), now + k + 2.0), now + k)
    assert clock.stats.syncs_rejected == 2
    assert due(rtp0) == pytest.approx(base, abs=1e-6)
    # ... the third that agrees is.
    clock.sync_received(sync_at(rtp_add(rtp0, 44100 * 5), now + 7.0), now + 5)
    assert clock.stats.anchor_resets == 1
    assert due(rtp0) == pytest.approx(base + 2.0, abs=1e-6)
    # A sync flagged first is believed at once.
    clock.sync_received(sync_at(rtp_add(rtp0, 44100 * 6), now + 3.0, first=True), now + 6)
    assert clock.stats.anchor_resets == 2
    assert due(rtp0) == pytest.approx(base - 3.0, abs=1e-6)
    # After a FLUSH, the next sync starts a new anchor whatever it says.
    clock.flushed()
    clock.sync_received(sync_at(rtp_add(rtp0, 44100 * 7), now + 9.1), now + 7)
    assert clock.stats.anchor_resets == 3
    assert due(rtp0) == pytest.approx(base + 2.1, abs=1e-6)


def test_anchor_learns_a_sender_whose_rtp_clock_runs_off_its_ntp_clock():
    """RTP frames at 44100 * (1 - 80 ppm) per second of the sender's NTP clock, stamps exact:
    a lower envelope with no slope would rest on the oldest sync, 4.8 ms off after 60 s."""
    clock, now = fed_clock()
    rtp0 = 123_456
    ratio = 1 - 80e-6
    for k in range(61):
        frame = rtp_add(rtp0, 44100 * k)
        clock.sync_received(sync_at(frame, now + k / ratio), now + k / ratio)
    estimate = clock.estimate()
    assert estimate is not None
    newest = rtp_add(rtp0, 44100 * 60 - 77175)  # the newest sync's rtptime_at_ntp
    assert estimate.local_time(newest) == pytest.approx(now + 60 / ratio + 0.25, abs=0.1e-3)
