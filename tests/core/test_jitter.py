"""JitterBuffer: ordering, duplicates, loss accounting and resend scheduling."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.jitter import Insert, JitterBuffer, JitterSettings, Lost
from raopd.core.seq import rtp_add, seq_add

FRAMES = 352


@dataclass(frozen=True)
class Pkt:
    seq: int
    rtptime: int


def stream(start_seq: int, start_rtp: int, n: int) -> list[Pkt]:
    return [Pkt(seq_add(start_seq, i), rtp_add(start_rtp, i * FRAMES)) for i in range(n)]


def test_in_order_packets_are_released_at_once():
    jb: JitterBuffer[Pkt] = JitterBuffer()
    for p in stream(65530, 0, 10):
        assert jb.insert(p, now=0.0) is Insert.NEW
        assert jb.pop_ready(0.0) == [p]
    assert jb.next_deadline() is None


def test_gap_waits_for_repair_then_releases_in_order():
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(repair_window=1.0))
    pkts = stream(100, 5000, 5)
    for p in (pkts[0], pkts[1], pkts[3], pkts[4]):
        jb.insert(p, now=0.0)
    assert jb.pop_ready(0.0) == pkts[:2]
    assert jb.resend_requests(0.05) == []  # too early: reordering may still heal it
    assert jb.resend_requests(0.1) == [(102, 1)]
    assert jb.resend_requests(0.2) == []
    assert jb.resend_requests(0.35) == [(102, 1)]
    assert jb.insert(pkts[2], now=0.4) is Insert.NEW
    assert jb.pop_ready(0.4) == pkts[2:]
    assert jb.stats.lost == 0


def test_unrepaired_gap_becomes_one_loss_with_its_extent():
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(repair_window=1.0))
    pkts = stream(10, 0, 6)
    for p in (pkts[0], pkts[4], pkts[5]):
        jb.insert(p, now=0.0)
    assert jb.pop_ready(0.0) == [pkts[0]]
    assert jb.next_deadline() == 0.1
    assert jb.pop_ready(0.99) == []
    assert jb.pop_ready(1.0) == [Lost(11, 3, pkts[4].rtptime), pkts[4], pkts[5]]
    assert jb.stats.lost == 3
    assert jb.insert(pkts[2], now=1.1) is Insert.LATE
    assert jb.insert(pkts[4], now=1.1) is Insert.DUPLICATE


def test_no_resend_requests_when_disabled_but_losses_still_released():
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(resend=False, repair_window=0.5))
    pkts = stream(0, 0, 3)
    jb.insert(pkts[0], 0.0)
    jb.insert(pkts[2], 0.0)
    assert jb.resend_requests(0.3) == []
    assert jb.next_deadline() == 0.5
    assert jb.pop_ready(0.5) == [pkts[0], Lost(1, 1, pkts[2].rtptime), pkts[2]]


def test_requests_stop_before_the_gap_is_given_up():
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(repair_window=0.5))
    pkts = stream(0, 0, 3)
    jb.insert(pkts[0], 0.0)
    jb.insert(pkts[2], 0.0)
    assert jb.resend_requests(0.1) == [(1, 1)]
    assert jb.resend_requests(0.35) == [(1, 1)]
    assert jb.resend_requests(0.45) == []  # 0.1 s before give-up: a resend could not arrive
    assert jb.resend_requests(0.6) == []


def test_contiguous_missing_packets_are_asked_for_in_one_request():
    jb: JitterBuffer[Pkt] = JitterBuffer()
    pkts = stream(65533, 0, 8)
    jb.insert(pkts[0], 0.0)
    jb.insert(pkts[7], 0.0)
    assert jb.resend_requests(0.1) == [(65534, 6)]


def test_start_hint_makes_lost_first_packets_a_gap():
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(repair_window=0.2))
    jb.reset(start_seq=500)
    pkts = stream(500, 0, 4)
    jb.insert(pkts[2], 0.0)
    jb.insert(pkts[3], 0.0)
    assert jb.pop_ready(0.0) == []
    assert jb.pop_ready(0.2) == [Lost(500, 2, pkts[2].rtptime), pkts[2], pkts[3]]


def test_jump_beyond_capacity_restarts_once_a_second_packet_confirms_it():
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(capacity=64))
    jb.insert(Pkt(0, 0), 0.0)
    jb.pop_ready(0.0)
    far, after = Pkt(1000, 352000), Pkt(1001, 352352)
    assert jb.insert(far, 0.0) is Insert.STRAY
    assert jb.pop_ready(0.0) == []
    assert jb.insert(after, 0.0) is Insert.RESTART
    # The jump is marked as a run the caller may fill, then the new stream plays.
    assert jb.pop_ready(0.0) == [Lost(1, 999, 352000), far, after]
    assert jb.stats.restarts == 1 and jb.stats.stray == 0 and jb.stats.lost == 0


def test_restart_releases_what_is_buffered_instead_of_discarding_it():
    # Issue 10: a jump discarded up to capacity - 1 buffered packets without counting them.
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(capacity=64, repair_window=10.0))
    pkts = stream(0, 0, 40)
    for p in pkts[:1] + pkts[2:]:
        jb.insert(p, 0.0)
    assert jb.pop_ready(0.0) == pkts[:1]  # stalled at the gap at seq 1
    far = stream(5000, 10_000_000, 2)
    assert jb.insert(far[0], 0.1) is Insert.STRAY
    assert jb.insert(far[1], 0.1) is Insert.RESTART
    out = jb.pop_ready(0.1)
    assert out == [Lost(1, 1, pkts[2].rtptime), *pkts[2:], Lost(40, 4960, far[0].rtptime), *far]
    assert jb.stats.lost == 1  # the real gap; the jump is not a loss


def test_a_single_stray_packet_is_dropped_and_counted_not_a_restart():
    # Issue 10: one forged packet (seq + 5000) wiped 26.5 s.
    jb: JitterBuffer[Pkt] = JitterBuffer()
    pkts = stream(100, 0, 200)
    out = []
    for i, p in enumerate(pkts):
        if i == 50:
            assert jb.insert(Pkt(5100, 123), 0.0) is Insert.STRAY
        assert jb.insert(p, 0.0) is Insert.NEW
        out += jb.pop_ready(0.0)
    assert out == pkts
    assert jb.stats.stray == 1 and jb.stats.restarts == 0


def test_overfull_buffer_gives_up_the_gap_not_the_audio():
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(capacity=64, repair_window=100.0))
    pkts = stream(0, 0, 300)
    out = []
    for p in pkts[:1] + pkts[2:]:
        assert jb.insert(p, 0.0) is Insert.NEW
        out += jb.pop_ready(0.0)
    assert out == [pkts[0], Lost(1, 1, pkts[2].rtptime), *pkts[2:]]
    assert jb.stats.overfull == 1 and jb.stats.lost == 1 and jb.stats.restarts == 0


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 65535),
    n=st.integers(1, 120),
    data=st.data(),
)
def test_any_permutation_duplication_and_loss(start, n, data):
    """Output is in order, each packet once, and losses cover exactly what never arrived."""
    pkts = stream(start, 12345, n)
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    keep[0] = True  # the stream's start is known only from its first packet here
    arrivals = [p for p, k in zip(pkts, keep, strict=True) if k]
    dups = data.draw(st.lists(st.sampled_from(arrivals), max_size=20))
    order = data.draw(st.permutations(arrivals + dups))
    # Put the first packet first: a packet before it would be a new stream start.
    order.remove(pkts[0])
    order.insert(0, pkts[0])
    jb: JitterBuffer[Pkt] = JitterBuffer(JitterSettings(repair_window=10.0))
    out: list[Pkt | Lost] = []
    for i, p in enumerate(order):
        jb.insert(p, now=i * 0.001)
        out += jb.pop_ready(now=i * 0.001)
    out += jb.drain()
    released = [x for x in out if isinstance(x, Pkt)]
    assert released == arrivals[: len(released)]
    # Every arrived packet comes out once; trailing missing packets are never seen as missing.
    assert released == arrivals
    lost = [x for x in out if isinstance(x, Lost)]
    expected_lost = sum(1 for i, k in enumerate(keep) if not k and any(keep[i + 1 :]))
    assert sum(x.count for x in lost) == expected_lost == jb.stats.lost
    for x in lost:
        nxt = out[out.index(x) + 1]
        assert isinstance(nxt, Pkt)
        assert x.until_rtptime == nxt.rtptime and seq_add(x.first_seq, x.count) == nxt.seq
    assert jb.stats.duplicates == len(dups)
