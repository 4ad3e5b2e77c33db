"""The ANNOUNCE body (SDP) -> `StreamParams`: codec, ALAC config, AES keys, latency bounds.

The codec comes from the `a=rtpmap` encoding name and nothing else. pyatv sends
`rtpmap:96 L16/44100/2` together with an ALAC-style `a=fmtp` line; a receiver that
picks ALAC because an fmtp line exists feeds PCM to the ALAC decoder (the
reference receiver crashed on exactly that). For L16 the fmtp line is ignored.

ALAC fmtp fields start from the typical values (`352 0 16 40 10 14 2 255 0 0
44100`) and are overwritten by whatever is present, as shairport-sync does.

Errors: malformed text gives `ProtocolError` 400; a well-formed announcement of
something raopd cannot play (another codec, FairPlay, half a key pair, a sample
format other than 16-bit 44.1 kHz) gives 456, the status shairport-sync uses for
key problems and senders understand as "not for this receiver".
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass, fields, replace

from raopd.core.audio_format import FRAMES_PER_PACKET, OUTPUT_CHANNELS, SAMPLE_RATE
from raopd.errors import ProtocolError

SUPPORTED_BITS = 16
MAX_FRAME_LENGTH = 8192
AES_IV_BYTES = 16


class Codec(enum.Enum):
    """Audio encodings raopd decodes; the value is the rtpmap encoding name."""

    ALAC = "AppleLossless"
    L16 = "L16"


@dataclass(frozen=True, slots=True)
class AlacConfig:
    """The 11 ALAC fmtp fields (Apple's ALACSpecificConfig), in wire order."""

    frame_length: int = FRAMES_PER_PACKET
    compatible_version: int = 0
    bit_depth: int = 16
    pb: int = 40
    mb: int = 10
    kb: int = 14
    channels: int = 2
    max_run: int = 255
    max_frame_bytes: int = 0
    avg_bit_rate: int = 0
    sample_rate: int = SAMPLE_RATE


_TYPICAL_ALAC = AlacConfig()
_ALAC_FIELDS = tuple(f.name for f in fields(AlacConfig))
# Upper bounds from the field widths of the 24-byte ALACSpecificConfig.
_ALAC_LIMITS = {
    "frame_length": 0xFFFFFFFF,
    "compatible_version": 0xFF,
    "bit_depth": 0xFF,
    "pb": 0xFF,
    "mb": 0xFF,
    "kb": 0xFF,
    "channels": 0xFF,
    "max_run": 0xFFFF,
    "max_frame_bytes": 0xFFFFFFFF,
    "avg_bit_rate": 0xFFFFFFFF,
    "sample_rate": 0xFFFFFFFF,
}


@dataclass(frozen=True, slots=True)
class StreamParams:
    """Everything the session needs from ANNOUNCE to set up decoding and playout."""

    codec: Codec
    frames_per_packet: int = FRAMES_PER_PACKET
    sample_rate: int = SAMPLE_RATE
    channels: int = OUTPUT_CHANNELS
    bits: int = 16
    alac: AlacConfig | None = None
    rsaaeskey: bytes | None = None
    aesiv: bytes | None = None
    min_latency_frames: int | None = None
    max_latency_frames: int | None = None

    @property
    def encrypted(self) -> bool:
        """True when the audio payloads are AES-encrypted."""
        return self.rsaaeskey is not None


def _b64(name: str, text: str) -> bytes:
    # Senders strip the '=' padding; put back what is needed, then decode strictly.
    text = text.strip()
    try:
        return binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{name} is not valid base64", 456) from None


def _int(what: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ProtocolError(f"{what} is not a non-negative integer: {text[:40]!r}")
    return int(text)


def _parse_alac_fmtp(params: list[str]) -> AlacConfig:
    # Fields past the eleventh are ignored, as shairport-sync does.
    present: dict[str, int] = {}
    for index, (name, text) in enumerate(zip(_ALAC_FIELDS, params, strict=False), start=1):
        value = _int(f"ALAC fmtp field {index} ({name})", text)
        if value > _ALAC_LIMITS[name]:
            raise ProtocolError(f"ALAC fmtp field {index} ({name}) out of range: {value}")
        present[name] = value
    config = replace(_TYPICAL_ALAC, **present)
    if not 1 <= config.frame_length <= MAX_FRAME_LENGTH:
        raise ProtocolError(
            f"ALAC frame length {config.frame_length} outside 1..{MAX_FRAME_LENGTH}", 456
        )
    if config.bit_depth != SUPPORTED_BITS:
        raise ProtocolError(f"ALAC bit depth {config.bit_depth} is not supported (only 16)", 456)
    if not 1 <= config.channels <= 2:
        raise ProtocolError(f"ALAC channel count {config.channels} is not supported (1 or 2)", 456)
    if config.sample_rate != SAMPLE_RATE:
        raise ProtocolError(
            f"sample rate {config.sample_rate} Hz is not supported (only 44100)", 456
        )
    return config


def _parse_l16(encoding: str) -> tuple[int, int]:
    # L16/<rate>[/<channels>] (RFC 3551: channels default to 1).
    parts = encoding.split("/")
    if len(parts) < 2 or len(parts) > 3:
        raise ProtocolError(f"malformed L16 rtpmap {encoding[:60]!r}")
    rate = _int("L16 sample rate", parts[1])
    channels = _int("L16 channel count", parts[2]) if len(parts) == 3 else 1
    if rate != SAMPLE_RATE:
        raise ProtocolError(f"sample rate {rate} Hz is not supported (only 44100)", 456)
    if not 1 <= channels <= 2:
        raise ProtocolError(f"L16 channel count {channels} is not supported (1 or 2)", 456)
    return rate, channels


def parse_sdp(body: bytes) -> StreamParams:
    """Parse an ANNOUNCE body; raises `ProtocolError` (400 malformed, 456 unsupported)."""
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        raise ProtocolError("empty SDP body")
    formats: list[str] = []
    rtpmaps: dict[str, str] = {}
    fmtps: dict[str, list[str]] = {}
    attrs: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        kind, eq, value = line.partition("=")
        if not eq or len(kind) != 1:
            raise ProtocolError(f"malformed SDP line {line[:60]!r}")
        if kind == "m":
            media = value.split()
            if len(media) < 4:
                raise ProtocolError(f"malformed SDP media line {line[:60]!r}")
            if media[0] == "audio" and not formats:
                formats = media[3:]
        elif kind == "a":
            name, _, avalue = value.partition(":")
            if name == "rtpmap":
                pt, _, encoding = avalue.strip().partition(" ")
                rtpmaps.setdefault(pt, encoding.strip())
            elif name == "fmtp":
                pt, _, params = avalue.strip().partition(" ")
                fmtps.setdefault(pt, params.split())
            else:
                attrs.setdefault(name, avalue)

    if "fpaeskey" in attrs:
        raise ProtocolError("FairPlay is not supported (fpaeskey)", 456)
    # The rtpmap for the first format of the audio media line; if the media line
    # is missing, the first rtpmap given.
    if not rtpmaps:
        raise ProtocolError("SDP has no a=rtpmap line")
    pt = next((f for f in formats if f in rtpmaps), next(iter(rtpmaps)))
    encoding = rtpmaps[pt]
    name = encoding.split("/", 1)[0]
    if name == Codec.ALAC.value:
        alac = _parse_alac_fmtp(fmtps.get(pt, []))
        codec = Codec.ALAC
        frames, rate, channels, bits = (
            alac.frame_length,
            alac.sample_rate,
            alac.channels,
            alac.bit_depth,
        )
    elif name == Codec.L16.value:
        # An fmtp line here (pyatv sends an ALAC one) says nothing about L16.
        alac = None
        codec = Codec.L16
        rate, channels = _parse_l16(encoding)
        frames, bits = FRAMES_PER_PACKET, 16
    else:
        raise ProtocolError(f"unsupported codec {encoding[:60]!r}", 456)

    rsaaeskey = attrs.get("rsaaeskey")
    aesiv = attrs.get("aesiv")
    if (rsaaeskey is None) != (aesiv is None):
        missing = "aesiv" if aesiv is None else "rsaaeskey"
        raise ProtocolError(f"SDP has only one of rsaaeskey/aesiv ({missing} missing)", 456)
    key = iv = None
    if rsaaeskey is not None and aesiv is not None:
        key = _b64("rsaaeskey", rsaaeskey)
        iv = _b64("aesiv", aesiv)
        if not key:
            raise ProtocolError("rsaaeskey is empty", 456)
        if len(iv) != AES_IV_BYTES:
            raise ProtocolError(f"aesiv is {len(iv)} bytes, expected 16", 456)

    min_latency = max_latency = None
    if "min-latency" in attrs:
        min_latency = _int("a=min-latency", attrs["min-latency"].strip())
    if "max-latency" in attrs:
        max_latency = _int("a=max-latency", attrs["max-latency"].strip())

    return StreamParams(
        codec=codec,
        frames_per_packet=frames,
        sample_rate=rate,
        channels=channels,
        bits=bits,
        alac=alac,
        rsaaeskey=key,
        aesiv=iv,
        min_latency_frames=min_latency,
        max_latency_frames=max_latency,
    )
