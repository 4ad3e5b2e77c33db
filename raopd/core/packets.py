"""RAOP control-channel packets: sync (0x54) and timing (0x52/0x53).

Minimal version written alongside the clock code: only `SyncPacket` and `TimingPacket`, with the
names and fields of the architecture contract. The full module (audio, resend, dispatch) replaces
this one at integration.
"""

import struct
from dataclasses import dataclass
from typing import Self

from raopd.core.seq import rtp_diff
from raopd.errors import ProtocolError

_SYNC = struct.Struct(">BBHIQI")
_TIMING = struct.Struct(">BBHIQQQ")


@dataclass(frozen=True, slots=True)
class SyncPacket:
    """Sync (0x80|0x90, 0xD4): which RTP time plays at which sender NTP time."""

    rtptime_at_ntp: int
    """Bytes 4..7: the frame that, by the sender's own latency, is playing at `ntp`."""
    ntp: int
    """Bytes 8..15: the sender clock (NTP 64-bit) at that moment."""
    rtptime_now: int
    """Bytes 16..19: the frame the sender is producing at `ntp`."""
    first: bool = False
    flags: int = 7

    @property
    def latency_frames(self) -> int:
        """The sender's own latency: rtptime_now - rtptime_at_ntp (modular)."""
        return rtp_diff(self.rtptime_now, self.rtptime_at_ntp)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if len(data) != _SYNC.size:
            raise ProtocolError(f"sync packet is {len(data)} bytes, expected 20")
        b0, b1, flags, at_ntp, ntp, now = _SYNC.unpack(data)
        if b1 != 0xD4:
            raise ProtocolError(f"sync packet type byte is 0x{b1:02x}, expected 0xd4")
        return cls(at_ntp, ntp, now, first=bool(b0 & 0x10), flags=flags)

    def __bytes__(self) -> bytes:
        b0 = 0x90 if self.first else 0x80
        return _SYNC.pack(b0, 0xD4, self.flags, self.rtptime_at_ntp, self.ntp, self.rtptime_now)


@dataclass(frozen=True, slots=True)
class TimingPacket:
    """Timing request (0xD2, receiver -> sender) or reply (0xD3): NTP-style T1/T2/T3."""

    reply: bool
    origin: int
    receive: int
    transmit: int

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if len(data) != _TIMING.size:
            raise ProtocolError(f"timing packet is {len(data)} bytes, expected 32")
        _b0, b1, _seq, _zero, origin, receive, transmit = _TIMING.unpack(data)
        if b1 not in (0xD2, 0xD3):
            raise ProtocolError(f"timing packet type byte is 0x{b1:02x}, expected 0xd2/0xd3")
        return cls(b1 == 0xD3, origin, receive, transmit)

    def __bytes__(self) -> bytes:
        b1 = 0xD3 if self.reply else 0xD2
        return _TIMING.pack(0x80, b1, 7, 0, self.origin, self.receive, self.transmit)
