"""Wraparound arithmetic at its edges and as properties."""

from hypothesis import given
from hypothesis import strategies as st

from raopd.core.seq import rtp_add, rtp_diff, rtp_gt, seq_add, seq_diff, seq_gt

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def test_sequence_edges():
    assert seq_add(65535, 1) == 0
    assert seq_add(0, -1) == 65535
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(32768, 0) == -32768  # exactly half way counts as behind
    assert seq_diff(32767, 0) == 32767
    assert seq_gt(1, 65535) and not seq_gt(65535, 1)


def test_rtp_edges():
    assert rtp_add(0xFFFFFFFF, 352) == 351
    assert rtp_diff(351, 0xFFFFFFFF) == 352
    assert rtp_diff(0, 1 << 31) == -(1 << 31)
    assert rtp_gt(5, 0xFFFFFF00)


@given(u16, st.integers(-32768, 32767))
def test_seq_diff_undoes_seq_add(a, n):
    assert seq_diff(seq_add(a, n), a) == n


@given(u16, u16)
def test_seq_diff_is_antisymmetric_except_half_way(a, b):
    d = seq_diff(a, b)
    assert -32768 <= d <= 32767
    if d != -32768:
        assert seq_diff(b, a) == -d


@given(u32, st.integers(-(1 << 31), (1 << 31) - 1))
def test_rtp_diff_undoes_rtp_add(a, n):
    assert rtp_diff(rtp_add(a, n), a) == n


@given(u32, u32)
def test_rtp_order_is_consistent(a, b):
    assert not (rtp_gt(a, b) and rtp_gt(b, a))
    assert rtp_gt(a, b) == (rtp_diff(a, b) > 0)
