"""A small AirPlay 1 (RAOP) sender: streams 16-bit 44.1 kHz stereo PCM to a receiver.

raopd's own sender, for end-to-end tests, benchmarks, and users who want to play a WAV file
on a speaker (`raopd send`). It does what an Apple sender does (protocol notes §2-§5):

1. RTSP `OPTIONS` with an `Apple-Challenge`; the `Apple-Response` is checked against the
   AirPort public key, our address as the receiver sees it, and the receiver's advertised
   hardware address when it is known (else the one it signed is reported);
2. `ANNOUNCE` with an SDP: ALAC fmtp (or L16), and for encrypted streams `rsaaeskey`
   (a fresh AES key, RSA-OAEP/SHA-1 under the public key) and `aesiv`;
3. `SETUP` with our own control and timing UDP ports, `RECORD` with `RTP-Info`, and
   `SET_PARAMETER volume`;
4. RTP audio in real time (352 frames a packet; compressed ALAC, verbatim "escape" ALAC or
   L16), AES-CBC per packet, the marker bit on the first one; sync packets (0x90 first, then
   0x80 about once a second of audio) with a latency of 77175 frames; answers to the
   receiver's timing requests (0xD2 -> 0xD3 with our clock) and to its resend requests
   (0x55 -> 0x56 from a backlog, sent to the receiver's control port);
5. `TEARDOWN` once the audio's latency has played out (or at once).

Pacing uses `loop.time()`: each packet is sent when its time comes, up to `lead` seconds
early, `speed` times faster than real time if asked (a receiver writing to a file is untimed,
so tests can run faster than real time). The receiver's resend and give-up deadlines are in
real time whatever the speed, which is why `linger` is in real seconds too.

Fault injection for tests: drop a fraction of packets on their *first* send only (chosen with
a seed; the report lists exactly which sequence numbers), swap neighbours, send duplicates.
The last packet is never dropped: nothing after it would tell the receiver it is missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import random
import secrets
import time
import wave
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from raopd import __version__
from raopd.core.ntp import NTP_EPOCH_OFFSET, seconds_to_ntp
from raopd.core.packets import (
    AudioPacket,
    ResendRequest,
    ResentAudio,
    SyncPacket,
    TimingPacket,
    parse_datagram,
)
from raopd.core.rtsp import Headers
from raopd.errors import ProtocolError, RaopError
from raopd.media.crypto import PacketCipher, airport_key

__all__ = [
    "CODECS",
    "FaultPlan",
    "RaopSender",
    "SenderError",
    "SenderOptions",
    "SenderReport",
    "digest_authorization",
    "load_wav",
    "make_sdp",
    "send_file",
    "verify_apple_response",
    "wrap_session_key",
]

logger = logging.getLogger(__name__)

CodecName = Literal["alac", "alac-verbatim", "l16"]
CODECS: tuple[str, ...] = get_args(CodecName)

RATE = 44100
CHANNELS = 2
FRAMES_PER_PACKET = 352
DEFAULT_LATENCY_FRAMES = 77175  # what iOS puts in its sync packets (protocol notes §5.2.1)
ALAC_FMTP = "352 0 16 40 10 14 2 255 0 0 44100"
MIN_LATENCY_FRAMES = 11025
SYNC_FLAGS = 7
CHALLENGE_BYTES = 16
HW_ADDR_BYTES = 6
RESPONSE_TIMEOUT = 10.0  # seconds to wait for an RTSP response
MAX_RESPONSE_BODY = 1 << 20

_OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


class SenderError(RaopError):
    """The receiver refused us, answered nonsense, or went away."""


@dataclass(frozen=True, slots=True)
class SenderOptions:
    """How to stream. Defaults behave like an iOS device on a clean network."""

    codec: CodecName = "alac"
    encrypt: bool = True
    password: str | None = None
    username: str = "iTunes"
    volume: float = -15.0  # AirPlay dB: -30..0, -144 mute
    speed: float = 1.0  # 4.0 = four times faster than real time
    lead: float = 0.05  # seconds a packet may leave before its time
    latency_frames: int = DEFAULT_LATENCY_FRAMES
    # Seconds (real time) between the last audio packet and TEARDOWN, still answering
    # resend and timing requests; None: the latency, 0: at once.
    linger: float | None = None
    hw_addr: bytes | None = None  # the receiver's 6-byte device id, to check Apple-Response
    verify: bool = True  # raise SenderError unless the Apple-Response checks out
    resend: bool = True  # answer resend requests
    backlog_packets: int = 1024
    drop: float = 0.0  # fraction of packets lost on their first send
    reorder: float = 0.0  # probability of swapping a packet with the next one
    duplicate: float = 0.0  # probability of sending a packet twice
    seed: int = 0
    first_seq: int | None = None  # None: random
    first_rtptime: int | None = None  # None: random
    user_agent: str = f"raopd-sender/{__version__}"
    # Sent on every request, as iTunes and iOS do: the receiver's "who is playing" and the
    # keys to the sender's remote control (DACP).
    client_name: str | None = None
    dacp_id: str | None = None
    active_remote: str | None = None

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")
        if not self.speed > 0:
            raise ValueError(f"speed must be positive, not {self.speed}")
        for name in ("drop", "reorder", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value}")
        if self.hw_addr is not None and len(self.hw_addr) != HW_ADDR_BYTES:
            raise ValueError(f"hw_addr must be {HW_ADDR_BYTES} bytes")
        if not 0 <= self.latency_frames < 1 << 31:
            raise ValueError(f"latency_frames out of range: {self.latency_frames}")


@dataclass(slots=True)
class SenderReport:
    """What happened on the wire, for tests and the CLI's JSON output."""

    first_seq: int = 0
    first_rtptime: int = 0
    ssrc: int = 0
    packets: int = 0  # distinct audio packets in the stream
    frames: int = 0
    sent: int = 0  # audio datagrams on first transmission (duplicates included)
    dropped: list[int] = field(default_factory=list)  # seqs not sent the first time
    duplicated: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)  # seqs sent before their predecessor
    resend_requests: int = 0  # 0x55 datagrams received
    requested: list[int] = field(default_factory=list)  # every seq asked for, repeats kept
    resent: int = 0
    unavailable: int = 0  # asked for but no longer (or never) in the backlog
    timing_replies: int = 0
    syncs: int = 0
    apple_response: bool | None = None  # None: the receiver sent none
    receiver_hw_addr: str | None = None  # what the Apple-Response signed, as 12 hex digits
    server_port: int = 0
    control_port: int = 0
    timing_port: int = 0
    audio_latency: int | None = None  # from the RECORD reply
    max_lateness: float = 0.0  # seconds a packet left after its time (sender overload)
    duration: float = 0.0  # seconds from the first to the last audio packet

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly copy."""
        return {name: getattr(self, name) for name in self.__slots__}


# ---------------------------------------------------------------- pure helpers


def load_wav(path: str | Path) -> npt.NDArray[np.int16]:
    """A 16-bit 44.1 kHz stereo WAV as int16 frames, shape (frames, 2)."""
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getsampwidth(), wav.getframerate(), wav.getnchannels()) != (2, RATE, 2):
                raise SenderError(
                    f"{path}: need 16-bit 44100 Hz stereo, got {8 * wav.getsampwidth()}-bit "
                    f"{wav.getframerate()} Hz, {wav.getnchannels()} channel(s)"
                )
            data = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise SenderError(f"{path}: cannot read WAV: {exc}") from exc
    return np.frombuffer(data, "<i2").astype(np.int16).reshape(-1, CHANNELS)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The first-transmission order of packet indices, after drops, swaps and duplicates.

    Each fault has its own random stream derived from the seed, so changing one
    probability leaves the choices of the others alone.
    """

    entries: tuple[int, ...]
    dropped: frozenset[int]
    duplicated: frozenset[int]
    reordered: frozenset[int]

    @classmethod
    def make(
        cls,
        packets: int,
        *,
        drop: float = 0.0,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        seed: int = 0,
    ) -> FaultPlan:
        """A plan for `packets` packets; `drop` is the exact fraction dropped (rounded)."""
        droppable = max(0, packets - 1)  # never the last: nothing would reveal its loss
        dropped = frozenset(
            random.Random(f"drop:{seed}").sample(range(droppable), round(drop * droppable))
        )
        order = [i for i in range(packets) if i not in dropped]
        reordered: set[int] = set()
        rng = random.Random(f"reorder:{seed}")
        k = 0
        while k < len(order) - 1:
            if rng.random() < reorder:
                order[k], order[k + 1] = order[k + 1], order[k]
                reordered.add(order[k])
                k += 2
            else:
                k += 1
        rng = random.Random(f"duplicate:{seed}")
        entries: list[int] = []
        pending: list[tuple[int, int]] = []  # (position to send at, index)
        duplicated: set[int] = set()
        for position, index in enumerate(order):
            entries.append(index)
            if rng.random() < duplicate:
                # A few packets later, so some duplicates meet a packet already released.
                pending.append((position + rng.randint(0, 3), index))
                duplicated.add(index)
            due = [p for p in pending if p[0] <= position]
            for item in due:
                entries.append(item[1])
                pending.remove(item)
        entries.extend(index for _, index in pending)
        return cls(tuple(entries), dropped, frozenset(duplicated), frozenset(reordered))


def make_sdp(
    *,
    codec: CodecName,
    session_id: int,
    local_ip: str,
    remote_ip: str,
    aes_key_wrapped: bytes | None = None,
    aes_iv: bytes | None = None,
) -> bytes:
    """The ANNOUNCE body, shaped like iTunes' (protocol notes §2.3)."""

    def family(ip: str) -> str:
        return "IP6" if ":" in ip else "IP4"

    if codec == "l16":
        media = [f"a=rtpmap:96 L16/{RATE}/{CHANNELS}"]
    else:
        media = ["a=rtpmap:96 AppleLossless", f"a=fmtp:96 {ALAC_FMTP}"]
    lines = [
        "v=0",
        f"o=iTunes {session_id} 0 IN {family(local_ip)} {local_ip}",
        "s=iTunes",
        f"c=IN {family(remote_ip)} {remote_ip}",
        "t=0 0",
        "m=audio 0 RTP/AVP 96",
        *media,
    ]
    if aes_key_wrapped is not None and aes_iv is not None:
        lines.append("a=rsaaeskey:" + base64.b64encode(aes_key_wrapped).decode().rstrip("="))
        lines.append("a=aesiv:" + base64.b64encode(aes_iv).decode().rstrip("="))
    lines.append(f"a=min-latency:{MIN_LATENCY_FRAMES}")
    return ("\r\n".join(lines) + "\r\n").encode()


def wrap_session_key(aes_key: bytes) -> bytes:
    """`rsaaeskey` before base64: the AES key, RSA-OAEP (SHA-1) under the AirPort public key."""
    return airport_key().public_key().encrypt(bytes(aes_key), _OAEP_SHA1)


def digest_authorization(
    *, username: str, password: str, realm: str, nonce: str, method: str, uri: str
) -> str:
    """The `Authorization` value for RTSP Digest (RFC 2069: MD5, no qop, lower-case hex)."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    response = md5(f"{md5(f'{username}:{realm}:{password}')}:{nonce}:{md5(f'{method}:{uri}')}")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}"'
    )


def _ip_bytes(ip: str) -> bytes:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.packed


def verify_apple_response(
    challenge: bytes, response_b64: str, receiver_ip: str, hw_addr: bytes | None = None
) -> bytes:
    """Check an Apple-Response; returns the 6-byte hardware address it signed.

    The signed message is challenge ‖ receiver address ‖ hw_addr, zero-padded to 32 bytes.
    With `hw_addr` None, any hardware address is accepted (and returned). Raises
    `SenderError` when the signature or its content is wrong.
    """
    text = response_b64.strip()
    try:
        signature = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        message = (
            airport_key()
            .public_key()
            .recover_data_from_signature(signature, padding.PKCS1v15(), None)
        )
    except Exception as exc:  # binascii.Error, InvalidSignature, ValueError
        raise SenderError(f"Apple-Response does not verify with the AirPort key: {exc}") from exc
    prefix = bytes(challenge) + _ip_bytes(receiver_ip)
    if not message.startswith(prefix) or len(message) < len(prefix) + HW_ADDR_BYTES:
        raise SenderError("Apple-Response signs another challenge or address")
    signed_hw = message[len(prefix) : len(prefix) + HW_ADDR_BYTES]
    if message[len(prefix) + HW_ADDR_BYTES :].strip(b"\x00"):
        raise SenderError("Apple-Response message has trailing garbage")
    if hw_addr is not None and signed_hw != hw_addr:
        raise SenderError(
            f"Apple-Response signs hardware address {signed_hw.hex().upper()}, "
            f"expected {bytes(hw_addr).hex().upper()}"
        )
    return signed_hw


class PayloadEncoder:
    """PCM chunks (int16, (frames, 2)) -> RTP payloads in one of the three codecs."""

    def __init__(self, codec: CodecName) -> None:
        self.codec = codec
        if codec == "alac":
            from raopd.media.alac_encode import AlacEncoder

            self._alac = AlacEncoder(FRAMES_PER_PACKET, CHANNELS, RATE)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        """One payload for up to 352 frames."""
        if self.codec == "alac":
            return self._alac.encode(pcm)
        if self.codec == "alac-verbatim":
            from raopd.media.alac_encode import verbatim_alac_frame

            return verbatim_alac_frame(pcm, FRAMES_PER_PACKET)
        return np.ascontiguousarray(pcm, dtype=">i2").tobytes()


def _transport_fields(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in value.split(";"):
        key, sep, val = token.strip().partition("=")
        if sep:
            out[key.strip().lower()] = val.strip()
    return out


def _auth_params(value: str) -> dict[str, str]:
    _, _, rest = value.partition(" ")
    out: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            out[key.strip().lower()] = val.strip().strip('"')
    return out


# ------------------------------------------------------------------------- I/O


@dataclass(frozen=True, slots=True)
class RtspReply:
    """One RTSP response."""

    status: int
    reason: str
    headers: Headers
    body: bytes


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, sender: RaopSender, name: str) -> None:
        self.sender = sender
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's UDP selector transport does not derive from DatagramTransport (3.11).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.sender._datagram_received(self.name, data, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP %s: %s", self.name, exc)


class RaopSender:
    """Streams PCM to one AirPlay 1 receiver; see the module docstring.

    `await stream(pcm)` does everything. The steps are public for tests that look at the
    receiver between them: `connect()` (handshake up to RECORD and volume), `play(pcm)`
    (real-time audio, then linger), `teardown()`, `close()`.
    """

    def __init__(self, host: str, port: int, options: SenderOptions | None = None) -> None:
        self.host = host
        self.port = port
        self.options = options or SenderOptions()
        self.report = SenderReport()
        self._rng = random.SystemRandom()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._control: _Datagrams | None = None
        self._timing: _Datagrams | None = None
        self._cseq = 0
        self._session: str | None = None
        self._auth: tuple[str, str] | None = None  # (realm, nonce) once challenged
        self._uri = ""
        self.local_ip = ""
        self.remote_ip = ""
        self._receiver_control: tuple[str, int] | None = None
        self._cipher: PacketCipher | None = None
        self._backlog: dict[int, AudioPacket] = {}
        self._backlog_order: deque[int] = deque()
        self._clock_offset = time.time() - time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False

    # ------------------------------------------------------------ public steps

    async def stream(self, pcm: npt.ArrayLike) -> SenderReport:
        """Connect, play `pcm`, linger, TEARDOWN, close; returns the report."""
        try:
            await self.connect()
            await self.play(pcm)
            await self.teardown()
        finally:
            await self.close()
        return self.report

    async def connect(self) -> None:
        """TCP + UDP, then OPTIONS, ANNOUNCE, SETUP, RECORD and the initial volume."""
        options = self.options
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._clock_offset = time.time() - loop.time()
        try:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise SenderError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        sockname = self._writer.get_extra_info("sockname")
        peername = self._writer.get_extra_info("peername")
        self.local_ip, self.remote_ip = str(sockname[0]), str(peername[0])
        session_number = self._rng.getrandbits(32)
        host = f"[{self.local_ip}]" if ":" in self.local_ip else self.local_ip
        self._uri = f"rtsp://{host}/{session_number}"

        self._control = await self._bind("control")
        self._timing = await self._bind("timing")

        # 1. OPTIONS with a challenge: is this a real AirPlay 1 receiver?
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        reply = await self.request(
            "OPTIONS",
            "*",
            [("Apple-Challenge", base64.b64encode(challenge).decode().rstrip("="))],
        )
        answer = reply.headers.get("Apple-Response")
        if answer is None:
            if options.verify:
                raise SenderError("the receiver sent no Apple-Response")
        else:
            try:
                hw = verify_apple_response(challenge, answer, self.remote_ip, options.hw_addr)
            except SenderError:
                self.report.apple_response = False
                if options.verify:
                    raise
            else:
                self.report.apple_response = True
                self.report.receiver_hw_addr = hw.hex().upper()

        # 2. ANNOUNCE: codec and keys.
        wrapped = iv = None
        if options.encrypt:
            key, iv = secrets.token_bytes(16), secrets.token_bytes(16)
            wrapped = wrap_session_key(key)
            self._cipher = PacketCipher(key, iv)
        sdp = make_sdp(
            codec=options.codec,
            session_id=session_number,
            local_ip=self.local_ip,
            remote_ip=self.remote_ip,
            aes_key_wrapped=wrapped,
            aes_iv=iv,
        )
        await self.request("ANNOUNCE", self._uri, [("Content-Type", "application/sdp")], sdp)

        # 3. SETUP: our control/timing ports for theirs.
        assert self._control is not None and self._timing is not None
        ours = (self._port_of(self._control), self._port_of(self._timing))
        reply = await self.request(
            "SETUP",
            self._uri,
            [
                (
                    "Transport",
                    "RTP/AVP/UDP;unicast;interleaved=0-1;mode=record;"
                    f"control_port={ours[0]};timing_port={ours[1]}",
                )
            ],
        )
        transport = _transport_fields(reply.headers.get("Transport") or "")
        try:
            self.report.server_port = int(transport["server_port"])
            self.report.control_port = int(transport.get("control_port", "0"))
            self.report.timing_port = int(transport.get("timing_port", "0"))
        except (KeyError, ValueError) as exc:
            raise SenderError(f"SETUP reply has no usable Transport: {transport}") from exc
        self._session = reply.headers.get("Session")
        if self.report.control_port:
            self._receiver_control = (self.remote_ip, self.report.control_port)

        # 4. RECORD from our first packet, then the volume.
        first_seq = options.first_seq
        if first_seq is None:
            first_seq = self._rng.getrandbits(16)
        first_rtptime = options.first_rtptime
        if first_rtptime is None:
            first_rtptime = self._rng.getrandbits(32)
        self.report.first_seq = first_seq & 0xFFFF
        self.report.first_rtptime = first_rtptime & 0xFFFFFFFF
        self.report.ssrc = self._rng.getrandbits(32)
        reply = await self.request(
            "RECORD",
            self._uri,
            [
                ("Range", "npt=0-"),
                (
                    "RTP-Info",
                    f"seq={self.report.first_seq};rtptime={self.report.first_rtptime}",
                ),
            ],
        )
        latency = reply.headers.get("Audio-Latency")
        if latency is not None and latency.strip().isdigit():
            self.report.audio_latency = int(latency)
        await self.set_volume(options.volume)

    async def set_volume(self, volume: float) -> None:
        """SET_PARAMETER volume (AirPlay dB)."""
        await self.request(
            "SET_PARAMETER",
            self._uri,
            [("Content-Type", "text/parameters")],
            f"volume: {volume:.6f}\r\n".encode(),
        )

    async def set_metadata(self, items: Sequence[tuple[str, bytes]], rtptime: int) -> None:
        """SET_PARAMETER with DMAP: `items` (tag, value) inside one `mlit`, applying from
        `rtptime`."""
        body = b"".join(tag.encode("ascii") + len(v).to_bytes(4, "big") + v for tag, v in items)
        await self.request(
            "SET_PARAMETER",
            self._uri,
            [("Content-Type", "application/x-dmap-tagged"), ("RTP-Info", f"rtptime={rtptime}")],
            b"mlit" + len(body).to_bytes(4, "big") + body,
        )

    async def set_artwork(self, data: bytes, content_type: str, rtptime: int) -> None:
        """SET_PARAMETER with cover art (`image/none` and no data clears it)."""
        await self.request(
            "SET_PARAMETER",
            self._uri,
            [("Content-Type", content_type), ("RTP-Info", f"rtptime={rtptime}")],
            data,
        )

    async def set_progress(self, start: int, current: int, end: int) -> None:
        """SET_PARAMETER progress: three RTP timestamps."""
        await self.request(
            "SET_PARAMETER",
            self._uri,
            [("Content-Type", "text/parameters")],
            f"progress: {start}/{current}/{end}\r\n".encode(),
        )

    async def play(self, pcm: npt.ArrayLike) -> None:
        """Send `pcm` (int16, (frames, 2)) in real time (times `speed`), then linger."""
        array = np.asarray(pcm)
        if array.dtype != np.int16 or array.ndim != 2 or array.shape[1] != CHANNELS:
            raise ValueError(f"expected int16 PCM of shape (frames, 2), got {array.shape}")
        if self._loop is None or self._control is None:
            raise SenderError("play() before connect()")
        options, report = self.options, self.report
        loop = self._loop
        frames = len(array)
        packets = -(-frames // FRAMES_PER_PACKET)
        report.packets, report.frames = packets, frames
        plan = FaultPlan.make(
            packets,
            drop=options.drop,
            reorder=options.reorder,
            duplicate=options.duplicate,
            seed=options.seed,
        )
        report.dropped = [self._seq(i) for i in sorted(plan.dropped)]
        report.duplicated = [self._seq(i) for i in sorted(plan.duplicated)]
        report.reordered = [self._seq(i) for i in sorted(plan.reordered)]
        encoder = PayloadEncoder(options.codec)

        def packet(index: int) -> AudioPacket:
            # The backlog doubles as the cache of built packets (duplicates and swaps
            # only ever look a few packets back).
            made = self._backlog.get(self._seq(index))
            start = index * FRAMES_PER_PACKET
            rtptime = (report.first_rtptime + start) & 0xFFFFFFFF
            if made is None or made.rtptime != rtptime:
                payload = encoder.encode(array[start : start + FRAMES_PER_PACKET])
                if self._cipher is not None:
                    payload = self._cipher.encrypt(payload)
                made = AudioPacket(
                    self._seq(index),
                    rtptime,
                    report.ssrc,
                    payload,
                    marker=index == 0,
                )
                self._remember(made)
            return made

        # Every packet is encoded once, even a dropped one: it must be in the backlog
        # by the time the receiver asks for it.
        seconds_per_packet = FRAMES_PER_PACKET / (RATE * options.speed)
        t0 = loop.time() + options.lead
        sync_every = RATE  # frames of audio between sync packets
        next_sync_frame = 0
        highest = -1
        first_sent: float | None = None
        cursor = 0  # next index to make sure is built (in stream order)
        self._started = True
        for index in plan.entries:
            while cursor <= index:
                packet(cursor)
                cursor += 1
            due = t0 + max(index, highest) * seconds_per_packet
            delay = due - options.lead - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            report.max_lateness = max(report.max_lateness, now - due)
            highest = max(highest, index)
            frame = highest * FRAMES_PER_PACKET
            if frame >= next_sync_frame:
                self._send_sync(frame, due, first=report.syncs == 0)
                next_sync_frame = frame - frame % sync_every + sync_every
            self._send_audio(bytes(packet(index)))
            report.sent += 1
            if first_sent is None:
                first_sent = now
        while cursor < packets:  # dropped trailing ones never come up in the plan
            packet(cursor)
            cursor += 1
        report.duration = loop.time() - (first_sent if first_sent is not None else loop.time())
        linger = options.linger
        if linger is None:
            linger = options.latency_frames / RATE
        if linger > 0:
            await asyncio.sleep(linger)

    async def teardown(self) -> None:
        """TEARDOWN; the receiver closes the connection after it."""
        if self._writer is None:
            return
        await self.request("TEARDOWN", self._uri)

    async def close(self) -> None:
        """Close the TCP connection and the UDP sockets (idempotent)."""
        for endpoint in (self._control, self._timing):
            if endpoint is not None and endpoint.transport is not None:
                endpoint.transport.close()
        self._control = self._timing = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # -------------------------------------------------------------------- RTSP

    async def request(
        self,
        method: str,
        uri: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> RtspReply:
        """Send one request and read its response; answers one Digest challenge."""
        reply = await self._exchange(method, uri, headers, body)
        if reply.status == 401 and self.options.password is not None and self._auth is None:
            challenge = reply.headers.get("WWW-Authenticate") or ""
            fields = _auth_params(challenge)
            if not challenge.lower().startswith("digest") or "nonce" not in fields:
                raise SenderError(f"{method}: unusable WWW-Authenticate {challenge!r}")
            self._auth = (fields.get("realm", ""), fields["nonce"])
            reply = await self._exchange(method, uri, headers, body)
        if reply.status != 200:
            hint = ""
            if reply.status == 401 and self.options.password is None:
                hint = " (password needed)"
            raise SenderError(f"{method} refused: {reply.status} {reply.reason}{hint}")
        return reply

    async def _exchange(
        self, method: str, uri: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> RtspReply:
        if self._writer is None or self._reader is None:
            raise SenderError(f"{method}: not connected")
        self._cseq += 1
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self._cseq}"]
        lines.append(f"User-Agent: {self.options.user_agent}")
        for name, value in (
            ("X-Apple-Client-Name", self.options.client_name),
            ("DACP-ID", self.options.dacp_id),
            ("Active-Remote", self.options.active_remote),
        ):
            if value is not None:
                lines.append(f"{name}: {value}")
        if self._session is not None:
            lines.append(f"Session: {self._session}")
        if self._auth is not None and self.options.password is not None:
            realm, nonce = self._auth
            value = digest_authorization(
                username=self.options.username,
                password=self.options.password,
                realm=realm,
                nonce=nonce,
                method=method,
                uri=uri,
            )
            lines.append(f"Authorization: {value}")
        lines += [f"{name}: {value}" for name, value in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            return await asyncio.wait_for(self._read_reply(), RESPONSE_TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise SenderError(f"{method}: the receiver closed the connection") from exc
        except TimeoutError as exc:
            raise SenderError(f"{method}: no response within {RESPONSE_TIMEOUT} s") from exc

    async def _read_reply(self) -> RtspReply:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("RTSP/") or not code.isdigit():
            raise SenderError(f"not an RTSP response: {lines[0][:80]!r}")
        headers = Headers()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        length = int(headers.get("Content-Length") or "0")
        if not 0 <= length <= MAX_RESPONSE_BODY:
            raise SenderError(f"response body of {length} bytes")
        body = await self._reader.readexactly(length) if length else b""
        return RtspReply(int(code), reason, headers, body)

    # --------------------------------------------------------------------- UDP

    async def _bind(self, name: str) -> _Datagrams:
        assert self._loop is not None
        protocol = _Datagrams(self, name)
        await self._loop.create_datagram_endpoint(
            lambda: protocol, local_addr=(self.local_ip.split("%")[0], 0)
        )
        return protocol

    @staticmethod
    def _port_of(endpoint: _Datagrams) -> int:
        assert endpoint.transport is not None
        return int(endpoint.transport.get_extra_info("sockname")[1])

    def _seq(self, index: int) -> int:
        return (self.report.first_seq + index) & 0xFFFF

    def _ntp(self, now: float) -> int:
        return seconds_to_ntp(now + self._clock_offset + NTP_EPOCH_OFFSET)

    def _remember(self, packet: AudioPacket) -> None:
        self._backlog[packet.seq] = packet
        self._backlog_order.append(packet.seq)
        while len(self._backlog_order) > self.options.backlog_packets:
            self._backlog.pop(self._backlog_order.popleft(), None)

    def _send_audio(self, data: bytes) -> None:
        # Audio leaves from the control socket: receivers check the address, not the port.
        assert self._control is not None and self._control.transport is not None
        self._control.transport.sendto(data, (self.remote_ip, self.report.server_port))

    def _send_sync(self, frame: int, at: float, first: bool) -> None:
        if self._receiver_control is None or self._control is None:
            return
        assert self._control.transport is not None
        rtp_now = (self.report.first_rtptime + frame) & 0xFFFFFFFF
        sync = SyncPacket(
            (rtp_now - self.options.latency_frames) & 0xFFFFFFFF,
            self._ntp(at),
            rtp_now,
            first=first,
            flags=SYNC_FLAGS,
        )
        self._control.transport.sendto(bytes(sync), self._receiver_control)
        self.report.syncs += 1

    def _datagram_received(self, channel: str, data: bytes, addr: tuple[str, int]) -> None:
        loop = self._loop
        if loop is None:
            return
        arrived = loop.time()
        try:
            packet = parse_datagram(data)
        except ProtocolError as exc:
            logger.debug("ignored datagram on %s from %s: %s", channel, addr, exc)
            return
        if isinstance(packet, TimingPacket) and not packet.reply:
            if self._timing is None or self._timing.transport is None:
                return
            reply = TimingPacket(
                True, packet.transmit, self._ntp(arrived), self._ntp(loop.time()), packet.seq
            )
            self._timing.transport.sendto(bytes(reply), addr)
            self.report.timing_replies += 1
        elif isinstance(packet, ResendRequest):
            self._resend(packet)

    def _resend(self, request: ResendRequest) -> None:
        report = self.report
        report.resend_requests += 1
        target = self._receiver_control
        endpoint = self._control
        for offset in range(request.count):
            seq = (request.first_seq + offset) & 0xFFFF
            report.requested.append(seq)
            if not self.options.resend:
                continue
            original = self._backlog.get(seq)
            if original is None or target is None or endpoint is None:
                report.unavailable += 1
                continue
            assert endpoint.transport is not None
            endpoint.transport.sendto(bytes(ResentAudio(original, seq)), target)
            report.resent += 1


async def send_file(
    path: str | Path, host: str, port: int, options: SenderOptions | None = None
) -> SenderReport:
    """Stream a 16-bit 44.1 kHz stereo WAV file to host:port."""
    return await RaopSender(host, port, options).stream(load_wav(path))
