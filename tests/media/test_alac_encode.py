"""Tests for raopd.media.alac_encode: test-sender ALAC must round-trip bit-exactly."""

import base64

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from raopd.core.sdp import AlacConfig, Codec, StreamParams
from raopd.media.alac_encode import AlacEncoder, verbatim_alac_frame
from raopd.media.crypto import PacketCipher
from raopd.media.decoder import make_decoder

STEREO = StreamParams(codec=Codec.ALAC)
MONO = StreamParams(
    codec=Codec.ALAC, channels=1, alac=AlacConfig(352, 0, 16, 40, 10, 14, 1, 255, 0, 0, 44100)
)
NODE_AES_KEY = bytes.fromhex("14497dcc98e137a855c1455a6bc0c979")
NODE_AES_IV = base64.b64decode("ePRBLI0XN5ArFaaz7ncNZw==")

pcm_frames = hnp.arrays(
    np.int16,
    st.tuples(st.integers(1, 352), st.just(2)),
    elements=st.integers(-32768, 32767),
)


def is_escape(payload: bytes) -> bool:
    """The escape bit (bit 22): set for verbatim frames, clear for compressed ones."""
    return bool(payload[2] & 0x02)


# --- compressed ----------------------------------------------------------------------------


def test_encoder_round_trips_real_audio_and_compresses_it(test30_first4, test30_last3):
    encoder = AlacEncoder()
    decoder = make_decoder(STEREO)
    for pcm in (*np.split(test30_first4, 4), *np.split(test30_last3[:704], 2)):
        payload = encoder.encode(pcm)
        assert not is_escape(payload)
        assert len(payload) < 1408  # really compressed, not verbatim
        assert np.array_equal(decoder.decode(payload), pcm)


def test_short_final_packet_round_trips(test30_last3):
    encoder = AlacEncoder()
    decoder = make_decoder(STEREO)
    stream = [encoder.encode(test30_last3[:352]), encoder.encode(test30_last3[352:704])]
    stream.append(encoder.encode(test30_last3[704:]))  # 184 frames
    outputs = [decoder.decode(payload) for payload in stream]
    assert [len(pcm) for pcm in outputs] == [352, 352, 184]
    assert np.array_equal(np.concatenate(outputs), test30_last3)
    # A full packet after a short one is still fine: each payload stands alone.
    assert np.array_equal(decoder.decode(encoder.encode(test30_last3[:352])), test30_last3[:352])


@pytest.mark.parametrize(
    "pcm",
    [
        np.zeros((352, 2), np.int16),
        np.full((352, 2), -32768, np.int16),
        np.full((352, 2), 32767, np.int16),
        np.tile(np.array([[32767, -32768], [-32768, 32767]], np.int16), (176, 1)),
        np.zeros((1, 2), np.int16),
    ],
    ids=["silence", "min", "max", "alternating-extremes", "one-frame"],
)
def test_encoder_edge_signals(pcm):
    assert np.array_equal(make_decoder(STEREO).decode(AlacEncoder().encode(pcm)), pcm)


@settings(max_examples=150, deadline=None)
@given(pcm=pcm_frames)
def test_encoder_round_trips_anything(pcm):
    assert np.array_equal(make_decoder(STEREO).decode(AlacEncoder().encode(pcm)), pcm)


def test_mono_encoder_round_trips(test30_first4):
    pcm = np.ascontiguousarray(test30_first4[:352, :1])
    decoded = make_decoder(MONO).decode(AlacEncoder(channels=1).encode(pcm))
    # The decoder hands the output's two channels: mono on both.
    assert np.array_equal(decoded, np.repeat(pcm, 2, axis=1))


@pytest.mark.parametrize(
    "pcm",
    [
        np.zeros((353, 2), np.int16),
        np.zeros((0, 2), np.int16),
        np.zeros((352, 1), np.int16),
        np.zeros((352, 2), np.int32),
        np.zeros(704, np.int16),
    ],
)
def test_encoder_rejects_wrong_pcm(pcm):
    with pytest.raises(ValueError):
        AlacEncoder().encode(pcm)


def test_encoder_rejects_bad_settings():
    with pytest.raises(ValueError):
        AlacEncoder(channels=3)
    with pytest.raises(ValueError):
        AlacEncoder(frames_per_packet=0)


# --- verbatim ------------------------------------------------------------------------------


def test_verbatim_sizes_and_header(test30_first4):
    full = verbatim_alac_frame(test30_first4[:352])
    assert len(full) == 1412
    assert full[:2] == b"\x20\x00" and full[2] & 0xFE == 0x02  # no size, escape
    sized = verbatim_alac_frame(test30_first4[:184])
    assert len(sized) == 744  # 55 header bits + 184 * 32 sample bits + 3 end bits, padded
    # has-size, escape, then the count 184 in bits 23..54; bit 55 starts the first sample.
    assert sized[:6] == bytes.fromhex("200012000001") and sized[6] & 0xFE == 0x70


def test_verbatim_equals_node_airtunes_frames(node_first4, test30_first4):
    # node-airtunes2 always writes the sample count; asking for has-size by nominating
    # another frame length must reproduce its frames byte for byte.
    cipher = PacketCipher(NODE_AES_KEY, NODE_AES_IV)
    for index, payload in enumerate(node_first4):
        pcm = test30_first4[352 * index : 352 * (index + 1)]
        assert verbatim_alac_frame(pcm, frames_per_packet=4096) == cipher.decrypt(payload)


@settings(max_examples=200, deadline=None)
@given(pcm=pcm_frames)
def test_verbatim_round_trips(pcm):
    payload = verbatim_alac_frame(pcm)
    assert is_escape(payload)
    header_bits = 23 if len(pcm) == 352 else 55
    assert len(payload) == (header_bits + 32 * len(pcm) + 3 + 7) // 8
    assert np.array_equal(make_decoder(STEREO).decode(payload), pcm)


def test_verbatim_mono_round_trips(test30_first4):
    pcm = np.ascontiguousarray(test30_first4[:200, 1:])
    decoded = make_decoder(MONO).decode(verbatim_alac_frame(pcm))
    assert np.array_equal(decoded, np.repeat(pcm, 2, axis=1))


@pytest.mark.parametrize(
    "pcm",
    [
        np.zeros((352, 3), np.int16),
        np.zeros((0, 2), np.int16),
        np.zeros((352, 2), np.float32),
        np.zeros(352, np.int16),
    ],
)
def test_verbatim_rejects_wrong_pcm(pcm):
    with pytest.raises(ValueError):
        verbatim_alac_frame(pcm)
