"""Verbatim ("escape") ALAC frames decoded natively with numpy, and ALAC frame repair.

Most non-Apple senders (PipeWire's and PulseAudio's RAOP sinks among them) do not compress:
they send ALAC frames whose elements have the escape bit set, i.e. a 23-bit element header,
an optional 32-bit sample count, then the samples as plain big-endian integers. Those frames
are read here with a handful of numpy operations, faster than a round trip through FFmpeg.

Frame layout (docs/protocol.md §4.2, FFmpeg's libavcodec/alac.c), MSB first, per element:

    3 bits element type (0 single channel, 1 channel pair, 3 LFE; 7 = END)
    4 bits instance tag, 12 bits unused
    1 bit has-size, 2 bits bytes-shifted, 1 bit escape (1 = verbatim)
    32 bits sample count, only with has-size (else the fmtp frame length)
    verbatim: count x channels samples of bit-depth bits, interleaved

then a 3-bit END element and padding to a byte. PipeWire 0.3 and PulseAudio 16 leave the END
element out; FFmpeg refuses such frames, Apple's decoder and shairport-sync play them. Here a
frame ends at END, at the end of the payload, or at all-zero padding once every channel has
been read; anything else after the last channel is an error, as in FFmpeg.

`read_verbatim` returns None for a frame with a compressed element: those go to FFmpeg, and
`with_end_element` rebuilds such a frame with the END element FFmpeg wants. `starts_compressed`
tells from the first three bytes alone that `read_verbatim` would return None at the first
element (what every Apple sender's frame does), so a compressed frame costs no parse here.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import numpy.typing as npt

__all__ = [
    "AlacFrameError",
    "FrameFault",
    "read_verbatim",
    "starts_compressed",
    "with_end_element",
]

Pcm = npt.NDArray[np.int16]

_SCE, _CPE, _LFE, _END = 0, 1, 3, 7
_HEADER_BITS = 23  # type 3 + tag 4 + unused 12 + has-size 1 + shift 2 + escape 1
_SIZE_BITS = 32
_SAMPLE_BITS = 16  # raopd decodes 16-bit ALAC only (AirPlay 1)
_BIG_INT16 = np.dtype(">i2")
# Where FFmpeg puts each element's first channel, by channel count (ALAC's channel layouts):
# elements fill the output in this order, a channel pair into two neighbouring channels.
_LAYOUT_OFFSETS = (
    (0,),
    (0, 1),
    (2, 0, 1),
    (2, 0, 1, 3),
    (2, 0, 1, 3, 4),
    (2, 0, 1, 4, 5, 3),
    (2, 0, 1, 4, 5, 6, 3),
    (2, 6, 7, 0, 1, 4, 5, 3),
)


class FrameFault(Enum):
    """Why a payload could not be decoded; the label is what metrics and logs show."""

    EMPTY = "empty"
    ALL_ZERO = "all-zero"
    TRUNCATED = "truncated"
    BAD_HEADER = "bad-header"
    BAD_SIZE = "bad-size"
    EXTRA_DATA = "extra-data"
    REJECTED = "rejected"  # FFmpeg refused a compressed frame, repaired or not
    BAD_LENGTH = "bad-length"  # L16: not a whole number of frames
    DECRYPT = "decrypt"


class AlacFrameError(ValueError):
    """A frame that cannot be decoded, with the reason as a `FrameFault`."""

    def __init__(self, fault: FrameFault, detail: str) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault


def _bits(data: bytes, position: int, width: int) -> int:
    """`width` bits of `data` from bit `position`, MSB first (caller checks the length)."""
    first = position >> 3
    last = (position + width + 7) >> 3
    chunk = int.from_bytes(data[first:last], "big")
    return (chunk >> ((last << 3) - position - width)) & ((1 << width) - 1)


def _samples(data: bytes, position: int, count: int) -> Pcm:
    """`count` 16-bit big-endian samples starting at any bit `position`, as native int16."""
    start, shift = position >> 3, position & 7
    if not shift:
        return np.frombuffer(data, _BIG_INT16, count, start).astype(np.int16)
    # Realign with one big-integer shift (C speed, one pass): the samples become the last
    # 2 * count bytes of `count * 2 + 1`. Cheaper than any combination of numpy shifts.
    size = 2 * count + 1
    value = int.from_bytes(data[start : start + size], "big") >> (8 - shift)
    return np.frombuffer(value.to_bytes(size, "big"), _BIG_INT16, count, 1).astype(np.int16)


def _read_single_element(payload: bytes, channels: int, frame_length: int) -> Pcm | None:
    """The usual frame (one verbatim element holding every channel) in one pass, else None.

    None also for anything unusual: the general reader then decides, with its reasons.
    """
    size_bits = len(payload) * 8
    if size_bits < 56:
        return None
    head = int.from_bytes(payload[:7], "big")  # the 23-bit header and a possible count
    element = head >> 53
    if not (head >> 33) & 1 or element != (_CPE if channels == 2 else _SCE) or channels > 2:
        return None
    if (head >> 36) & 1:  # has-size
        count, position = (head >> 1) & 0xFFFFFFFF, _HEADER_BITS + _SIZE_BITS
    else:
        count, position = frame_length, _HEADER_BITS
    end = position + count * channels * _SAMPLE_BITS
    if not 0 < count <= frame_length or end > size_bits:
        return None
    rest = size_bits - end
    if rest >= 3:
        tail = _bits(payload, end, rest)
        if tail and tail >> (rest - 3) != _END:
            return None
    return _samples(payload, position, count * channels).reshape(count, channels)


def starts_compressed(payload: bytes, channels: int) -> bool:
    """True when `read_verbatim(payload, channels, ...)` would return None at the first element.

    That is: a whole 23-bit header of a channel element (single, pair or LFE) that fits the
    channel layout, its escape bit clear, and not an all-zero payload (which `read_verbatim`
    refuses as ALL_ZERO). Three bytes are read, plus a scan for a non-zero byte only when the
    first byte is zero. False says nothing: `read_verbatim` decides as before.
    """
    if len(payload) < 3 or payload[2] & 0b10:  # too short for a header, or escape set
        return False
    element = payload[0] >> 5
    if element == _CPE:
        width = 2
    elif element in (_SCE, _LFE):
        width = 1
    else:
        return False
    if _LAYOUT_OFFSETS[channels - 1][0] + width > channels:
        return False
    return bool(payload[0]) or payload.count(0) != len(payload)


def read_verbatim(payload: bytes, channels: int, frame_length: int) -> Pcm | None:
    """The int16 (frames, channels) PCM of a verbatim frame; None if an element is compressed.

    Raises `AlacFrameError` for a frame that is neither. `frame_length` is the stream's
    frames per packet (fmtp), used when an element carries no sample count.
    """
    size_bits = len(payload) * 8
    fast = _read_single_element(payload, channels, frame_length)
    if fast is not None:
        return fast
    offsets = _LAYOUT_OFFSETS[channels - 1]
    position = 0
    done = 0  # channels read so far
    frames = 0
    out: Pcm | None = None
    while size_bits - position >= 3:
        if done == channels:
            # Past the last channel: END, or only zero padding (senders that omit END).
            rest = _bits(payload, position, size_bits - position)
            if rest >> (size_bits - position - 3) != _END and rest:
                raise AlacFrameError(FrameFault.EXTRA_DATA, f"data after {channels} channels")
            break
        if size_bits - position < _HEADER_BITS:
            raise AlacFrameError(FrameFault.TRUNCATED, "element header cut short")
        # The header and the sample count that may follow it, in one read.
        wide = size_bits - position >= _HEADER_BITS + _SIZE_BITS
        head = _bits(payload, position, _HEADER_BITS + _SIZE_BITS if wide else _HEADER_BITS)
        header = head >> _SIZE_BITS if wide else head
        element = header >> (_HEADER_BITS - 3)
        if element == _END:
            break
        if element not in (_SCE, _CPE, _LFE):
            raise AlacFrameError(FrameFault.BAD_HEADER, f"element type {element}")
        width = 2 if element == _CPE else 1
        if done + width > channels or offsets[done] + width > channels:
            raise AlacFrameError(FrameFault.BAD_HEADER, f"element of {width} past {channels}")
        if not header & 1:
            if not done and payload.count(0) == len(payload):
                # Not a frame at all (no escape bit, no END): PulseAudio's PCM mode.
                raise AlacFrameError(FrameFault.ALL_ZERO, f"{len(payload)} zero bytes")
            return None  # compressed: FFmpeg's job
        position += _HEADER_BITS
        count = frame_length
        if header & 0b1000:  # has-size
            if not wide:
                raise AlacFrameError(FrameFault.TRUNCATED, "sample count cut short")
            count = head & 0xFFFFFFFF
            position += _SIZE_BITS
        if not 0 < count <= frame_length or (out is not None and count != frames):
            raise AlacFrameError(
                FrameFault.BAD_SIZE, f"{count} samples, frame length {frame_length}"
            )
        needed = count * width * _SAMPLE_BITS
        if size_bits - position < needed:
            raise AlacFrameError(
                FrameFault.TRUNCATED, f"{len(payload)} bytes for {count} x {width} samples"
            )
        samples = _samples(payload, position, count * width).reshape(count, width)
        if width == channels:
            out = samples  # the usual frame: one element holds every channel
        else:
            if out is None:
                out = np.empty((count, channels), np.int16)
            first = offsets[done]
            out[:, first : first + width] = samples
        frames = count
        position += needed
        done += width
    if out is None or done != channels:
        if not payload:
            raise AlacFrameError(FrameFault.EMPTY, "empty payload")
        raise AlacFrameError(FrameFault.TRUNCATED, f"{done} of {channels} channels present")
    return out


def with_end_element(payload: bytes, cut_bits: int) -> bytes:
    """`payload` with its last `cut_bits` bits (padding) replaced by an END element."""
    width = len(payload) * 8 - cut_bits
    value = (int.from_bytes(payload, "big") >> cut_bits << 3) | _END
    width += 3
    pad = -width % 8
    return (value << pad).to_bytes((width + pad) // 8, "big")
