"""RAOP UDP datagrams: RTP audio, resent audio, sync, resend request and timing packets.

Every packet type is a frozen dataclass with `parse(data)` (raises `ProtocolError`
with a message naming the exact defect) and `__bytes__` (the canonical wire form,
so `bytes(Cls.parse(x)) == x` for every packet a real sender was seen to send).
`parse_datagram` classifies by `byte[1] & 0x7F` and dispatches.

Layouts (big-endian, see protocol notes section 5):

    audio    80 60|M seq16 rtptime32 ssrc32 payload...
    resent   80 D6 request_seq16 <a whole audio packet>
    sync     80|90 D4 flags16 rtptime_at_ntp32 ntp64 rtptime_now32     (20 bytes)
    resend   80 D5 seq16 first_seq16 count16                          (8 bytes)
    timing   80 D2|D3 seq16 reserved32 origin64 receive64 transmit64   (32 bytes)

This module sits on the audio hot path (about 125 packets/s per stream, and a
replay pushes a whole capture through at once), so it uses precompiled
`struct.Struct` objects and plain integer tests, nothing per packet that allocates
more than the result.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from raopd.errors import ProtocolError

RTP_VERSION_BYTE = 0x80
"""Byte 0 of every RAOP packet: V=2, no padding, no extension, no CSRCs."""

SYNC_FIRST_BYTE = 0x90
"""Byte 0 of the first sync after RECORD/FLUSH (the extension bit marks a restart)."""

MARKER = 0x80

PT_AUDIO = 0x60
PT_TIMING_REQUEST = 0x52
PT_TIMING_REPLY = 0x53
PT_SYNC = 0x54
PT_RESEND_REQUEST = 0x55
PT_RESENT_AUDIO = 0x56

_RTP_HEADER = struct.Struct(">BBHII")
_RESENT_PREFIX = struct.Struct(">BBH")
_SYNC = struct.Struct(">BBHIQI")
_RESEND = struct.Struct(">BBHHH")
_TIMING = struct.Struct(">BBHIQQQ")

RTP_HEADER_SIZE = _RTP_HEADER.size  # 12
SYNC_SIZE = _SYNC.size  # 20
RESEND_REQUEST_SIZE = _RESEND.size  # 8
TIMING_SIZE = _TIMING.size  # 32
RESENT_PREFIX_SIZE = _RESENT_PREFIX.size  # 4

_unpack_rtp = _RTP_HEADER.unpack_from
_unpack_sync = _SYNC.unpack
_unpack_resend = _RESEND.unpack
_unpack_timing = _TIMING.unpack


def _pack(st: struct.Struct, *values: int) -> bytes:
    # struct.error is not a ValueError; callers building packets from bad fields
    # deserve the ordinary exception type.
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise ValueError(f"packet field out of range: {exc}") from None


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """One RTP audio packet: 352 frames of ALAC or L16, maybe AES-encrypted."""

    seq: int
    rtptime: int
    ssrc: int
    payload: bytes
    marker: bool = False

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a whole RTP audio datagram (header + payload)."""
        if len(data) < RTP_HEADER_SIZE:
            raise ProtocolError(f"RTP audio packet shorter than 12 bytes ({len(data)} bytes)")
        b0, b1, seq, rtptime, ssrc = _unpack_rtp(data)
        if b0 != RTP_VERSION_BYTE:
            raise ProtocolError(f"RTP audio packet byte 0 is 0x{b0:02x}, expected 0x80")
        if b1 & 0x7F != PT_AUDIO:
            raise ProtocolError(f"RTP packet payload type 0x{b1 & 0x7F:02x} is not audio (0x60)")
        if cls is AudioPacket:
            return _new_audio(seq, rtptime, ssrc, bytes(data[RTP_HEADER_SIZE:]), b1 >= MARKER)  # type: ignore[return-value]
        return cls(seq, rtptime, ssrc, bytes(data[RTP_HEADER_SIZE:]), b1 >= MARKER)

    def __bytes__(self) -> bytes:
        b1 = PT_AUDIO | MARKER if self.marker else PT_AUDIO
        return _pack(_RTP_HEADER, RTP_VERSION_BYTE, b1, self.seq, self.rtptime, self.ssrc) + (
            self.payload
        )


# The frozen dataclass __init__ goes through object.__setattr__ by name for every
# field, which is most of the cost of parsing an audio packet. Setting the slots
# through their descriptors builds the identical object about 40% faster (an
# equality test in tests/core/test_packets.py keeps the two paths honest).
_AUDIO_SLOT_SETTERS = tuple(
    AudioPacket.__dict__[name].__set__ for name in ("seq", "rtptime", "ssrc", "payload", "marker")
)


def _new_audio(seq: int, rtptime: int, ssrc: int, payload: bytes, marker: bool) -> AudioPacket:
    set_seq, set_rtptime, set_ssrc, set_payload, set_marker = _AUDIO_SLOT_SETTERS
    packet = object.__new__(AudioPacket)
    set_seq(packet, seq)
    set_rtptime(packet, rtptime)
    set_ssrc(packet, ssrc)
    set_payload(packet, payload)
    set_marker(packet, marker)
    return packet


@dataclass(frozen=True, slots=True)
class ResentAudio:
    """A retransmitted audio packet (0x56): a 4-byte prefix, then the original packet.

    `request_seq` is bytes 2..3 of the prefix (pyatv puts the original seq there;
    shairport-sync ignores it). Use `packet.seq` and `packet.rtptime`.
    """

    packet: AudioPacket
    request_seq: int = 0

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse `80 D6 xx xx` followed by a complete RTP audio packet."""
        if len(data) < RESENT_PREFIX_SIZE + RTP_HEADER_SIZE:
            raise ProtocolError(f"resent audio packet shorter than 16 bytes ({len(data)} bytes)")
        b0, b1, request_seq = _RESENT_PREFIX.unpack_from(data)
        if b0 != RTP_VERSION_BYTE:
            raise ProtocolError(f"resent audio packet byte 0 is 0x{b0:02x}, expected 0x80")
        if b1 != PT_RESENT_AUDIO | MARKER:
            raise ProtocolError(f"resent audio packet byte 1 is 0x{b1:02x}, expected 0xd6")
        inner_type = data[RESENT_PREFIX_SIZE + 1] & 0x7F
        if inner_type != PT_AUDIO:
            raise ProtocolError(
                f"resent packet carries payload type 0x{inner_type:02x}, not audio (0x60)"
            )
        return cls(AudioPacket.parse(data[RESENT_PREFIX_SIZE:]), request_seq)

    def __bytes__(self) -> bytes:
        prefix = _pack(_RESENT_PREFIX, RTP_VERSION_BYTE, PT_RESENT_AUDIO | MARKER, self.request_seq)
        return prefix + bytes(self.packet)


@dataclass(frozen=True, slots=True)
class SyncPacket:
    """Sync (0x54, byte 1 always 0xD4): ties an RTP timestamp to the sender's NTP clock.

    `rtptime_at_ntp` (bytes 4..7) is the frame the sender considers playing at
    `ntp`, i.e. `rtptime_now` minus the sender's latency. `flags` is bytes 2..3
    (7 from iTunes/Music and most third-party senders, 4 from iOS).
    """

    rtptime_at_ntp: int
    ntp: int
    rtptime_now: int
    first: bool = False
    flags: int = 7

    @property
    def latency_frames(self) -> int:
        """The sender's own latency: (rtptime_now - rtptime_at_ntp) mod 2**32."""
        return (self.rtptime_now - self.rtptime_at_ntp) & 0xFFFFFFFF

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a 20-byte sync packet."""
        if len(data) != SYNC_SIZE:
            raise ProtocolError(f"sync packet is {len(data)} bytes, expected 20")
        b0, b1, flags, rtptime_at_ntp, ntp, rtptime_now = _unpack_sync(data)
        if b0 != RTP_VERSION_BYTE and b0 != SYNC_FIRST_BYTE:
            raise ProtocolError(f"sync packet byte 0 is 0x{b0:02x}, expected 0x80 or 0x90")
        if b1 != PT_SYNC | MARKER:
            raise ProtocolError(f"sync packet byte 1 is 0x{b1:02x}, expected 0xd4")
        return cls(rtptime_at_ntp, ntp, rtptime_now, b0 == SYNC_FIRST_BYTE, flags)

    def __bytes__(self) -> bytes:
        b0 = SYNC_FIRST_BYTE if self.first else RTP_VERSION_BYTE
        return _pack(
            _SYNC,
            b0,
            PT_SYNC | MARKER,
            self.flags,
            self.rtptime_at_ntp,
            self.ntp,
            self.rtptime_now,
        )


@dataclass(frozen=True, slots=True)
class ResendRequest:
    """Retransmit request (0x55, byte 1 0xD5): ask for `count` packets from `first_seq`.

    `seq` is bytes 2..3, which receivers set to a constant 1.
    """

    first_seq: int
    count: int
    seq: int = 1

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse an 8-byte resend request."""
        if len(data) != RESEND_REQUEST_SIZE:
            raise ProtocolError(f"resend request is {len(data)} bytes, expected 8")
        b0, b1, seq, first_seq, count = _unpack_resend(data)
        if b0 != RTP_VERSION_BYTE:
            raise ProtocolError(f"resend request byte 0 is 0x{b0:02x}, expected 0x80")
        if b1 != PT_RESEND_REQUEST | MARKER:
            raise ProtocolError(f"resend request byte 1 is 0x{b1:02x}, expected 0xd5")
        return cls(first_seq, count, seq)

    def __bytes__(self) -> bytes:
        return _pack(
            _RESEND,
            RTP_VERSION_BYTE,
            PT_RESEND_REQUEST | MARKER,
            self.seq,
            self.first_seq,
            self.count,
        )


@dataclass(frozen=True, slots=True)
class TimingPacket:
    """Timing request (0xD2, `reply=False`) or reply (0xD3): three NTP 64-bit stamps.

    Request: our send time in `transmit`, the rest zero. Reply: `origin` echoes the
    request's `transmit`; `receive`/`transmit` are the sender's clock at arrival
    and departure. `seq` (bytes 2..3, always 7 in practice) and `reserved`
    (bytes 4..7; cliraop puts its IP address there) are kept only so that a packet
    is written back exactly as it was read.
    """

    reply: bool
    origin: int
    receive: int
    transmit: int
    seq: int = 7
    reserved: int = 0

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a 32-byte timing request or reply."""
        if len(data) != TIMING_SIZE:
            raise ProtocolError(f"timing packet is {len(data)} bytes, expected 32")
        b0, b1, seq, reserved, origin, receive, transmit = _unpack_timing(data)
        if b0 != RTP_VERSION_BYTE:
            raise ProtocolError(f"timing packet byte 0 is 0x{b0:02x}, expected 0x80")
        if b1 == PT_TIMING_REPLY | MARKER:
            reply = True
        elif b1 == PT_TIMING_REQUEST | MARKER:
            reply = False
        else:
            raise ProtocolError(f"timing packet byte 1 is 0x{b1:02x}, expected 0xd2 or 0xd3")
        return cls(reply, origin, receive, transmit, seq, reserved)

    def __bytes__(self) -> bytes:
        b1 = (PT_TIMING_REPLY if self.reply else PT_TIMING_REQUEST) | MARKER
        return _pack(
            _TIMING,
            RTP_VERSION_BYTE,
            b1,
            self.seq,
            self.reserved,
            self.origin,
            self.receive,
            self.transmit,
        )


Datagram = AudioPacket | ResentAudio | SyncPacket | ResendRequest | TimingPacket

_PARSERS: dict[int, Callable[[bytes], Datagram]] = {
    PT_AUDIO: AudioPacket.parse,
    PT_RESENT_AUDIO: ResentAudio.parse,
    PT_SYNC: SyncPacket.parse,
    PT_RESEND_REQUEST: ResendRequest.parse,
    PT_TIMING_REQUEST: TimingPacket.parse,
    PT_TIMING_REPLY: TimingPacket.parse,
}


def parse_datagram(data: bytes) -> Datagram:
    """Classify a datagram by `byte[1] & 0x7F` and parse it; raises `ProtocolError`."""
    if len(data) < 2:
        raise ProtocolError(f"datagram shorter than 2 bytes ({len(data)} bytes)")
    if data[1] & 0x7F == PT_AUDIO:  # the common case, ~125/s: skip the table lookup
        return AudioPacket.parse(data)
    parser = _PARSERS.get(data[1] & 0x7F)
    if parser is None:
        raise ProtocolError(f"unknown RTP payload type 0x{data[1] & 0x7F:02x}")
    return parser(data)
