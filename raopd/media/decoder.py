"""Audio payload decoders: ALAC (verbatim natively, compressed through PyAV) and L16.

`make_decoder(params)` picks one from the ANNOUNCE's stream parameters. Every decoder turns
one (already decrypted) RTP payload into a C-contiguous int16 array of shape
(frames, OUTPUT_CHANNELS) holding exactly that packet's frames: a short last packet gives
fewer than `frames_per_packet`, never stale samples; a mono stream is duplicated to both
output channels. Anything undecodable raises `DecodeError` (a `ProtocolError`) naming its
`FrameFault`, so a hostile or corrupt datagram can be counted by reason and replaced.

ALAC frames whose elements are verbatim ("escape": what PipeWire, PulseAudio and most
non-Apple senders send) are read by `alac_verbatim` with numpy; compressed frames go to
FFmpeg, and when FFmpeg refuses one only because its END element is missing, the frame is
handed over again with END supplied.

PyAV leaves FFmpeg's own logging off unless asked, so corrupt payloads cost an exception
here, not a line on stderr; this module does not touch that process-wide setting.
"""

from __future__ import annotations

import struct
from typing import Protocol, cast

import av
import av.error
import numpy as np
import numpy.typing as npt

from raopd.core.audio_format import OUTPUT_CHANNELS
from raopd.core.sdp import AlacConfig, Codec, StreamParams
from raopd.errors import ProtocolError
from raopd.media.alac_verbatim import (
    AlacFrameError,
    FrameFault,
    read_verbatim,
    starts_compressed,
    with_end_element,
)

__all__ = [
    "AlacDecoder",
    "DecodeError",
    "Decoder",
    "FrameFault",
    "L16Decoder",
    "alac_cookie",
    "default_alac_config",
    "make_decoder",
]

Pcm = npt.NDArray[np.int16]

# FFmpeg's ALAC decoder wants an MP4 'alac' atom: 12 bytes of atom header, then the 24-byte
# ALACSpecificConfig; a bare 24-byte config fails to open.
ALAC_COOKIE_BYTES = 36
_COOKIE_HEADER = struct.Struct(">I4sI")
_COOKIE_CONFIG = struct.Struct(">IBBBBBBHIII")

# Sample formats PyAV hands back for 16-bit ALAC; FFmpeg's decoder only produces planar.
_S16P = "s16p"
_INT16 = np.dtype(np.int16)
_BIG_INT16 = np.dtype(">i2")
# Unsupported codec parameters map to RTSP 456 (Header Field Not Valid for Resource), as
# the rest of ANNOUNCE validation does.
_UNSUPPORTED = 456
# What ALAC tells a decoder about its own frames is bounded by the 8-channel layouts.
_MAX_CHANNELS = 8


class DecodeError(ProtocolError):
    """A payload that cannot be decoded; `fault` says why (for counters and logs)."""

    def __init__(self, fault: FrameFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault


def _to_output_channels(pcm: Pcm) -> Pcm:
    """Mono duplicated to the output's two channels (the SDP admits only 1 or 2)."""
    if pcm.shape[1] == OUTPUT_CHANNELS:
        return pcm
    return np.repeat(pcm, OUTPUT_CHANNELS, axis=1)


class Decoder(Protocol):
    """Turns one decrypted RTP payload into int16 PCM, shape (frames, channels)."""

    @property
    def channels(self) -> int:
        """Channels in the stream (every array `decode` returns has OUTPUT_CHANNELS)."""
        ...

    def decode(self, payload: bytes) -> Pcm:
        """The payload's own frames; `DecodeError` if it cannot be decoded."""
        ...


def default_alac_config(params: StreamParams) -> AlacConfig:
    """The ALACSpecificConfig Apple senders announce, for a stream that names no fmtp."""
    return AlacConfig(
        frame_length=params.frames_per_packet,
        compatible_version=0,
        bit_depth=params.bits,
        pb=40,
        mb=10,
        kb=14,
        channels=params.channels,
        max_run=255,
        max_frame_bytes=0,
        avg_bit_rate=0,
        sample_rate=params.sample_rate,
    )


def alac_cookie(config: AlacConfig) -> bytes:
    """The 36-byte extradata ('alac' atom + ALACSpecificConfig) FFmpeg's decoder needs.

    Raises `ProtocolError` (456) when a field does not fit its slot.
    """
    try:
        return _COOKIE_HEADER.pack(ALAC_COOKIE_BYTES, b"alac", 0) + _COOKIE_CONFIG.pack(
            config.frame_length,
            config.compatible_version,
            config.bit_depth,
            config.pb,
            config.mb,
            config.kb,
            config.channels,
            config.max_run,
            config.max_frame_bytes,
            config.avg_bit_rate,
            config.sample_rate,
        )
    except struct.error as exc:
        raise ProtocolError(f"ALAC fmtp out of range: {config}", _UNSUPPORTED) from exc


class AlacDecoder:
    """Apple Lossless, verbatim ("escape") or compressed frames, one per payload."""

    __slots__ = ("_channels", "_context", "_max_frames")

    def __init__(self, config: AlacConfig) -> None:
        if config.bit_depth != 16:
            # raopd's PCM is int16 end to end; AirPlay 1 senders only use 16 bits.
            raise ProtocolError(f"ALAC bit depth {config.bit_depth} unsupported", _UNSUPPORTED)
        if not 1 <= config.channels <= _MAX_CHANNELS or config.frame_length <= 0:
            raise ProtocolError(f"ALAC fmtp unsupported: {config}", _UNSUPPORTED)
        context = av.CodecContext.create("alac", "r")
        context.extradata = alac_cookie(config)
        try:
            context.open()
        except av.error.FFmpegError as exc:
            raise ProtocolError(f"ALAC decoder rejects fmtp {config}: {exc}", _UNSUPPORTED) from exc
        self._context = context
        self._channels = config.channels
        self._max_frames = config.frame_length

    @property
    def channels(self) -> int:
        return self._channels

    def decode(self, payload: bytes) -> Pcm:
        verbatim: Pcm | None = None
        # Every frame of an Apple sender says in its first header that it is compressed.
        if not starts_compressed(payload, self._channels):
            try:
                verbatim = read_verbatim(payload, self._channels, self._max_frames)
            except AlacFrameError as exc:
                raise DecodeError(exc.fault, f"ALAC payload ({len(payload)} bytes): {exc}") from exc
        pcm = self._decode_compressed(payload) if verbatim is None else verbatim
        return pcm if self._channels == OUTPUT_CHANNELS else _to_output_channels(pcm)

    def _decode_compressed(self, payload: bytes) -> Pcm:
        try:
            return self._ffmpeg(payload)
        except DecodeError as first:
            # Senders that leave out the END element pad the frame to a byte, so the last
            # element ends somewhere in the last 8 bits. Try END at each place, fewest
            # padding bits first: with END too early FFmpeg reads padding as another element
            # past the configured channels and refuses, so the first success is the frame.
            for cut_bits in range(8):
                try:
                    return self._ffmpeg(with_end_element(payload, cut_bits))
                except DecodeError:
                    continue
            raise first

    def _ffmpeg(self, payload: bytes) -> Pcm:
        try:
            frames = self._context.decode(av.Packet(payload))
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecodeError(
                FrameFault.REJECTED, f"ALAC payload ({len(payload)} bytes) refused: {exc}"
            ) from exc
        if len(frames) != 1:
            # ALAC has no decoder delay: one payload is one frame. Zero frames means FFmpeg
            # gave up quietly (e.g. fewer channel elements than configured).
            raise DecodeError(
                FrameFault.REJECTED, f"ALAC payload gave {len(frames)} frames, expected 1"
            )
        frame = frames[0]
        count = frame.samples
        planes = frame.planes
        if (
            frame.format.name != _S16P
            or len(planes) != self._channels
            or not 0 < count <= self._max_frames
        ):
            raise DecodeError(
                FrameFault.REJECTED,
                f"ALAC payload decoded to {count} x {len(planes)} {frame.format.name}",
            )
        # Interleave by assigning each plane to a column of a fresh array: about 3x cheaper
        # than to_ndarray().T.copy(), and the array never aliases FFmpeg's reused buffers.
        pcm = np.empty((count, self._channels), _INT16)
        for index, plane in enumerate(planes):
            # AudioPlane exports the buffer protocol; its stub just does not say so.
            pcm[:, index] = np.frombuffer(cast(bytes, plane), _INT16, count)
        return pcm


class L16Decoder:
    """Raw PCM: interleaved signed 16-bit big-endian samples."""

    __slots__ = ("_channels", "_frame_bytes")

    def __init__(self, channels: int) -> None:
        if not 1 <= channels <= _MAX_CHANNELS:
            raise ProtocolError(f"L16 with {channels} channels unsupported", _UNSUPPORTED)
        self._channels = channels
        self._frame_bytes = 2 * channels

    @property
    def channels(self) -> int:
        return self._channels

    def decode(self, payload: bytes) -> Pcm:
        size = len(payload)
        if size == 0 or size % self._frame_bytes:
            raise DecodeError(
                FrameFault.BAD_LENGTH,
                f"L16 payload of {size} bytes is not a whole number of "
                f"{self._channels}-channel frames",
            )
        samples = np.frombuffer(payload, _BIG_INT16)
        # astype makes the native-order copy the caller may keep.
        return _to_output_channels(samples.astype(_INT16).reshape(-1, self._channels))


def make_decoder(params: StreamParams) -> Decoder:
    """The decoder for a session's stream; `ProtocolError` (456) if it is unsupported."""
    if params.codec is Codec.ALAC:
        return AlacDecoder(params.alac if params.alac is not None else default_alac_config(params))
    if params.codec is Codec.L16:
        if params.bits != 16:
            raise ProtocolError(f"L16 with {params.bits} bits unsupported", _UNSUPPORTED)
        return L16Decoder(params.channels)
    raise ProtocolError(f"codec {params.codec} unsupported", _UNSUPPORTED)
