"""The audio a sender put on the wire, decoded from a tcpdump capture without raopd's code.

The end-to-end tests compare raopd's output with this, so it must not share raopd's bugs:
it reads the classic pcap itself, finds the ANNOUNCE in the RTSP bytes the sender sent,
unwraps the AES key with the AirPort private key and `cryptography` directly, and decodes
the one ALAC form real Linux senders send, the verbatim ("uncompressed") frame, with numpy
bit arithmetic. Compressed ALAC is out of scope: no sender run here sends it.

A verbatim stereo 16-bit frame is: 3 bits element tag (1 = channel pair), 4 bits element
instance, 12 bits unused, 1 bit "has size", 2 bits unused, 1 bit "not compressed", then
(with has-size) 32 bits frame count, then frame count x (left, right) as big-endian 16-bit
values, packed from bit 55 on. A trailing END element (3 bits) may follow or may not: the
PipeWire and PulseAudio senders leave it out.
"""

from __future__ import annotations

import base64
import itertools
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AIRPORT_KEY = Path(__file__).resolve().parents[2] / "raopd" / "media" / "airport_express.pem"
_LINK_ETHERNET = 1
_LINK_LINUX_SLL = 113
_HEADER_BITS = 55  # up to and including the 32-bit frame count


@dataclass
class UdpPacket:
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


@dataclass
class Capture:
    """What a pcap holds: UDP datagrams in capture order, TCP bytes per direction."""

    udp: list[UdpPacket] = field(default_factory=list)
    tcp: dict[tuple[tuple[str, int], tuple[str, int]], bytearray] = field(default_factory=dict)


def read_capture(path: Path) -> Capture:
    """Parse a classic little-endian pcap of Ethernet (or Linux cooked) frames.

    TCP payloads are appended per direction in capture order: on a private veth nothing is
    lost or reordered, and the test would see garbage RTSP if that ever stopped being true.
    """
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), f"{path} is not a little-endian classic pcap"
    capture = Capture()
    offset = 24
    while offset + 16 <= len(data):
        incl = struct.unpack_from("<I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        if linktype == _LINK_ETHERNET:
            ethertype, ip = struct.unpack_from("!H", frame, 12)[0], frame[14:]
        elif linktype == _LINK_LINUX_SLL:
            ethertype, ip = struct.unpack_from("!H", frame, 14)[0], frame[16:]
        else:
            raise AssertionError(f"link type {linktype} not handled")
        if ethertype == 0x0800:
            header = (ip[0] & 0x0F) * 4
            proto, src_ip, dst_ip = ip[9], _ip4(ip[12:16]), _ip4(ip[16:20])
            total = struct.unpack_from("!H", ip, 2)[0]
            body = ip[header:total]
        elif ethertype == 0x86DD:
            proto, src_ip, dst_ip = ip[6], _ip6(ip[8:24]), _ip6(ip[24:40])
            body = ip[40 : 40 + struct.unpack_from("!H", ip, 4)[0]]
        else:
            continue
        if proto == 17:
            sport, dport = struct.unpack_from("!HH", body, 0)
            capture.udp.append(UdpPacket((src_ip, sport), (dst_ip, dport), bytes(body[8:])))
        elif proto == 6:
            sport, dport = struct.unpack_from("!HH", body, 0)
            payload = body[(body[12] >> 4) * 4 :]
            if payload:
                key = ((src_ip, sport), (dst_ip, dport))
                capture.tcp.setdefault(key, bytearray()).extend(payload)
    return capture


def _ip4(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _ip6(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(bytes(raw)))


@dataclass
class WireAudio:
    """The audio stream of one RAOP session as it travelled."""

    announce: str  # the SDP body the sender announced
    packets: int  # distinct audio packets (by RTP sequence number)
    frames: np.ndarray  # int16 (n, 2): the decoded frames of all packets, in sequence order
    zero_payloads: int  # packets whose (decrypted) payload was all zero bytes
    undecodable: int  # packets that are not verbatim stereo 16-bit ALAC
    first_rtptime: int
    frames_per_packet: int
    requests: list[str]  # the RTSP request lines the sender sent, in order

    @property
    def encrypted(self) -> bool:
        return "a=rsaaeskey:" in self.announce


def rtsp_requests(capture: Capture, server_port: int) -> tuple[list[str], str]:
    """The request lines a sender sent to `server_port` and the last ANNOUNCE body.

    Walks each client->server byte stream request by request (head, then Content-Length
    bytes of body), so a binary body such as POST /auth-setup's is skipped, not searched.
    """
    lines: list[str] = []
    announce = ""
    for (_, dst), stream in capture.tcp.items():
        if dst[1] != server_port:
            continue
        data = bytes(stream)
        while b"\r\n\r\n" in data:
            head, data = data.split(b"\r\n\r\n", 1)
            first, *headers = head.decode("latin-1").split("\r\n")
            length = 0
            for header in headers:
                name, _, value = header.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body, data = data[:length], data[length:]
            lines.append(first)
            if first.startswith("ANNOUNCE "):
                announce = body.decode("latin-1")
    return lines, announce


def wire_audio(path: Path, server_port: int = 5000) -> WireAudio:
    """Decode the audio one sender streamed in the capture at `path`."""
    capture = read_capture(path)
    requests, announce = rtsp_requests(capture, server_port)
    assert announce, f"no ANNOUNCE to port {server_port} in {path}"
    fmtp = re.search(r"a=fmtp:\d+ (\d+)", announce)
    assert fmtp, announce
    frames_per_packet = int(fmtp.group(1))
    cipher = _cipher(announce)
    by_seq: dict[int, bytes] = {}
    rtptimes: dict[int, int] = {}
    for packet in capture.udp:
        raw = packet.payload
        # Audio: RTP version 2, payload type 96 (0x60), from the sender's side.
        if len(raw) < 12 or raw[0] & 0xC0 != 0x80 or raw[1] & 0x7F != 0x60:
            continue
        if packet.dst[1] == server_port:
            continue  # not the audio port; RTSP is TCP, so this never matches in practice
        seq, rtptime = struct.unpack_from("!HI", raw, 2)
        by_seq.setdefault(seq, raw[12:])
        rtptimes.setdefault(seq, rtptime)
    assert by_seq, f"no audio packets in {path}"
    order = _sequence_order(list(by_seq))
    frames: list[np.ndarray] = []
    zero = undecodable = 0
    for seq in order:
        payload = by_seq[seq]
        if cipher is not None:
            payload = _decrypt(cipher, payload)
        if not any(payload):
            zero += 1
        decoded = decode_verbatim(payload)
        if decoded is None:
            undecodable += 1
            decoded = np.zeros((frames_per_packet, 2), np.int16)
        frames.append(decoded)
    return WireAudio(
        announce=announce,
        packets=len(order),
        frames=np.concatenate(frames),
        zero_payloads=zero,
        undecodable=undecodable,
        first_rtptime=rtptimes[order[0]],
        frames_per_packet=frames_per_packet,
        requests=requests,
    )


def _sequence_order(seqs: list[int]) -> list[int]:
    """Sequence numbers in stream order across one 16-bit wrap."""
    seqs = sorted(seqs)
    gaps = [(b - a, i) for i, (a, b) in enumerate(itertools.pairwise(seqs))]
    if gaps and max(gaps)[0] > 0x8000:  # wrapped: the largest gap is where the stream starts
        cut = max(gaps)[1] + 1
        seqs = seqs[cut:] + seqs[:cut]
    return seqs


def _cipher(announce: str) -> tuple[bytes, bytes] | None:
    key = re.search(r"a=rsaaeskey:(\S+)", announce)
    iv = re.search(r"a=aesiv:(\S+)", announce)
    if key is None or iv is None:
        return None
    private = serialization.load_pem_private_key(AIRPORT_KEY.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    aes_key = private.decrypt(_b64(key.group(1)), oaep)
    return aes_key, _b64(iv.group(1))


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _decrypt(cipher: tuple[bytes, bytes], payload: bytes) -> bytes:
    whole = len(payload) // 16 * 16
    decryptor = Cipher(algorithms.AES(cipher[0]), modes.CBC(cipher[1])).decryptor()
    return decryptor.update(payload[:whole]) + payload[whole:]


def decode_verbatim(payload: bytes) -> np.ndarray | None:
    """A verbatim stereo 16-bit ALAC frame -> int16 (n, 2), or None if it is not one."""
    if len(payload) < 7:
        return None
    head = int.from_bytes(payload[:7], "big") >> 1  # the first 55 bits
    tag, has_size, verbatim = head >> 52, (head >> 35) & 1, (head >> 32) & 1
    count = head & 0xFFFFFFFF
    if tag != 1 or not has_size or not verbatim:
        return None
    needed_bits = _HEADER_BITS + count * 32
    if count == 0 or len(payload) * 8 < needed_bits:
        return None
    bits = np.unpackbits(np.frombuffer(payload, np.uint8))[_HEADER_BITS:needed_bits]
    values = np.packbits(bits).view(">i2").astype(np.int16)
    return values.reshape(count, 2)
