"""Tests for raopd.media.decoder: real ALAC from two senders, short packets, L16, garbage."""

import base64

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raopd.core.sdp import AlacConfig, Codec, StreamParams
from raopd.errors import ProtocolError
from raopd.media.crypto import PacketCipher
from raopd.media.decoder import (
    AlacDecoder,
    L16Decoder,
    alac_cookie,
    default_alac_config,
    make_decoder,
)

STANDARD = AlacConfig(
    frame_length=352,
    compatible_version=0,
    bit_depth=16,
    pb=40,
    mb=10,
    kb=14,
    channels=2,
    max_run=255,
    max_frame_bytes=0,
    avg_bit_rate=0,
    sample_rate=44100,
)
ALAC_PARAMS = StreamParams(codec=Codec.ALAC, alac=STANDARD)
L16_PARAMS = StreamParams(codec=Codec.L16)

# The node-airtunes2 session's AES key (its rsaaeskey unwrapped, see test_crypto.py) and IV.
NODE_AES_KEY = bytes.fromhex("14497dcc98e137a855c1455a6bc0c979")
NODE_AES_IV = base64.b64decode("ePRBLI0XN5ArFaaz7ncNZw==")


def assert_pcm(pcm: np.ndarray, frames: int, channels: int = 2) -> None:
    assert pcm.dtype == np.int16
    assert pcm.dtype.byteorder in ("=", "|") or pcm.dtype.isnative
    assert pcm.shape == (frames, channels)
    assert pcm.flags.c_contiguous
    assert pcm.flags.owndata or pcm.base is not None  # a real array, not a view of FFmpeg's


class BitWriter:
    """MSB-first bit packer, written independently of raopd's verbatim frame builder."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, width: int) -> None:
        self.bits.extend((value >> (width - 1 - i)) & 1 for i in range(width))

    def to_bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def hand_made_verbatim(pcm: np.ndarray, has_size: bool) -> bytes:
    writer = BitWriter()
    writer.put(1, 3)  # channel pair element
    writer.put(0, 4)  # instance tag
    writer.put(0, 12)  # unused
    writer.put(int(has_size), 1)
    writer.put(0, 2)  # bytes shifted
    writer.put(1, 1)  # escape: verbatim samples
    if has_size:
        writer.put(len(pcm), 32)
    for left, right in pcm.tolist():
        writer.put(left & 0xFFFF, 16)
        writer.put(right & 0xFFFF, 16)
    writer.put(7, 3)  # ID_END
    return writer.to_bytes()


# --- the cookie ----------------------------------------------------------------------------


def test_t8_cookie_vector():
    assert alac_cookie(STANDARD) == bytes.fromhex(
        "00000024616c616300000000000001600010280a0e0200ff00000000000000000000ac44"
    )
    assert len(alac_cookie(STANDARD)) == 36


def test_default_config_is_the_apple_fmtp():
    assert default_alac_config(StreamParams(codec=Codec.ALAC)) == STANDARD


def test_cookie_field_out_of_range_is_456():
    with pytest.raises(ProtocolError) as info:
        alac_cookie(AlacConfig(352, 0, 16, 40, 10, 14, 2, 65536, 0, 0, 44100))
    assert info.value.status_hint == 456


# --- make_decoder --------------------------------------------------------------------------


def test_make_decoder_picks_by_codec():
    assert isinstance(make_decoder(ALAC_PARAMS), AlacDecoder)
    assert isinstance(make_decoder(StreamParams(codec=Codec.ALAC)), AlacDecoder)
    assert isinstance(make_decoder(L16_PARAMS), L16Decoder)
    assert make_decoder(ALAC_PARAMS).channels == 2
    assert make_decoder(StreamParams(codec=Codec.L16, channels=1)).channels == 1


@pytest.mark.parametrize(
    "params",
    [
        StreamParams(
            codec=Codec.ALAC, alac=AlacConfig(352, 0, 24, 40, 10, 14, 2, 255, 0, 0, 44100)
        ),
        StreamParams(
            codec=Codec.ALAC, alac=AlacConfig(352, 0, 16, 40, 10, 14, 0, 255, 0, 0, 44100)
        ),
        StreamParams(codec=Codec.ALAC, alac=AlacConfig(0, 0, 16, 40, 10, 14, 2, 255, 0, 0, 44100)),
        StreamParams(codec=Codec.ALAC, alac=AlacConfig(-1, 0, 16, 40, 10, 14, 2, 255, 0, 0, 44100)),
        StreamParams(codec=Codec.L16, bits=24),
        StreamParams(codec=Codec.L16, channels=0),
    ],
)
def test_unsupported_stream_is_456(params):
    with pytest.raises(ProtocolError) as info:
        make_decoder(params)
    assert info.value.status_hint == 456


# --- real ALAC -----------------------------------------------------------------------------


def test_compressed_alac_from_cliraop_is_bit_exact(cliraop_first4, test30_first4):
    decoder = make_decoder(ALAC_PARAMS)
    outputs = [decoder.decode(payload) for payload in cliraop_first4]
    for pcm in outputs:
        assert_pcm(pcm, 352)
    assert np.array_equal(np.concatenate(outputs), test30_first4)


def test_short_last_packet_gives_only_its_own_frames(cliraop_last3, test30_last3):
    decoder = make_decoder(ALAC_PARAMS)
    outputs = [decoder.decode(payload) for payload in cliraop_last3]
    assert [len(pcm) for pcm in outputs] == [352, 352, 184]
    assert_pcm(outputs[-1], 184)
    assert np.array_equal(np.concatenate(outputs), test30_last3)


def test_verbatim_alac_from_node_is_bit_exact(node_first4, test30_first4):
    cipher = PacketCipher(NODE_AES_KEY, NODE_AES_IV)
    decoder = make_decoder(ALAC_PARAMS)
    outputs = [decoder.decode(cipher.decrypt(payload)) for payload in node_first4]
    for pcm in outputs:
        assert_pcm(pcm, 352)
    assert np.array_equal(np.concatenate(outputs), test30_first4)


def test_hand_made_short_verbatim_frame_after_a_full_packet(cliraop_first4, test30_first4):
    decoder = make_decoder(ALAC_PARAMS)
    full = decoder.decode(cliraop_first4[0])
    kept = full.copy()
    short_pcm = test30_first4[352 : 352 + 184][::-1].copy()  # differs from what came before
    payload = hand_made_verbatim(short_pcm, has_size=True)
    assert payload[:3] == bytes([0x20, 0x00, 0x12])
    short = decoder.decode(payload)
    assert_pcm(short, 184)
    assert np.array_equal(short, short_pcm)
    # The earlier result is the caller's: decoding more never rewrites it.
    assert np.array_equal(full, kept)
    # ...and a full packet after the short one is whole again.
    assert np.array_equal(decoder.decode(cliraop_first4[1]), test30_first4[352:704])


def test_hand_made_full_verbatim_frame_without_size(test30_first4):
    payload = hand_made_verbatim(test30_first4[:352], has_size=False)
    assert len(payload) == 1412
    # 23 header bits; the last bit of byte 2 is already the first sample's sign.
    assert payload[:2] == bytes([0x20, 0x00]) and payload[2] & 0xFE == 0x02
    assert np.array_equal(make_decoder(ALAC_PARAMS).decode(payload), test30_first4[:352])


def test_sample_count_above_frame_length_is_rejected(test30_first4):
    pcm = np.concatenate([test30_first4, test30_first4])[:353]
    with pytest.raises(ProtocolError):
        make_decoder(ALAC_PARAMS).decode(hand_made_verbatim(pcm, has_size=True))


def test_stereo_frame_on_a_mono_stream_is_rejected(cliraop_first4):
    mono = StreamParams(
        codec=Codec.ALAC, channels=1, alac=AlacConfig(352, 0, 16, 40, 10, 14, 1, 255, 0, 0, 44100)
    )
    with pytest.raises(ProtocolError):
        make_decoder(mono).decode(cliraop_first4[0])


def test_empty_alac_payload_is_rejected_and_decoder_survives(cliraop_first4, test30_first4):
    decoder = make_decoder(ALAC_PARAMS)
    with pytest.raises(ProtocolError):
        decoder.decode(b"")
    assert np.array_equal(decoder.decode(cliraop_first4[0]), test30_first4[:352])


def test_every_truncation_of_real_frames_is_an_error_or_only_lost_its_end(
    cliraop_first4, cliraop_last3, test30_first4
):
    decoder = make_decoder(ALAC_PARAMS)
    repaired = 0
    for payload in [*cliraop_first4, *cliraop_last3]:
        whole = decoder.decode(payload)
        for size in range(len(payload)):
            try:
                pcm = decoder.decode(payload[:size])
            except ProtocolError:
                continue
            # Cutting only the END element and padding leaves a frame that real senders
            # send (END missing): it must decode to exactly the same audio.
            assert size == len(payload) - 1
            assert np.array_equal(pcm, whole)
            repaired += 1
    assert repaired >= 1
    # Errors leave no state behind.
    assert np.array_equal(decoder.decode(cliraop_first4[0]), test30_first4[:352])


_GARBAGE_DECODER = make_decoder(ALAC_PARAMS)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(min_size=0, max_size=1600))
def test_random_bytes_never_escape_as_anything_but_protocol_error(payload):
    try:
        pcm = _GARBAGE_DECODER.decode(payload)
    except ProtocolError:
        return
    # Random bytes can form a valid frame; then it must still honour the contract.
    assert pcm.dtype == np.int16 and pcm.flags.c_contiguous
    assert pcm.shape[1] == 2 and 1 <= pcm.shape[0] <= 352


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_bit_flipped_real_frames_never_escape(data, cliraop_first4):
    payload = bytearray(data.draw(st.sampled_from(cliraop_first4)))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(payload) * 8 - 1))
        payload[position // 8] ^= 0x80 >> (position % 8)
    try:
        pcm = _GARBAGE_DECODER.decode(bytes(payload))
    except ProtocolError:
        return
    assert pcm.dtype == np.int16 and pcm.flags.c_contiguous
    assert pcm.shape[1] == 2 and 1 <= pcm.shape[0] <= 352


def test_decoder_is_intact_after_garbage(cliraop_first4, test30_first4):
    assert np.array_equal(_GARBAGE_DECODER.decode(cliraop_first4[2]), test30_first4[704:1056])


# --- L16 -----------------------------------------------------------------------------------


def test_l16_big_endian_to_native():
    payload = bytes.fromhex("0001 8000 7fff ffff".replace(" ", ""))
    pcm = make_decoder(L16_PARAMS).decode(payload)
    assert_pcm(pcm, 2)
    assert pcm.tolist() == [[1, -32768], [32767, -1]]
    assert pcm.tobytes() == bytes.fromhex("0100 0080 ff7f ffff".replace(" ", ""))


def test_l16_full_packet(test30_first4):
    pcm = make_decoder(L16_PARAMS).decode(test30_first4[:352].astype(">i2").tobytes())
    assert_pcm(pcm, 352)
    assert np.array_equal(pcm, test30_first4[:352])


def test_l16_mono_is_duplicated_to_both_output_channels():
    # Issue 10: mono L16 was written as half-length garbled stereo.
    pcm = make_decoder(StreamParams(codec=Codec.L16, channels=1)).decode(b"\x00\x02\xff\xfe")
    assert_pcm(pcm, 2)
    assert pcm.tolist() == [[2, 2], [-2, -2]]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 1407, 1409])
def test_l16_partial_frames_are_rejected(size):
    with pytest.raises(ProtocolError):
        make_decoder(L16_PARAMS).decode(bytes(size))


def test_l16_result_does_not_alias_the_payload():
    payload = bytearray(b"\x00\x01\x00\x02")
    pcm = make_decoder(L16_PARAMS).decode(bytes(payload))
    pcm[0, 0] = 99
    assert payload == bytearray(b"\x00\x01\x00\x02")
    assert pcm.flags.writeable


@given(
    frames=st.lists(
        st.tuples(st.integers(-32768, 32767), st.integers(-32768, 32767)), min_size=1, max_size=400
    )
)
def test_l16_round_trip(frames):
    expected = np.array(frames, dtype=np.int16)
    pcm = make_decoder(L16_PARAMS).decode(expected.astype(">i2").tobytes())
    assert_pcm(pcm, len(frames))
    assert np.array_equal(pcm, expected)
