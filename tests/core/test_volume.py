"""volume: AirPlay slider -> dB -> gain, both curves, cap, ignore, mute."""

import math

import pytest

from raopd.core.volume import airplay_to_db, db_to_gain, volume_to_gain


def test_top_is_exact_unity():
    assert volume_to_gain(0.0) == 1.0
    assert volume_to_gain(0.0, "flat") == 1.0


def test_mute_is_silence():
    assert airplay_to_db(-144.0) == -math.inf
    assert volume_to_gain(-144.0) == 0.0


def test_half_slider():
    assert airplay_to_db(-15.0, "tapered") == pytest.approx(-10.0)
    assert airplay_to_db(-15.0, "flat") == pytest.approx(-30.0)
    assert airplay_to_db(-15.0, "flat", range_db=96.0) == pytest.approx(-48.0)
    assert volume_to_gain(-15.0) == pytest.approx(10 ** (-10 / 20))


def test_tapered_halving_lowers_10_db_and_floors_at_range():
    assert airplay_to_db(-22.5) == pytest.approx(-20.0)  # quarter slider
    assert airplay_to_db(-30.0) == -60.0
    assert airplay_to_db(-29.99) == -60.0


def test_max_volume_shifts_the_curve_and_ignore_pins_it():
    assert airplay_to_db(0.0, max_volume_db=-6.0) == -6.0
    assert airplay_to_db(-15.0, max_volume_db=-6.0) == pytest.approx(-16.0)
    assert airplay_to_db(-144.0, ignore_volume=True) == 0.0
    assert volume_to_gain(-20.0, ignore_volume=True) == 1.0


def test_out_of_range_values_are_clamped():
    assert airplay_to_db(5.0) == 0.0
    assert airplay_to_db(-50.0) == -60.0
    assert db_to_gain(-6.0) == pytest.approx(0.501, abs=1e-3)
