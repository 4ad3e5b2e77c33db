"""RaopSession: everything one sender's RTSP connection and its three UDP channels do.

The session is sans-I/O, like aioquic's QuicConnection. It is driven by four inputs:
`receive_data(data, now)` (RTSP bytes from the TCP connection), `datagram_received(channel,
data, addr, now)`, `handle_timer(now)` and `connection_lost(now)`. The adapter then collects
`data_to_send()` (RTSP responses), `datagrams_to_send()` and `next_event()`, and arms one timer
at `get_timer()`. Nothing here reads a clock or touches a socket, so `raopd replay` runs a
recorded capture through exactly this code.

Audio path: datagram -> AudioPacket -> JitterBuffer (reorder, dedupe, resend requests) ->
released in sequence order -> AES-CBC decrypt -> decode -> AudioReady events, contiguous in RTP
time: wherever audio is missing (never repaired, undecodable) a silent AudioReady of exactly
the missing length stands in, so the timeline keeps its length.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import plistlib
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from raopd.core.arbiter import PlayArbiter
from raopd.core.clock import ClockEstimate, ClockSync
from raopd.core.dmap import parse_dmap
from raopd.core.events import (
    ArtworkReceived,
    AudioReady,
    ClockUpdated,
    Event,
    Flushed,
    MetadataReceived,
    ProgressReceived,
    SessionEnded,
    StreamStarted,
    VolumeChanged,
)
from raopd.core.jitter import JitterBuffer, JitterSettings, JitterStats, Lost
from raopd.core.ntp import seconds_to_ntp
from raopd.core.packets import (
    AudioPacket,
    ResendRequest,
    ResentAudio,
    SyncPacket,
    TimingPacket,
    parse_datagram,
)
from raopd.core.parameters import parse_parameters, parse_progress, parse_volume
from raopd.core.rtsp import RtspReader, RtspRequest, RtspResponse
from raopd.core.sdp import StreamParams, parse_sdp
from raopd.core.seq import rtp_add, rtp_diff
from raopd.errors import ProtocolError
from raopd.media.crypto import PacketCipher, apple_response, unwrap_session_key
from raopd.media.decoder import Decoder, make_decoder

logger = logging.getLogger(__name__)

SERVER_VERSION = "105.1"  # AirTunes version of the AirPort Express that senders know best
AUDIO_LATENCY_FRAMES = 11025  # what every AP1 receiver reports in RECORD (protocol.md §6.2)
PUBLIC_METHODS = (
    "ANNOUNCE, SETUP, RECORD, PAUSE, FLUSH, TEARDOWN, OPTIONS, GET_PARAMETER, SET_PARAMETER"
)
DEFAULT_VOLUME = -15.0  # reported to GET_PARAMETER before a sender has set one
# A gap in RTP time larger than this is a new timeline, not missing audio to fill with silence.
MAX_FILL_FRAMES = 5 * 44100
# Audio must leave the jitter buffer this long before it is due: the playout queue and the
# DAC buffer sit between the two.
RELEASE_MARGIN = 0.5


class Channel(Enum):
    """The three UDP sockets of a session."""

    AUDIO = "audio"
    CONTROL = "control"
    TIMING = "timing"


@dataclass(frozen=True, slots=True)
class SessionPorts:
    """Our UDP ports, bound by the adapter before the session exists."""

    audio: int
    control: int
    timing: int


@dataclass(frozen=True, slots=True)
class ReceiverInfo:
    """Who we are, as published over mDNS and proven in Apple-Response."""

    name: str
    hw_addr: bytes  # the 6 bytes of the mDNS instance prefix
    model: str = "raopd"
    password: str | None = None

    @property
    def device_id(self) -> str:
        """The hardware address as 12 upper-case hex digits."""
        return self.hw_addr.hex().upper()


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Per-session behaviour that configuration controls."""

    jitter: JitterSettings = field(default_factory=JitterSettings)
    session_timeout: float = 60.0  # seconds without audio or requests before a session ends
    latency_offset: float = 0.0  # seconds added to the sender's latency (+ plays later)
    initial_volume: float = DEFAULT_VOLUME
    # How late the adapter may hand over an audio datagram (it reads in batches). A gap is
    # noticed that much later, so its repair window is that much shorter: audio still leaves
    # the jitter buffer RELEASE_MARGIN before it is due.
    input_delay: float = 0.0


class State(Enum):
    """Where the session is in its life."""

    CONNECTED = "connected"
    ANNOUNCED = "announced"
    READY = "ready"  # SETUP done
    PLAYING = "playing"  # RECORD done
    ENDED = "ended"


@dataclass(slots=True)
class SessionStats:
    """Counters for statistics and metrics."""

    requests: int = 0
    bad_requests: int = 0
    datagrams: int = 0
    bad_datagrams: int = 0
    foreign_datagrams: int = 0
    audio_packets: int = 0
    resent_packets: int = 0
    flushed_packets: int = 0
    undecodable: int = 0
    frames_out: int = 0
    silent_frames_out: int = 0
    resend_datagrams: int = 0
    oversized_requests: int = 0  # bodies over the RTSP reader's limit, refused with 413


class RaopSession:
    """One RTSP connection's state machine; see the module docstring."""

    def __init__(
        self,
        *,
        receiver: ReceiverInfo,
        ports: SessionPorts,
        local_ip: str,
        peer_ip: str,
        now: float,
        arbiter: PlayArbiter | None = None,
        settings: SessionSettings | None = None,
        nonce: str | None = None,
        session_id: int = 1,
    ) -> None:
        self.receiver = receiver
        self.ports = ports
        self.local_ip = local_ip
        self.peer_ip = _normalise_ip(peer_ip)
        self._peer_as_given = peer_ip  # datagrams usually carry exactly this: no parsing
        self.settings = settings or SessionSettings()
        self.arbiter = arbiter or PlayArbiter()
        self.session_id = session_id
        self.state = State.CONNECTED
        self.stats = SessionStats()
        # Requests seen, by method (and path or content type), in first-seen order.
        self.request_counts: Counter[str] = Counter()
        self.user_agent = ""
        self.client_name = ""
        self.dacp_id: str | None = None
        self.active_remote: str | None = None
        self.params: StreamParams | None = None
        self.volume = self.settings.initial_volume
        self.should_close = False
        # The adapter hangs a callable here so that preempt() can make it flush and close.
        self.wakeup: Callable[[], None] | None = None

        self._reader = RtspReader()
        self._out = bytearray()
        self._datagrams: list[tuple[Channel, bytes, tuple[str, int]]] = []
        self._events: deque[Event] = deque()
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(8)).decode()
        self._authorised = receiver.password is None
        self._last_activity = now
        self._cipher: PacketCipher | None = None
        self._decoder: Decoder | None = None
        self._jitter: JitterBuffer[AudioPacket] = JitterBuffer(self.settings.jitter)
        self._clock: ClockSync | None = None
        self._estimate: ClockEstimate | None = None
        self._control_addr: tuple[str, int] | None = None
        self._timing_addr: tuple[str, int] | None = None
        self._flush_until: int | None = None
        self._next_rtptime: int | None = None
        # Set when audio went missing (never repaired, undecodable): the next block is
        # preceded by silence up to its timestamp.
        self._fill_pending = False

    # ----------------------------------------------------------------- inputs

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the RTSP connection (any split); answers go to data_to_send()."""
        if self.should_close:
            return
        self._last_activity = now
        try:
            self._reader.receive_data(data)
            while (request := self._reader.next_request()) is not None:
                self.stats.requests += 1
                if request.body_refused:
                    self._refuse_oversized(request)
                    continue
                self._out += bytes(self._handle_request(request, now))
                if self.should_close:
                    return
        except ProtocolError as exc:
            self.stats.bad_requests += 1
            logger.warning("[session %d] bad RTSP request: %s", self.session_id, exc)
            self._out += bytes(RtspResponse(exc.status_hint, self._common_headers(None)))
            self.should_close = True

    def datagram_received(
        self, channel: Channel, data: bytes, addr: tuple[str, int], now: float
    ) -> None:
        """One UDP datagram on one of our ports. Never raises: bad input is counted."""
        self.stats.datagrams += 1
        if addr[0] != self._peer_as_given and _normalise_ip(addr[0]) != self.peer_ip:
            self.stats.foreign_datagrams += 1  # only the sender may feed its session
            return
        if self.state not in (State.READY, State.PLAYING) or self.params is None:
            self.stats.bad_datagrams += 1
            return
        try:
            packet = parse_datagram(data)
            if isinstance(packet, AudioPacket):
                self._audio_received(packet, now)
            elif isinstance(packet, ResentAudio):
                self.stats.resent_packets += 1
                self._audio_received(packet.packet, now)
            elif isinstance(packet, SyncPacket):
                self._last_activity = now
                if self._clock is not None:
                    self._clock.sync_received(packet, now)
                    self._clock_changed()
            elif isinstance(packet, TimingPacket):
                self._timing_received(packet, addr, now)
            else:
                self.stats.bad_datagrams += 1  # a resend request is ours to send, not receive
        except ProtocolError as exc:
            self.stats.bad_datagrams += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("[session %d] dropped datagram: %s", self.session_id, exc)

    def handle_timer(self, now: float) -> None:
        """Run whatever is due: releases, resend requests, timing requests, timeouts."""
        if self.state is State.ENDED:
            return
        if now - self._last_activity >= self.settings.session_timeout:
            self._end("timed out", now)
            # Close the connection as well: left open, the ended session went on answering
            # (and could ANNOUNCE its way back to playing) with no timer running.
            self.should_close = True
            return
        if self.state in (State.READY, State.PLAYING):
            self._release(now)
            self._send_resend_requests(now)
            if self._clock is not None and self._timing_addr is not None:
                due = self._clock.next_request_time()
                if due is None or due <= now:  # None: no request sent yet
                    self._datagrams.append(
                        (Channel.TIMING, self._clock.make_request(now), self._timing_addr)
                    )

    def connection_lost(self, now: float) -> None:
        """The TCP connection closed: the session ends with it."""
        self._end("connection closed", now)

    def preempt(self, reason: str) -> None:
        """Another sender took over (interruption allowed): stop and close."""
        self._end(reason, None)
        self.should_close = True
        if self.wakeup is not None:
            self.wakeup()

    # ---------------------------------------------------------------- outputs

    def data_to_send(self) -> bytes:
        """RTSP bytes to write to the connection."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def datagrams_to_send(self) -> list[tuple[Channel, bytes, tuple[str, int]]]:
        """(our channel to send from, payload, destination) triples."""
        datagrams, self._datagrams = self._datagrams, []
        return datagrams

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When handle_timer should next run."""
        if self.state is State.ENDED:
            return None
        deadline = self._last_activity + self.settings.session_timeout
        if self.state is State.READY or self.state is State.PLAYING:
            jitter_deadline = self._jitter.next_deadline()
            if jitter_deadline is not None and jitter_deadline < deadline:
                deadline = jitter_deadline
            if self._clock is not None and self._timing_addr is not None:
                clock_deadline = self._clock.next_request_time()
                if clock_deadline is not None and clock_deadline < deadline:
                    deadline = clock_deadline
        return deadline

    @property
    def jitter_stats(self) -> JitterStats:
        """The jitter buffer's counters (received, duplicates, late, missing, lost, …)."""
        return self._jitter.stats

    @property
    def estimate(self) -> ClockEstimate | None:
        """The latest clock estimate, if any."""
        return self._estimate

    def finish(self) -> None:
        """Release whatever the jitter buffer still holds (end of a replay)."""
        for item in self._jitter.drain():
            self._emit_released(item)

    # -------------------------------------------------------------- RTSP side

    def _handle_request(self, request: RtspRequest, now: float) -> RtspResponse:
        headers = self._common_headers(request)
        if not self._authorised and not self._check_auth(request):
            headers.append(("WWW-Authenticate", f'Digest realm="raop", nonce="{self._nonce}"'))
            # No credentials is the first half of every Digest handshake; credentials that
            # fail are a wrong password (or a replayed nonce): say which, and log it.
            reason = None
            if request.headers.get("Authorization") is not None:
                reason = _auth_failure(request, self._nonce)
                AUTH_FAILURES.failed(self.peer_ip, request.method, reason, now)
                reason = f"Unauthorized ({reason})"
            return RtspResponse(401, headers, reason=reason)
        challenge = request.headers.get("Apple-Challenge")
        if challenge is not None:
            try:
                headers.append(
                    (
                        "Apple-Response",
                        apple_response(challenge, self.local_ip, self.receiver.hw_addr),
                    )
                )
            except ProtocolError as exc:
                logger.warning("[session %d] bad Apple-Challenge: %s", self.session_id, exc)
        self._note_sender(request)
        method = request.method
        self.request_counts[_describe(request)] += 1
        handler = _HANDLERS.get((method, None)) or _HANDLERS.get((method, _path(request.uri)))
        if handler is None:
            return RtspResponse(501, headers)
        try:
            return handler(self, request, headers, now)
        except ProtocolError as exc:
            self.stats.bad_requests += 1
            logger.warning("[session %d] %s refused: %s", self.session_id, method, exc)
            return RtspResponse(exc.status_hint, headers)

    def _common_headers(self, request: RtspRequest | None) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        if request is not None:
            cseq = request.headers.get("CSeq")
            if cseq is not None:
                headers.append(("CSeq", cseq))
        headers.append(("Server", f"AirTunes/{SERVER_VERSION}"))
        return headers

    def _check_auth(self, request: RtspRequest) -> bool:
        """HTTP Digest (RFC 2069, MD5, no qop), lenient about hex case; OPTIONS is exempt."""
        if request.method == "OPTIONS":
            return True
        value = request.headers.get("Authorization")
        password = self.receiver.password
        if value is None or password is None or not value.lower().startswith("digest "):
            return False
        fields = _parse_digest(value[7:])
        if fields.get("nonce") != self._nonce:
            return False
        username = fields.get("username", "")
        realm = fields.get("realm", "raop")
        uri = fields.get("uri", request.uri)
        response = fields.get("response", "").lower()
        for upper in (False, True):
            ha1 = _md5_hex(f"{username}:{realm}:{password}", upper)
            ha2 = _md5_hex(f"{request.method}:{uri}", upper)
            if _md5_hex(f"{ha1}:{self._nonce}:{ha2}", upper).lower() == response:
                self._authorised = True
                return True
        return False

    def _refuse_oversized(self, request: RtspRequest) -> None:
        """A body over the limit (a 20 MB cover): 413, counted; the stream goes on."""
        self.stats.oversized_requests += 1
        logger.warning(
            "[session %d] %s with a %d-byte body refused (413): over the %d-byte limit",
            self.session_id,
            _describe(request),
            request.body_refused,
            self._reader.max_body_bytes,
        )
        self._out += bytes(RtspResponse(413, self._common_headers(request)))

    def _note_sender(self, request: RtspRequest) -> None:
        h = request.headers
        self.user_agent = h.get("User-Agent") or self.user_agent
        self.client_name = h.get("X-Apple-Client-Name") or self.client_name
        self.dacp_id = h.get("DACP-ID") or self.dacp_id
        self.active_remote = h.get("Active-Remote") or self.active_remote

    def _options(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        headers.append(("Public", PUBLIC_METHODS))
        return RtspResponse(200, headers)

    def _announce(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        params = parse_sdp(request.body)
        cipher = None
        if params.rsaaeskey is not None and params.aesiv is not None:
            cipher = PacketCipher(unwrap_session_key(params.rsaaeskey), params.aesiv)
        decoder = make_decoder(params)
        if not self.arbiter.claim(self):
            logger.info("[session %d] refused (453): another sender is playing", self.session_id)
            return RtspResponse(453, headers)
        self.params, self._cipher, self._decoder = params, cipher, decoder
        self._jitter.reset()
        self._next_rtptime = None
        self._flush_until = None
        self._clock = ClockSync(
            min_latency_frames=params.min_latency_frames,
            max_latency_frames=params.max_latency_frames,
            latency_offset=self.settings.latency_offset,
            rate=params.sample_rate,
        )
        self._estimate = None
        self.state = State.ANNOUNCED
        return RtspResponse(200, headers)

    def _setup(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        if self.state is State.CONNECTED or self.params is None:
            raise ProtocolError("SETUP before ANNOUNCE", status_hint=455)
        transport = request.headers.get("Transport") or ""
        options = _transport_options(transport)
        try:
            control_port = int(options.get("control_port", "0"))
            timing_port = int(options.get("timing_port", "0"))
        except ValueError as exc:
            raise ProtocolError(f"bad port in Transport: {transport!r}") from exc
        if not (0 <= control_port < 65536 and 0 <= timing_port < 65536):
            raise ProtocolError(f"port out of range in Transport: {transport!r}")
        self._control_addr = (self.peer_ip, control_port) if control_port else None
        self._timing_addr = (self.peer_ip, timing_port) if timing_port else None
        if self.state is State.ANNOUNCED:
            self.state = State.READY
        headers += [
            (
                "Transport",
                "RTP/AVP/UDP;unicast;interleaved=0-1;mode=record;"
                f"control_port={self.ports.control};timing_port={self.ports.timing};"
                f"server_port={self.ports.audio}",
            ),
            ("Session", str(self.session_id)),
            ("Audio-Jack-Status", "connected; type=analog"),
        ]
        # Start the timing exchange now: some senders wait for it before they RECORD.
        self.handle_timer(now)
        return RtspResponse(200, headers)

    def _record(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        if self.state not in (State.READY, State.PLAYING) or self.params is None:
            raise ProtocolError("RECORD before SETUP", status_hint=455)
        seq, rtptime = _rtp_info(request)
        if self.state is State.PLAYING:
            logger.info("[session %d] duplicate RECORD", self.session_id)
        self.state = State.PLAYING
        if rtptime is not None:
            self._start_at(seq, rtptime)
        self._events.append(StreamStarted(self.params, rtptime, self.user_agent, self.client_name))
        headers.append(("Audio-Latency", str(AUDIO_LATENCY_FRAMES)))
        return RtspResponse(200, headers)

    def _flush(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        seq, rtptime = _rtp_info(request)
        self._jitter.reset()
        self._next_rtptime = None
        self._fill_pending = False
        if self._clock is not None:
            self._clock.flushed()  # the sender may resume on a new RTP timeline
        if rtptime is not None:
            self._start_at(seq, rtptime)
        self._events.append(Flushed(rtptime))
        return RtspResponse(200, headers)

    def _teardown(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        self._end("teardown", now)
        headers.append(("Connection", "close"))
        self.should_close = True
        return RtspResponse(200, headers)

    def _set_parameter(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        _, rtptime = _rtp_info(request)
        if content_type == "text/parameters":
            values = parse_parameters(request.body)
            if "volume" in values:
                volume = parse_volume(values["volume"])
                self.volume = volume
                self._events.append(VolumeChanged(volume))
            if "progress" in values:
                progress = parse_progress(values["progress"])
                self._events.append(
                    ProgressReceived(progress.start, progress.current, progress.end)
                )
        elif content_type == "application/x-dmap-tagged":
            self._events.append(MetadataReceived(parse_dmap(request.body), rtptime))
        elif content_type.startswith("image/"):
            self._events.append(ArtworkReceived(content_type, request.body, rtptime))
        # Anything else is accepted and ignored, as every AirPlay receiver does.
        return RtspResponse(200, headers)

    def _get_parameter(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        names = request.body.decode("ascii", "replace").split()
        if "volume" in names:
            headers.append(("Content-Type", "text/parameters"))
            return RtspResponse(200, headers, f"volume: {self.volume:.6f}\r\n".encode())
        return RtspResponse(200, headers)

    def _info(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        # Stock pyatv gives up unless /info answers with a binary plist.
        info = {
            "name": self.receiver.name,
            "model": self.receiver.model,
            "deviceid": ":".join(f"{b:02X}" for b in self.receiver.hw_addr),
            "macAddress": ":".join(f"{b:02X}" for b in self.receiver.hw_addr),
            "sourceVersion": SERVER_VERSION,
            "statusFlags": 4,
            "pw": self.receiver.password is not None,
        }
        headers.append(("Content-Type", "application/x-apple-binary-plist"))
        return RtspResponse(200, headers, plistlib.dumps(info, fmt=plistlib.FMT_BINARY))

    def _feedback(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        return RtspResponse(200, headers)

    # --------------------------------------------------------------- UDP side

    def _audio_received(self, packet: AudioPacket, now: float) -> None:
        self._last_activity = now
        self.stats.audio_packets += 1
        if self._flush_until is not None and rtp_diff(packet.rtptime, self._flush_until) < 0:
            self.stats.flushed_packets += 1  # in flight from before the flush
            return
        self._jitter.insert(packet, now)
        self._release(now)

    def _release(self, now: float) -> None:
        for item in self._jitter.pop_ready(now):
            self._emit_released(item)

    def _emit_released(self, item: AudioPacket | Lost) -> None:
        if isinstance(item, Lost):
            self._fill_pending = True  # the next packet's timestamp says how much is missing
            return
        assert self._decoder is not None
        payload = item.payload
        try:
            if self._cipher is not None:
                payload = self._cipher.decrypt(payload)
            pcm = self._decoder.decode(payload)
        except ProtocolError as exc:
            self.stats.undecodable += 1
            self._fill_pending = True
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "[session %d] undecodable packet %d: %s", self.session_id, item.seq, exc
                )
            return
        self._emit_audio(item.rtptime, pcm)

    def _emit_audio(self, rtptime: int, pcm: np.ndarray) -> None:
        expected = self._next_rtptime
        if expected is not None:
            ahead = rtp_diff(rtptime, expected)
            if self._fill_pending and 0 < ahead <= MAX_FILL_FRAMES:
                channels = pcm.shape[1] if pcm.ndim == 2 else 2
                silence = np.zeros((ahead, channels), dtype=np.int16)
                self.stats.silent_frames_out += ahead
                self._events.append(AudioReady(expected, silence, lost=True))
            elif -MAX_FILL_FRAMES <= ahead < 0:
                # Overlaps audio already out: keep only the new part.
                pcm = pcm[-ahead:]
                rtptime = expected
                if len(pcm) == 0:
                    return
        self._fill_pending = False
        frames = len(pcm)
        self.stats.frames_out += frames
        self._next_rtptime = rtp_add(rtptime, frames)
        self._events.append(AudioReady(rtptime, pcm))

    def _send_resend_requests(self, now: float) -> None:
        if self._control_addr is None:
            return
        for first_seq, count in self._jitter.resend_requests(now):
            self.stats.resend_datagrams += 1
            self._datagrams.append(
                (Channel.CONTROL, bytes(ResendRequest(first_seq, count)), self._control_addr)
            )

    def _timing_received(self, packet: TimingPacket, addr: tuple[str, int], now: float) -> None:
        if packet.reply:
            if self._clock is not None:
                self._clock.reply_received(packet, now)
                self._clock_changed()
            return
        # A sender asking us for the time: answering costs nothing (protocol.md §5.3).
        our_time = seconds_to_ntp(now)
        reply = TimingPacket(True, packet.transmit, our_time, our_time)
        self._datagrams.append((Channel.TIMING, bytes(reply), addr))

    def _clock_changed(self) -> None:
        assert self._clock is not None
        estimate = self._clock.estimate()
        if estimate is not None and estimate is not self._estimate:
            self._estimate = estimate
            latency = estimate.latency_frames / max(1, estimate.rate)
            window = min(max(latency - RELEASE_MARGIN - self.settings.input_delay, 0.25), 4.0)
            self._jitter.set_repair_window(window)
            self._events.append(ClockUpdated(estimate))

    # ---------------------------------------------------------------- helpers

    def _start_at(self, seq: int | None, rtptime: int) -> None:
        """Audio starts at (seq, rtptime): earlier audio is dropped, losses before it count."""
        self._flush_until = rtptime
        self._next_rtptime = rtptime
        self._jitter.reset(start_seq=seq)

    def _end(self, reason: str, now: float | None) -> None:
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.arbiter.release(self)
        self._cipher = None  # forget the keys
        self._jitter.reset()
        self._events.append(SessionEnded(reason))
        logger.info("[session %d] ended: %s", self.session_id, reason)


_Handler = Callable[[RaopSession, RtspRequest, list[tuple[str, str]], float], RtspResponse]

_HANDLERS: dict[tuple[str, str | None], _Handler] = {
    ("OPTIONS", None): RaopSession._options,
    ("ANNOUNCE", None): RaopSession._announce,
    ("SETUP", None): RaopSession._setup,
    ("RECORD", None): RaopSession._record,
    ("FLUSH", None): RaopSession._flush,
    ("TEARDOWN", None): RaopSession._teardown,
    ("SET_PARAMETER", None): RaopSession._set_parameter,
    ("GET_PARAMETER", None): RaopSession._get_parameter,
    ("GET", "/info"): RaopSession._info,
    ("POST", "/feedback"): RaopSession._feedback,
}


def _describe(request: RtspRequest) -> str:
    """A short name for a request: method, plus the path or the body's content type."""
    if request.method in ("GET", "POST"):
        return f"{request.method} {_path(request.uri)}"
    content_type = request.headers.get("Content-Type")
    if request.method == "SET_PARAMETER" and content_type:
        return f"SET_PARAMETER [{content_type}]"
    return request.method


def _path(uri: str) -> str:
    path = uri.split("?", 1)[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return path


def _rtp_info(request: RtspRequest) -> tuple[int | None, int | None]:
    """(seq, rtptime) from an RTP-Info header, each None when absent."""
    value = request.headers.get("RTP-Info")
    if not value:
        return None, None
    fields = _transport_options(value)
    try:
        seq = int(fields["seq"]) % 65536 if "seq" in fields else None
        rtptime = int(fields["rtptime"]) % (1 << 32) if "rtptime" in fields else None
    except ValueError as exc:
        raise ProtocolError(f"bad RTP-Info: {value!r}") from exc
    return seq, rtptime


def _transport_options(value: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for token in value.replace(",", ";").split(";"):
        key, sep, val = token.strip().partition("=")
        if sep:
            options[key.strip().lower()] = val.strip()
    return options


AUTH_LOG_INTERVAL = 60.0  # seconds: at most one line per peer, with the failures in between


class AuthFailureLog:
    """Failed authentications at INFO: peer, method, why; one line per peer per interval."""

    def __init__(self, interval: float = AUTH_LOG_INTERVAL) -> None:
        self.interval = interval
        self._peers: dict[str, tuple[float, int]] = {}  # peer -> (last logged, failures since)

    def failed(self, peer: str, method: str, why: str, now: float) -> None:
        last = self._peers.get(peer)
        if last is not None and 0 <= now - last[0] < self.interval:
            self._peers[peer] = (last[0], last[1] + 1)
            return
        if len(self._peers) >= 1024:  # bounded however many peers try
            self._peers.clear()
        self._peers[peer] = (now, 0)
        more = f"; {last[1]} more failures since the last line" if last and last[1] else ""
        logger.info("authentication failed from %s: %s, %s%s", peer, method, why, more)


AUTH_FAILURES = AuthFailureLog()


def _auth_failure(request: RtspRequest, nonce: str) -> str:
    """Why credentials that were given did not authenticate (the 401's reason phrase)."""
    value = request.headers.get("Authorization") or ""
    if not value.lower().startswith("digest "):
        return "not Digest credentials"
    if _parse_digest(value[7:]).get("nonce") != nonce:
        return "stale nonce"
    return "wrong password"


def _parse_digest(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key.strip().lower()] = val.strip().strip('"')
    return fields


def _md5_hex(text: str, upper: bool) -> str:
    digest = hashlib.md5(text.encode("utf-8", "replace")).hexdigest()
    return digest.upper() if upper else digest


def _normalise_ip(ip: str) -> str:
    """An address as text, without %scope, with IPv4-mapped IPv6 as plain IPv4."""
    ip = ip.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


__all__ = [
    "Channel",
    "RaopSession",
    "ReceiverInfo",
    "SessionPorts",
    "SessionSettings",
    "State",
]
