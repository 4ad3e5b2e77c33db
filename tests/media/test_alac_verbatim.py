"""Tests for raopd.media.alac_verbatim: native verbatim ALAC against FFmpeg's decoder.

Frames are built here bit by bit (independently of raopd's own frame writer), in every shape
the format allows for 1 and 2 channels: one pair element or two single elements, with or
without a sample count, any instance tag and unused bits, with or without the END element,
with trailing zero padding. Where FFmpeg accepts a frame (END present) the native decoder
must agree with it sample for sample; without END, it must give what FFmpeg gives once END
is supplied.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.sdp import AlacConfig, Codec, StreamParams
from raopd.errors import ProtocolError
from raopd.media.alac_verbatim import (
    AlacFrameError,
    FrameFault,
    read_verbatim,
    starts_compressed,
)
from raopd.media.decoder import DecodeError, alac_cookie, make_decoder


class Bits:
    """MSB-first bit packer."""

    def __init__(self) -> None:
        self.value = 0
        self.width = 0

    def put(self, value: int, width: int) -> None:
        self.value = (self.value << width) | (value & ((1 << width) - 1))
        self.width += width

    def to_bytes(self, extra_zero_bytes: int = 0) -> bytes:
        pad = -self.width % 8
        return (self.value << pad).to_bytes((self.width + pad) // 8, "big") + bytes(
            extra_zero_bytes
        )


def config(channels: int, frame_length: int = 352) -> AlacConfig:
    return AlacConfig(frame_length, 0, 16, 40, 10, 14, channels, 255, 0, 0, 44100)


def build_frame(
    pcm: np.ndarray,
    *,
    pair: bool,
    has_size: bool,
    end: bool,
    tag: int = 0,
    unused: int = 0,
    extra_zero_bytes: int = 0,
) -> bytes:
    """A verbatim frame of `pcm` (frames, channels); two single elements unless `pair`."""
    frames, channels = pcm.shape
    groups = [list(range(channels))] if pair or channels == 1 else [[c] for c in range(channels)]
    bits = Bits()
    for group in groups:
        bits.put(1 if len(group) == 2 else 0, 3)
        bits.put(tag, 4)
        bits.put(unused, 12)
        bits.put(int(has_size), 1)
        bits.put(0, 2)
        bits.put(1, 1)
        if has_size:
            bits.put(frames, 32)
        for row in pcm[:, group].tolist():
            for sample in row:
                bits.put(sample, 16)
    if end:
        bits.put(7, 3)
    return bits.to_bytes(extra_zero_bytes)


def ffmpeg_decode(payload: bytes, alac: AlacConfig) -> np.ndarray:
    """FFmpeg's own answer (planar s16, interleaved here), with no raopd code in between."""
    context = av.CodecContext.create("alac", "r")
    context.extradata = alac_cookie(alac)
    context.open()
    (frame,) = context.decode(av.Packet(payload))
    return np.ascontiguousarray(frame.to_ndarray().T)


frame_shapes = st.fixed_dictionaries(
    {
        "channels": st.sampled_from([1, 2]),
        "frame_length": st.sampled_from([352, 353, 4096, 1]),
        "pair": st.booleans(),
        "sized": st.booleans(),
        "tag": st.integers(0, 15),
        "unused": st.integers(0, 4095),
        "extra": st.integers(0, 3),
    }
)


@settings(max_examples=300, deadline=None)
@given(shape=frame_shapes, data=st.data())
def test_native_matches_ffmpeg_with_and_without_end(shape, data):
    channels, frame_length = shape["channels"], shape["frame_length"]
    frames = data.draw(st.integers(1, frame_length)) if shape["sized"] else frame_length
    size = frames * channels * 2
    raw = data.draw(st.binary(min_size=size, max_size=size))
    pcm = np.frombuffer(raw, "<i2").astype(np.int16).reshape(frames, channels)
    kwargs = {
        "pair": shape["pair"],
        "has_size": shape["sized"],
        "tag": shape["tag"],
        "unused": shape["unused"],
    }
    alac = config(channels, frame_length)
    with_end = build_frame(pcm, end=True, **kwargs)
    reference = ffmpeg_decode(with_end, alac)
    assert np.array_equal(reference, pcm)  # the frame builder is right
    for payload in (
        with_end,
        build_frame(pcm, end=True, extra_zero_bytes=shape["extra"], **kwargs),
        build_frame(pcm, end=False, extra_zero_bytes=shape["extra"], **kwargs),
    ):
        native = read_verbatim(payload, channels, frame_length)
        assert native is not None
        assert native.dtype == np.int16 and native.flags.c_contiguous
        assert np.array_equal(native, reference)


def test_pipewire_shaped_frame_is_1415_bytes_and_decodes(test30_first4):
    # PipeWire 0.3.65 and PulseAudio 16: a sized pair element, no END: 23 + 32 + 352*32 bits.
    pcm = test30_first4[:352]
    payload = build_frame(pcm, pair=True, has_size=True, end=False)
    assert len(payload) == 1415
    decoded = make_decoder(StreamParams(codec=Codec.ALAC, alac=config(2))).decode(payload)
    assert np.array_equal(decoded, pcm)
    # FFmpeg alone refuses exactly this frame: the reason this module exists.
    with pytest.raises(av.error.InvalidDataError):
        ffmpeg_decode(payload, config(2))


def test_sample_count_in_the_header_wins_over_payload_length(test30_first4):
    pcm = test30_first4[:100]
    payload = build_frame(pcm, pair=True, has_size=True, end=False, extra_zero_bytes=40)
    decoded = read_verbatim(payload, 2, 352)
    assert decoded is not None and decoded.shape == (100, 2)
    assert np.array_equal(decoded, pcm)


def test_unsized_frame_has_the_fmtp_frame_length(test30_first4):
    pcm = test30_first4[:352]
    payload = build_frame(pcm, pair=True, has_size=False, end=False)
    assert len(payload) == 1411
    decoded = read_verbatim(payload, 2, 352)
    assert decoded is not None and np.array_equal(decoded, pcm)


def test_mono_stream_is_duplicated_to_two_channels(test30_first4):
    pcm = np.ascontiguousarray(test30_first4[:352, :1])
    payload = build_frame(pcm, pair=False, has_size=True, end=False)
    decoded = make_decoder(StreamParams(codec=Codec.ALAC, channels=1, alac=config(1))).decode(
        payload
    )
    assert decoded.shape == (352, 2)
    assert np.array_equal(decoded, np.repeat(pcm, 2, axis=1))


def test_all_zero_payload_is_refused_with_its_own_reason():
    decoder = make_decoder(StreamParams(codec=Codec.ALAC, alac=config(2)))
    with pytest.raises(DecodeError) as caught:
        decoder.decode(bytes(1415))
    assert caught.value.fault is FrameFault.ALL_ZERO


@pytest.mark.parametrize(
    ("cut", "fault"),
    [(1, FrameFault.TRUNCATED), (700, FrameFault.TRUNCATED), (1413, FrameFault.TRUNCATED)],
)
def test_truncated_samples_are_refused(test30_first4, cut, fault):
    payload = build_frame(test30_first4[:352], pair=True, has_size=True, end=False)
    with pytest.raises(AlacFrameError) as caught:
        read_verbatim(payload[: len(payload) - cut], 2, 352)
    assert caught.value.fault is fault


def test_count_over_the_frame_length_is_refused(test30_first4):
    payload = build_frame(test30_first4[:353], pair=True, has_size=True, end=True)
    with pytest.raises(AlacFrameError) as caught:
        read_verbatim(payload, 2, 352)
    assert caught.value.fault is FrameFault.BAD_SIZE


def test_data_after_the_last_channel_is_refused(test30_first4):
    payload = bytearray(build_frame(test30_first4[:352], pair=True, has_size=True, end=False))
    payload += b"\x01"
    with pytest.raises(AlacFrameError) as caught:
        read_verbatim(bytes(payload), 2, 352)
    assert caught.value.fault is FrameFault.EXTRA_DATA


def test_a_pair_element_on_a_mono_stream_is_refused(test30_first4):
    payload = build_frame(test30_first4[:352], pair=True, has_size=True, end=True)
    with pytest.raises(AlacFrameError) as caught:
        read_verbatim(payload, 1, 352)
    assert caught.value.fault is FrameFault.BAD_HEADER


def test_compressed_frames_are_left_to_ffmpeg(cliraop_first4):
    assert read_verbatim(cliraop_first4[0], 2, 352) is None
    assert starts_compressed(cliraop_first4[0], 2)


@settings(max_examples=2000, deadline=None)
@given(
    payload=st.one_of(
        st.binary(max_size=24),
        st.integers(0, 24).map(bytes),  # all zero: PulseAudio's PCM mode
        st.tuples(st.integers(0, 255), st.binary(max_size=1), st.binary(max_size=20)).map(
            lambda t: bytes([t[0]]) + t[1] + bytes(1) + t[2]  # escape bit clear, first byte any
        ),
    ),
    channels=st.integers(1, 8),
)
def test_starts_compressed_is_exactly_read_verbatims_first_element_none(payload, channels):
    """The header check says True exactly when read_verbatim gives up at the first element."""
    try:
        result = read_verbatim(payload, channels, 352)
    except AlacFrameError:
        expected = False
    else:
        # None with the first escape bit clear: it stopped at the first element.
        expected = result is None and len(payload) >= 3 and not payload[2] & 0b10
    assert starts_compressed(payload, channels) is expected


def test_starts_compressed_on_real_frames(test30_first4):
    from raopd.media.alac_encode import AlacEncoder

    pcm = test30_first4[:352]
    assert starts_compressed(AlacEncoder().encode(pcm), 2)
    for pair in (True, False):
        verbatim = build_frame(pcm, pair=pair, has_size=True, end=True)
        assert not starts_compressed(verbatim, 2)
    assert not starts_compressed(bytes(1412), 2)


def test_compressed_frame_without_end_is_repaired_bit_exactly(test30_first4):
    from raopd.media.alac_encode import AlacEncoder

    decoder = make_decoder(StreamParams(codec=Codec.ALAC, alac=config(2)))
    for start in range(0, len(test30_first4) - 351, 352):
        pcm = test30_first4[start : start + 352]
        payload = AlacEncoder().encode(pcm)
        # Remove END: find where FFmpeg's frame ends by stripping END bits from the end.
        value = int.from_bytes(payload, "big")
        width = len(payload) * 8
        for pad in range(8):
            if (value >> pad) & 7 == 7 and not value & ((1 << pad) - 1):
                stripped = value >> (pad + 3)
                stripped_width = width - pad - 3
                break
        else:
            pytest.fail("encoder frame has no END element")
        pad = -stripped_width % 8
        broken = (stripped << pad).to_bytes((stripped_width + pad) // 8, "big")
        assert np.array_equal(decoder.decode(broken), pcm)


def test_garbage_never_escapes_as_anything_but_protocol_error():
    decoder = make_decoder(StreamParams(codec=Codec.ALAC, alac=config(2)))
    rng = np.random.default_rng(9)
    for size in [*range(40), 1411, 1412, 1415, 1416]:
        payload = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        if payload:
            payload[0] = (payload[0] & 0x1F) | 0x20  # a pair element
            if size > 2:
                payload[2] |= 0x02  # escape: verbatim
        try:
            pcm = decoder.decode(bytes(payload))
        except ProtocolError:
            continue
        assert pcm.shape[1] == 2 and 1 <= len(pcm) <= 352
