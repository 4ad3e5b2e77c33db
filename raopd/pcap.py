"""A small reader for classic pcap files, enough to replay a recorded RAOP session.

It understands the classic (libpcap 2.4) format in either byte order, with micro- or
nanosecond timestamps, over Ethernet (with 802.1Q tags), Linux cooked capture (v1 and v2),
BSD loopback and raw IP link types, carrying IPv4 or IPv6 with UDP or TCP. TCP payloads are
reassembled per direction in sequence order (duplicates and retransmissions dropped), which
is all RTSP needs. pcapng is not read: `tcpdump -w` writes classic pcap, and Wireshark saves it
with "Save As… pcap".
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from raopd.errors import CaptureError

Address = tuple[str, int]

_MAGIC_USEC = 0xA1B2C3D4
_MAGIC_NSEC = 0xA1B23C4D
_PCAPNG_MAGIC = 0x0A0D0D0A

# Link-layer header types (www.tcpdump.org/linktypes.html).
_LINK_NULL = 0
_LINK_ETHERNET = 1
_LINK_RAW = 101
_LINK_LINUX_SLL = 113
_LINK_LOOP = 108
_LINK_IPV4 = 228
_LINK_IPV6 = 229
_LINK_LINUX_SLL2 = 276

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = (0x8100, 0x88A8)

_PROTO_TCP = 6
_PROTO_UDP = 17

_TCP_SYN = 0x02
_TCP_FIN = 0x01

_U16 = struct.Struct("!H")
_IPV4_LENGTH_FRAGMENT = struct.Struct("!H2xH")
_UDP_HEADER = struct.Struct("!HHH")
_TCP_PORTS_SEQ = struct.Struct("!HHI")
_ADDRESSES: dict[bytes, str] = {}

# A record larger than this is not a network packet: the file is corrupt.
_MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram, or one in-order chunk of a TCP stream."""

    time: float
    transport: Literal["udp", "tcp"]
    src: Address
    dst: Address
    payload: bytes


@dataclass(slots=True)
class PcapDamage:
    """What a capture lost on its way to the file (filled in by `read_pcap`)."""

    snaplen: int = 0
    """The snapshot length in the file header: longer packets were cut to it."""
    size: int = 0
    """Bytes in the file."""
    truncated_at: int | None = None
    """File offset of a record the file ends inside (tcpdump killed, a copy cut short)."""
    cut_records: int = 0
    """Records stored shorter than they were on the wire."""
    cut_udp: int = 0
    """UDP datagrams among them (audio, control, timing): their payload is incomplete."""
    longest_cut: int = 0
    """The longest original length among the cut records."""


@dataclass(slots=True)
class _TcpDirection:
    next_seq: int | None = None
    pending: dict[int, bytes] | None = None


def read_pcap(stream: BinaryIO, damage: PcapDamage | None = None) -> Iterator[Datagram]:
    """Yield the UDP datagrams and reassembled TCP payload chunks of a capture, in file order.

    Raises CaptureError for a file that is not a classic pcap or is cut inside its header.
    A truncated final record ends the reading; `damage` (when given) records where, and how
    many packets the snapshot length cut short. Cut UDP datagrams are not yielded: their
    payload is incomplete and would only be misread.
    """
    damage = damage if damage is not None else PcapDamage()
    header = stream.read(24)
    if len(header) < 24:
        raise CaptureError("not a pcap file: shorter than the 24-byte file header")
    magic_le = struct.unpack("<I", header[:4])[0]
    if magic_le == _PCAPNG_MAGIC:
        raise CaptureError("pcapng is not supported: save the capture as classic pcap")
    for endian in ("<", ">"):
        magic = struct.unpack(endian + "I", header[:4])[0]
        if magic in (_MAGIC_USEC, _MAGIC_NSEC):
            break
    else:
        raise CaptureError(f"not a pcap file: unknown magic 0x{magic_le:08x}")
    divisor = 1e9 if magic == _MAGIC_NSEC else 1e6
    linktype = struct.unpack(endian + "I", header[20:24])[0] & 0x0FFFFFFF
    damage.snaplen = struct.unpack(endian + "I", header[16:20])[0]
    record_header = struct.Struct(endian + "IIII")
    # Read it whole and slice through memoryviews: captures are a few MB, and copying each
    # layer's bytes would cost more than parsing them.
    data = memoryview(stream.read())
    tcp: dict[tuple[Address, Address], _TcpDirection] = {}
    offset = 0
    end = len(data)
    damage.size = end + 24
    while offset + 16 <= end:
        seconds, fraction, captured, original = record_header.unpack_from(data, offset)
        if captured > _MAX_RECORD_BYTES:
            raise CaptureError(
                f"corrupt pcap: the record at byte {offset + 24} claims {captured} bytes"
            )
        if offset + 16 + captured > end:
            break
        offset += 16
        frame = data[offset : offset + captured]
        offset += captured
        ip = _strip_link(linktype, frame)
        cut = original > captured
        if cut:
            damage.cut_records += 1
            damage.longest_cut = max(damage.longest_cut, original)
        if ip is not None:
            for datagram in _decode_ip(seconds + fraction / divisor, ip, tcp):
                if cut and datagram.transport == "udp":
                    damage.cut_udp += 1
                    continue
                yield datagram
    if offset != end:
        damage.truncated_at = offset + 24  # file offsets count the 24-byte file header


def _strip_link(linktype: int, frame: memoryview) -> memoryview | None:
    """The IP packet inside a link-layer frame, or None for anything else."""
    if linktype == _LINK_ETHERNET:
        offset = 12
        while len(frame) >= offset + 2:
            ethertype = _U16.unpack_from(frame, offset)[0]
            if ethertype in _ETH_VLAN:
                offset += 4
                continue
            return frame[offset + 2 :] if ethertype in (_ETH_IPV4, _ETH_IPV6) else None
        return None
    if linktype == _LINK_LINUX_SLL:
        return frame[16:] if len(frame) >= 16 else None
    if linktype == _LINK_LINUX_SLL2:
        return frame[20:] if len(frame) >= 20 else None
    if linktype in (_LINK_NULL, _LINK_LOOP):
        return frame[4:] if len(frame) >= 4 else None
    if linktype in (_LINK_RAW, _LINK_IPV4, _LINK_IPV6):
        return frame
    raise CaptureError(f"unsupported pcap link type {linktype}")


def _decode_ip(
    when: float, ip: memoryview, tcp: dict[tuple[Address, Address], _TcpDirection]
) -> Iterator[Datagram]:
    if not ip:
        return
    version = ip[0] >> 4
    if version == 4:
        if len(ip) < 20:
            return
        header_len = (ip[0] & 0x0F) * 4
        total, flags_fragment = _IPV4_LENGTH_FRAGMENT.unpack_from(ip, 2)
        if flags_fragment & 0x3FFF:
            return  # fragments are not reassembled; RAOP datagrams never fragment on a LAN
        proto = ip[9]
        src_ip = _address(socket.AF_INET, bytes(ip[12:16]))
        dst_ip = _address(socket.AF_INET, bytes(ip[16:20]))
        body = ip[header_len : total if total else len(ip)]
    elif version == 6:
        if len(ip) < 40:
            return
        proto = ip[6]
        payload_len = _U16.unpack_from(ip, 4)[0]
        src_ip = _address(socket.AF_INET6, bytes(ip[8:24]))
        dst_ip = _address(socket.AF_INET6, bytes(ip[24:40]))
        body = ip[40 : 40 + payload_len]
    else:
        return
    if proto == _PROTO_UDP and len(body) >= 8:
        src_port, dst_port, length = _UDP_HEADER.unpack_from(body)
        datagram = body[8:length] if length >= 8 else body[8:]
        yield Datagram(when, "udp", (src_ip, src_port), (dst_ip, dst_port), bytes(datagram))
    elif proto == _PROTO_TCP and len(body) >= 20:
        src_port, dst_port, seq = _TCP_PORTS_SEQ.unpack_from(body)
        data_offset = (body[12] >> 4) * 4
        flags = body[13]
        payload = bytes(body[data_offset:])
        key = ((src_ip, src_port), (dst_ip, dst_port))
        direction = tcp.setdefault(key, _TcpDirection())
        for chunk in _reassemble(direction, seq, flags, payload):
            yield Datagram(when, "tcp", key[0], key[1], chunk)


def _address(family: int, raw: bytes) -> str:
    """An address as text; a capture holds few distinct ones, so they are cached."""
    text = _ADDRESSES.get(raw)
    if text is None:
        if len(_ADDRESSES) > 4096:
            _ADDRESSES.clear()
        text = _ADDRESSES[raw] = socket.inet_ntop(family, raw)
    return text


def _reassemble(direction: _TcpDirection, seq: int, flags: int, payload: bytes) -> Iterator[bytes]:
    """Deliver TCP payload in sequence order, once, whatever order segments were captured in."""
    if flags & _TCP_SYN:
        direction.next_seq = (seq + 1) & 0xFFFFFFFF
        direction.pending = {}
        if not payload:
            return
        seq = direction.next_seq
    if direction.next_seq is None:
        # The capture started mid-stream: take the first segment seen as the start.
        direction.next_seq = seq
        direction.pending = {}
    if not payload:
        return
    assert direction.pending is not None
    direction.pending.setdefault(seq, payload)
    while direction.pending:
        expected = direction.next_seq
        ready = None
        for start in list(direction.pending):
            offset = (expected - start) & 0xFFFFFFFF
            data = direction.pending[start]
            if offset < len(data):
                ready = data[offset:]
                del direction.pending[start]
                break
            if offset < 0x80000000:
                del direction.pending[start]  # wholly before what was delivered: a retransmission
        if ready is None:
            return
        direction.next_seq = (expected + len(ready)) & 0xFFFFFFFF
        yield ready
