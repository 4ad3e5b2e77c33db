"""NTP fixed point conversions: exact ns round trips, era folding, signed differences."""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from raopd.core.ntp import (
    NTP_EPOCH_OFFSET,
    NTP_ERA_NS,
    NTP_MODULUS,
    ns_to_ntp,
    ntp_diff_ns,
    ntp_to_ns,
    ntp_to_seconds,
    seconds_to_ntp,
)

NTP64 = st.integers(min_value=0, max_value=NTP_MODULUS - 1)
FAST = settings(max_examples=300, deadline=None)


def test_epoch_offset_constant():
    assert NTP_EPOCH_OFFSET == 2208988800 == 0x83AA7E80


def test_known_values():
    assert ntp_to_seconds(1 << 32) == 1.0
    assert ntp_to_seconds((5 << 32) | (1 << 31)) == 5.5
    assert seconds_to_ntp(5.5) == (5 << 32) | (1 << 31)
    assert ntp_to_ns(1 << 32) == 1_000_000_000
    assert ns_to_ntp(1_000_000_000) == 1 << 32
    # The Unix epoch in NTP.
    assert ns_to_ntp(NTP_EPOCH_OFFSET * 1_000_000_000) == NTP_EPOCH_OFFSET << 32


def test_t6_remote_processing_time():
    # protocol.md T6: reply receive/transmit stamps 0.019 ms apart.
    receive, transmit = 0x83C117CCB012CEB6, 0x83C117CCB0141047
    assert ntp_diff_ns(transmit, receive) == 19167
    assert ntp_diff_ns(receive, transmit) == -19167


@FAST
@given(st.integers(min_value=0, max_value=NTP_ERA_NS - 1))
def test_ns_ntp_ns_is_exact_inside_an_era(ns):
    assert ntp_to_ns(ns_to_ntp(ns)) == ns


@FAST
@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_ns_round_trip_folds_into_the_era(ns):
    # Outside the era (negative, or past 2**32 s) conversions work modulo the era.
    assert ntp_to_ns(ns_to_ntp(ns)) == ns % NTP_ERA_NS


@FAST
@given(NTP64)
def test_ntp_ns_ntp_within_one_ns(ntp):
    back = ns_to_ntp(ntp_to_ns(ntp))
    # One ns is 4.29 NTP units; compare modulo 2**64 for the top of the era.
    assert abs(ntp_diff_ns(back, ntp)) <= 1


@FAST
@given(NTP64)
def test_ntp_to_seconds_and_back_within_float_resolution(ntp):
    s = ntp_to_seconds(ntp)
    assert 0.0 <= s <= 2.0**32
    back = seconds_to_ntp(s)
    # A double holds 53 bits: near 2**32 s that is 2**-20 s, i.e. 2**12 NTP units.
    assert abs(((back - ntp + NTP_MODULUS // 2) % NTP_MODULUS) - NTP_MODULUS // 2) <= 1 << 12


@FAST
@given(st.floats(min_value=0, max_value=86400 * 365, allow_nan=False))
def test_seconds_within_one_ns_for_a_year(s):
    # Clocks a sender realistically reports: within a year of their epoch, 1 ns holds.
    assert abs(ntp_to_ns(seconds_to_ntp(s)) - s * 1e9) <= 1 + s * 1e9 * 2**-52


def test_era_boundary():
    last = NTP_MODULUS - 1
    assert ntp_to_ns(last) == 0  # rounds up to the next era's start, folded
    assert ns_to_ntp(NTP_ERA_NS) == 0
    assert ns_to_ntp(-1) == NTP_MODULUS - 4  # 1 ns before the era start (4.29 units)
    assert seconds_to_ntp(-1.0) == NTP_MODULUS - (1 << 32)
    # A difference across the wrap is small and signed.
    assert ntp_diff_ns(0, last) == 0  # 0.23 ns rounds to 0
    assert ntp_diff_ns(1 << 32, NTP_MODULUS - (1 << 32)) == 2_000_000_000
    assert ntp_diff_ns(NTP_MODULUS - (1 << 32), 1 << 32) == -2_000_000_000


@FAST
@given(NTP64, NTP64)
def test_diff_is_antisymmetric(a, b):
    # Exactly half an era apart is ambiguous (both directions read as -2**31 s), as with seq_diff.
    assume((a - b) % NTP_MODULUS != NTP_MODULUS >> 1)
    assert ntp_diff_ns(a, b) == -ntp_diff_ns(b, a)


@FAST
@given(NTP64, st.integers(min_value=-(2**31) * 10**9 + 1, max_value=2**31 * 10**9 - 1))
def test_diff_recovers_offsets_up_to_half_an_era(a, delta_ns):
    # ns_to_ntp folds negatives, so b is a shifted by delta_ns modulo the era.
    b = (a + ns_to_ntp(delta_ns)) % NTP_MODULUS
    assert abs(ntp_diff_ns(b, a) - delta_ns) <= 1


@pytest.mark.parametrize("bad", [-1, NTP_MODULUS])
def test_out_of_range_ntp_is_a_programming_error(bad):
    with pytest.raises(ValueError, match="64-bit"):
        ntp_to_ns(bad)
    with pytest.raises(ValueError, match="64-bit"):
        ntp_to_seconds(bad)
