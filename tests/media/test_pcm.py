"""pcm: silence, unity-gain bit-exactness, bounded dither, frame stuffing."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raopd.media.pcm import apply_gain, silence, stuff


def noise(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32768, size=(frames, 2)).astype(np.int16)


def test_silence_shape_and_dtype():
    s = silence(5)
    assert s.shape == (5, 2) and s.dtype == np.int16 and not s.any()


def test_unity_gain_is_bit_exact_no_dither():
    pcm = noise(1000)
    out = apply_gain(pcm, 1.0, np.random.default_rng(1))
    assert out is pcm


def test_zero_gain_is_digital_silence():
    assert not apply_gain(noise(100), 0.0, np.random.default_rng(1)).any()


def test_dither_bounded_and_unbiased():
    pcm = noise(20000)
    gain = 10 ** (-10 / 20)
    out = apply_gain(pcm, gain, np.random.default_rng(2)).astype(np.float64)
    ideal = np.clip(pcm * gain, -32768, 32767)
    assert np.abs(out - ideal).max() <= 1.5
    assert abs((out - ideal).mean()) < 0.02


def test_dither_is_not_deterministic_rounding():
    # A constant input at -6 dB must not map to one constant value (that would be truncation).
    pcm = np.full((1000, 2), 3, dtype=np.int16)
    out = apply_gain(pcm, 0.5, np.random.default_rng(3))
    assert len(np.unique(out)) > 1


@pytest.mark.parametrize("method", ["spread", "vernier"])
@given(frames=st.integers(8, 2048), delta=st.integers(-3, 3))
def test_stuff_length(method, frames, delta):
    assert len(stuff(noise(frames), delta, method)) == frames + delta


def test_spread_touches_only_the_edited_frames():
    block = noise(1024, seed=4)
    out = stuff(block, 1)
    # Frames before the insertion point are untouched, frames after are shifted by one.
    pos = int(np.flatnonzero((out[:-1] != block).any(axis=1))[0])
    assert np.array_equal(out[:pos], block[:pos])
    assert np.array_equal(out[pos + 1 :], block[pos:])
    mean = (block[pos - 1].astype(int) + block[pos].astype(int)) // 2
    assert np.array_equal(out[pos], mean)
    dropped = stuff(block, -2)
    changed = (dropped != np.delete(block, [0, 0], axis=0)[: len(dropped)]).any(axis=1).sum()
    assert len(dropped) == 1022 and changed > 0


def test_stuff_does_not_click_on_a_sine():
    t = np.arange(1024)
    sine = (10000 * np.sin(2 * np.pi * 1000 * t / 44100)).astype(np.int16)
    block = np.stack([sine, sine], axis=1)
    step = np.abs(np.diff(block[:, 0].astype(int))).max()
    # An insertion only halves one step; a drop merges two frames, so the largest step can grow
    # to 1.5 sample periods of slope, never to a discontinuity (a bare deletion gives 2).
    inserted = stuff(block, 1)
    assert np.abs(np.diff(inserted[:, 0].astype(int))).max() <= step + 1
    dropped = stuff(block, -1)
    assert np.abs(np.diff(dropped[:, 0].astype(int))).max() <= 1.55 * step
