"""ALAC encoding for test senders and benchmarks (the daemon itself never encodes).

`AlacEncoder` makes real compressed ALAC with FFmpeg's encoder, as Apple senders do;
`verbatim_alac_frame` builds the uncompressed "escape" frames many third-party senders
send, bit by bit, with no encoder at all. Both decode bit-exactly with
`raopd.media.decoder.AlacDecoder` under the standard fmtp (352 0 16 40 10 14 2 255 0 0 44100).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import av
import numpy as np
import numpy.typing as npt

__all__ = ["AlacEncoder", "verbatim_alac_frame"]

_LAYOUTS = {1: "mono", 2: "stereo"}
# ALAC element types: a single channel element (mono) or a channel pair element (stereo).
_ELEMENT_TYPE = {1: 0, 2: 1}
_ID_END = 7


def _check_pcm(pcm: npt.ArrayLike, channels: int, max_frames: int) -> npt.NDArray[np.int16]:
    array = np.asarray(pcm)
    if array.dtype != np.int16 or array.ndim != 2 or array.shape[1] != channels:
        raise ValueError(f"expected int16 PCM of shape (frames, {channels}), got {array.shape}")
    if not 1 <= array.shape[0] <= max_frames:
        raise ValueError(f"expected 1..{max_frames} frames, got {array.shape[0]}")
    return array


class AlacEncoder:
    """Compressed ALAC, one RTP payload per call, via FFmpeg's "alac" encoder (s16p).

    FFmpeg's encoder fixes its frame size at 4096 samples and accepts one shorter frame as
    the last of a stream, so each payload gets its own encoder context: every frame then
    carries its sample count (the has-size bit) and a short final packet needs nothing
    special. ALAC frames are independent, so nothing is lost between packets.
    """

    def __init__(
        self, frames_per_packet: int = 352, channels: int = 2, sample_rate: int = 44100
    ) -> None:
        if channels not in _LAYOUTS:
            raise ValueError(f"only mono or stereo, not {channels} channels")
        if not 1 <= frames_per_packet <= 4096:
            raise ValueError(f"frames_per_packet must be 1..4096, not {frames_per_packet}")
        self.frames_per_packet = frames_per_packet
        self.channels = channels
        self.sample_rate = sample_rate

    def encode(self, pcm: npt.ArrayLike) -> bytes:
        """One ALAC payload for `pcm`: int16, shape (frames, channels), 1..frames_per_packet."""
        array = _check_pcm(pcm, self.channels, self.frames_per_packet)
        context = av.CodecContext.create("alac", "w")
        context.sample_rate = self.sample_rate
        context.format = "s16p"
        context.layout = _LAYOUTS[self.channels]
        context.open()
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(array.T), format="s16p", layout=_LAYOUTS[self.channels]
        )
        frame.sample_rate = self.sample_rate
        frame.pts = 0
        # encode() would route the frame through PyAV's re-chunking resampler (a filter
        # graph per context, ~10x the cost); the frame already has the right format, so
        # hand it straight to FFmpeg when this PyAV exposes the step.
        send = cast(
            "Callable[[av.AudioFrame | None], Iterable[bytes]] | None",
            getattr(context, "_send_frame_and_recv", None),
        )
        packets = list(send(frame)) if send is not None else context.encode(frame)
        if not packets:
            packets = list(send(None)) if send is not None else context.encode(None)
        if len(packets) != 1:
            raise RuntimeError(f"ALAC encoder gave {len(packets)} packets for one frame")
        return bytes(packets[0])


def verbatim_alac_frame(
    pcm: npt.ArrayLike, frames_per_packet: int = 352, *, pipewire_style: bool = False
) -> bytes:
    """An uncompressed ("escape") ALAC frame holding `pcm` (int16, (frames, 1 or 2)).

    The sample count is written (has-size) only when it differs from `frames_per_packet`,
    as senders do: a full stereo packet is 1412 bytes, a sized one 1416. `pipewire_style`
    makes the frames PipeWire 0.3 and PulseAudio 16 send: always sized, and without the END
    element (1415 bytes), which FFmpeg refuses and raopd decodes.
    """
    array = np.asarray(pcm)
    if array.ndim != 2 or array.shape[1] not in _ELEMENT_TYPE:
        raise ValueError(f"expected int16 PCM of shape (frames, 1 or 2), got {array.shape}")
    array = _check_pcm(array, array.shape[1], 1 << 32)
    frames, channels = array.shape
    has_size = pipewire_style or frames != frames_per_packet
    # Frame header, MSB first: element type (3), instance tag (4), unused (12),
    # has-size (1), bytes shifted (2), escape (1) = 23 bits.
    bits = (_ELEMENT_TYPE[channels] << 20) | (int(has_size) << 3) | 1
    width = 23
    if has_size:
        bits = (bits << 32) | frames
        width += 32
    samples = np.ascontiguousarray(array, dtype=">i2").tobytes()
    bits = (bits << (8 * len(samples))) | int.from_bytes(samples, "big")
    width += 8 * len(samples)
    if not pipewire_style:
        bits = (bits << 3) | _ID_END
        width += 3
    pad = -width % 8
    return (bits << pad).to_bytes((width + pad) // 8, "big")
