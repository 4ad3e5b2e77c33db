"""RaopSession: everything one sender's RTSP connection and its three UDP channels do.

The session is sans-I/O, like aioquic's QuicConnection. It is driven by four inputs:
`receive_data(data, now)` (RTSP bytes from the TCP connection), `datagram_received(channel,
data, addr, now)`, `handle_timer(now)` and `connection_lost(now)`. The adapter then collects
`data_to_send()` (RTSP responses), `datagrams_to_send()` and `next_event()`, and arms one timer
at `get_timer()`. Nothing here reads a clock or touches a socket, so `raopd replay` runs a
recorded capture through exactly this code.

The audio itself (jitter buffer, decryption, decoding, silence fill) is `AudioPath`'s job
(core/audio_path.py); the session makes one per ANNOUNCE and feeds it the audio datagrams.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import plistlib
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from raopd.core import digest
from raopd.core.arbiter import PlayArbiter
from raopd.core.audio_format import FIXED_LATENCY_FRAMES
from raopd.core.audio_path import MAX_AHEAD, AudioPath, AudioStats
from raopd.core.clock import ClockEstimate, ClockStats, ClockSync
from raopd.core.dmap import parse_dmap
from raopd.core.events import (
    ArtworkReceived,
    ClockUpdated,
    EndReason,
    Event,
    Flushed,
    MetadataReceived,
    ProgressReceived,
    SessionEnded,
    StreamStarted,
    VolumeChanged,
)
from raopd.core.jitter import JitterSettings, JitterStats
from raopd.core.latency import LatencyBudget, latency_budget
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
from raopd.core.sessionlog import SessionLog, clip
from raopd.core.throttle import PeerThrottle
from raopd.errors import ProtocolError
from raopd.media.crypto import PacketCipher, apple_response, unwrap_session_key
from raopd.media.decoder import make_decoder

logger = logging.getLogger(__name__)

SERVER_VERSION = "105.1"  # AirTunes version of the AirPort Express that senders know best
PUBLIC_METHODS = (
    "ANNOUNCE, SETUP, RECORD, PAUSE, FLUSH, TEARDOWN, OPTIONS, GET_PARAMETER, SET_PARAMETER"
)
DEFAULT_VOLUME = 0.0  # full scale until a sender sets a volume (some never do)
REALM = "raop"  # the Digest realm every AirPlay 1 receiver uses
# Requests answered per input step: a pipelined flood is answered a slice at a time, the
# adapter going back to its event loop in between (see `backlogged`).
MAX_REQUESTS_PER_STEP = 16


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
    # The longest the adapter may batch audio datagrams (0: it hands each over at once).
    # The stream's latency budget (core/latency.py) picks the batch delay up to this, and
    # takes it off the repair window.
    input_delay: float = 0.0
    # A connection that is not playing must complete a request at least this often: a sender
    # goes from connecting to RECORD in well under a second, an idle socket is closed.
    idle_timeout: float = 10.0
    # A request whose first byte has arrived must be complete this long after (trickling one
    # byte at a time does not keep a connection alive).
    request_timeout: float = 10.0
    # True: an Apple-Challenge waits for the adapter to compute the signature off the event
    # loop (signature_wanted / signature_made); False: it is computed inline (replay, tests).
    defer_signatures: bool = False
    # The output device's buffer and period, frames (0: a file, which has no lead).
    output_buffer_frames: int = 0
    output_period_frames: int = 0


class State(Enum):
    """Where the session is in its life."""

    CONNECTED = "connected"
    ANNOUNCED = "announced"  # holds the play lock from here on
    READY = "ready"  # SETUP done
    PLAYING = "playing"  # RECORD done
    ENDED = "ended"


# The session's rules as data (h11 keeps its transitions the same way):
# Rule 1: a request whose method is not in its state's row of ALLOWED gets 455 and changes
#         nothing; a method no handler knows gets 501 in any state.
# Rule 2: a request in PLAY_LOCKED may only change audio, volume, metadata or the output if
#         the session holds the play lock (ANNOUNCE claims it); others get 453.
# Rule 3: a request answered 200 moves the session along TRANSITIONS (no entry: it stays).
# Rule 4: every way out (TEARDOWN, connection lost, protocol error, size limit, timeout,
#         interruption, eviction, shutdown, internal error) goes through end(), which releases
#         the play lock and emits SessionEnded once; the adapter then closes the connection,
#         its UDP ports and its timer, and the daemon stops the output stream.
_ANYTIME = frozenset({"OPTIONS", "GET_PARAMETER", "TEARDOWN", "GET", "POST"})
_STREAM = frozenset({"ANNOUNCE", "SETUP", "RECORD", "FLUSH", "SET_PARAMETER"})
ALLOWED: dict[State, frozenset[str]] = {
    State.CONNECTED: _ANYTIME | {"ANNOUNCE"},
    State.ANNOUNCED: _ANYTIME | {"ANNOUNCE", "SETUP", "SET_PARAMETER"},
    State.READY: _ANYTIME | _STREAM,
    State.PLAYING: _ANYTIME | _STREAM,
    State.ENDED: frozenset(),
}
PLAY_LOCKED = frozenset({"SETUP", "RECORD", "FLUSH", "SET_PARAMETER"})
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.CONNECTED, "ANNOUNCE"): State.ANNOUNCED,
    (State.ANNOUNCED, "ANNOUNCE"): State.ANNOUNCED,
    (State.READY, "ANNOUNCE"): State.ANNOUNCED,
    (State.PLAYING, "ANNOUNCE"): State.ANNOUNCED,
    (State.ANNOUNCED, "SETUP"): State.READY,
    (State.READY, "RECORD"): State.PLAYING,
}


@dataclass(slots=True)
class SessionStats:
    """Counters for statistics and metrics."""

    requests: int = 0
    bad_requests: int = 0
    refused_in_state: int = 0  # 455: a method the session's state does not allow
    refused_not_playing: int = 0  # 453: a stream request from a session without the play lock
    auth_failures: int = 0
    datagrams: int = 0
    bad_datagrams: int = 0
    foreign_datagrams: int = 0
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
        arbiter: PlayArbiter[RaopSession] | None = None,
        settings: SessionSettings | None = None,
        nonce: str | None = None,
        session_id: int = 1,
        throttle: PeerThrottle | None = None,
    ) -> None:
        self.receiver = receiver
        self.ports = ports
        self.local_ip = local_ip
        self.peer_ip = normalise_ip(peer_ip)
        self._peer_as_given = peer_ip  # datagrams usually carry exactly this: no parsing
        self.settings = settings or SessionSettings()
        self.arbiter: PlayArbiter[RaopSession] = arbiter or PlayArbiter()
        self.throttle = throttle or PeerThrottle()
        self.session_id = session_id
        self.log = SessionLog(logger, session_id)
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
        self.end_reason: EndReason | None = None
        # An Apple-Challenge waiting for its signature (defer_signatures): the adapter signs
        # it off the event loop and hands the result to signature_made().
        self.signature_wanted: str | None = None
        # True when requests already read wait only for their turn (MAX_REQUESTS_PER_STEP):
        # the adapter calls resume() once other work had its chance and the peer reads.
        self.backlogged = False

        self._reader = RtspReader()
        self._out = bytearray()
        self._datagrams: list[tuple[Channel, bytes, tuple[str, int]]] = []
        self._events: deque[Event] = deque()
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(8)).decode()
        self._authorised = receiver.password is None
        self._last_activity = now  # a complete request, audio or a sync
        self._last_request = now  # a complete request
        self._partial_since: float | None = None  # first byte of an incomplete request
        self._pending: RtspRequest | None = None  # read, not answered yet (held or signing)
        self._hold_until: float | None = None  # no request is handled before this
        self._signature: str | None = None  # Apple-Response for the pending request
        self._signed = False
        # Where each channel's datagrams must come from: the port the sender declared in
        # SETUP, or the first one it used (latched). Anything else is foreign.
        self._sources: dict[Channel, tuple[str, int]] = {}
        # One AudioPath per stream (ANNOUNCE); counters carry over from stream to stream.
        self._audio: AudioPath | None = None
        self._budget: LatencyBudget | None = None
        self.audio_stats = AudioStats()
        self._jitter_stats = JitterStats()
        self._clock: ClockSync | None = None
        self._estimate: ClockEstimate | None = None
        self._control_addr: tuple[str, int] | None = None
        self._timing_addr: tuple[str, int] | None = None

    # ----------------------------------------------------------------- inputs

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the RTSP connection (any split); answers go to data_to_send()."""
        if self.should_close:
            return
        try:
            self._reader.receive_data(data)
        except ProtocolError as exc:
            self._framing_error(exc, now)
            return
        self._process_requests(now)

    @property
    def wants_input(self) -> bool:
        """False while requests already read wait (throttled, signing, backlog): stop reading."""
        return not self.should_close and self._pending is None and not self.backlogged

    def resume(self, now: float) -> None:
        """Answer the next slice of a backlog of pipelined requests."""
        self.backlogged = False
        self._process_requests(now)

    def signature_made(self, apple_response: str | None, now: float) -> None:
        """The adapter's answer to `signature_wanted` (None: the challenge was unusable)."""
        if self.signature_wanted is None:
            return
        self.signature_wanted = None
        self._signature, self._signed = apple_response, True
        self._process_requests(now)

    def _process_requests(self, now: float) -> None:
        """Answer the complete requests that may be answered now, in order, a slice a step."""
        answered = 0
        while not self.should_close:
            if answered >= MAX_REQUESTS_PER_STEP:
                self.backlogged = True
                return
            request = self._pending
            if request is None:
                try:
                    request = self._reader.next_request()
                except ProtocolError as exc:
                    self._framing_error(exc, now)
                    return
                if request is None:
                    if self._reader.buffered == 0:
                        self._partial_since = None
                    elif self._partial_since is None:
                        self._partial_since = now
                    return
                self._partial_since = None
                self._last_request = self._last_activity = now
                self.stats.requests += 1
                if request.body_refused:
                    self._refuse_oversized(request, now)
                    answered += 1
                    continue
                self._pending = request
            if not self._ready_to_answer(request, now):
                return
            self._pending = None
            self._out += bytes(self._handle_request(request, now))
            self._signature, self._signed = None, False
            answered += 1

    def _ready_to_answer(self, request: RtspRequest, now: float) -> bool:
        """Gates before a request is handled: Digest back-off, then the RSA signature."""
        if self._hold_until is not None:
            if now < self._hold_until:
                return False
            self._hold_until = None
        if self.signature_wanted is not None:
            return False
        if not self._authorised and request.headers.get("Authorization") is not None:
            allowed_at = self.throttle.auth_allowed_at(self.peer_ip, now)
            if allowed_at > now:
                self._hold_until = allowed_at
                return False
        # An encrypted ANNOUNCE costs an RSA decryption (inline, ~30 ms on a Pi): it spends
        # from the same per-address budget as a challenge.
        if request.method == "ANNOUNCE" and b"rsaaeskey" in request.body and not self._signed:
            retry_at = self.throttle.take_challenge(self.peer_ip, now)
            if retry_at is not None:
                self._hold_until = retry_at
                return False
            if request.headers.get("Apple-Challenge") is None:
                self._signed = True  # budget spent for this request
        challenge = request.headers.get("Apple-Challenge")
        if challenge is not None and not self._signed:
            retry_at = self.throttle.take_challenge(self.peer_ip, now)
            if retry_at is not None:
                self._hold_until = retry_at
                return False
            if self.settings.defer_signatures:
                self.signature_wanted = challenge
                return False
            try:
                self._signature = apple_response(challenge, self.local_ip, self.receiver.hw_addr)
            except ProtocolError as exc:
                self.log.warn_limited(now, "bad Apple-Challenge: %s", clip(exc))
                self._signature = None
            self._signed = True
        return True

    def _framing_error(self, exc: ProtocolError, now: float) -> None:
        """The byte stream cannot be framed any more: answer, then end the session."""
        self.stats.bad_requests += 1
        self.log.warn_limited(now, "bad RTSP request: %s", clip(exc))
        self._out += bytes(RtspResponse(exc.status_hint, self._common_headers(None)))
        too_large = exc.status_hint in (413, 431)
        self.end(EndReason.TOO_LARGE if too_large else EndReason.PROTOCOL_ERROR, now)

    def datagram_received(
        self, channel: Channel, data: bytes, addr: tuple[str, int], now: float
    ) -> None:
        """One UDP datagram on one of our ports. Never raises: bad input is counted."""
        self.stats.datagrams += 1
        if not self._from_sender(channel, addr):
            self.stats.foreign_datagrams += 1  # only the sender may feed its session
            return
        if self.state not in (State.READY, State.PLAYING) or self.params is None:
            self.stats.bad_datagrams += 1
            return
        try:
            packet = parse_datagram(data)
            if isinstance(packet, AudioPacket):
                self._audio_received(packet, now, resent=False)
            elif isinstance(packet, ResentAudio):
                self._audio_received(packet.packet, now, resent=True)
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
                self.log.debug("dropped datagram: %s", clip(exc))

    def _from_sender(self, channel: Channel, addr: tuple[str, int]) -> bool:
        """The sender's address, and the port it declared or first used on this channel."""
        if addr[0] != self._peer_as_given and normalise_ip(addr[0]) != self.peer_ip:
            return False
        if self.state not in (State.READY, State.PLAYING):
            return True  # counted as bad by the caller; nothing to latch yet
        source = self._sources.get(channel)
        if source is None:
            self._sources[channel] = (addr[0], addr[1])  # first use latches the port
            return True
        return source[1] == addr[1]

    def handle_timer(self, now: float) -> None:
        """Run whatever is due: releases, resend requests, timing requests, timeouts."""
        if self.state is State.ENDED:
            return
        if now >= self._idle_deadline():
            self.end(EndReason.TIMED_OUT, now)
            return
        if self._pending is not None and self._hold_until is not None:
            self._process_requests(now)
            if self.should_close:
                return
        if self.state in (State.READY, State.PLAYING):
            self._release(now)
            if self._audio is not None:
                self._audio.tick(now)
            self._send_resend_requests(now)
            if self._clock is not None and self._timing_addr is not None:
                due = self._clock.next_request_time()
                if due is None or due <= now:  # None: no request sent yet
                    self._datagrams.append(
                        (Channel.TIMING, self._clock.make_request(now), self._timing_addr)
                    )

    def connection_lost(self, now: float) -> None:
        """The TCP connection closed: the session ends with it."""
        self.end(EndReason.CONNECTION_CLOSED, now)

    def end(self, reason: EndReason, now: float | None) -> None:
        """The one way a session ends (Rule 4): idempotent, whatever the reason.

        Releases the play lock, forgets the keys and buffered audio, emits SessionEnded and
        asks the adapter to close (`should_close`): it then releases the connection, the UDP
        ports and the timer, and the daemon's router ends the output stream.
        """
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.end_reason = reason
        self.should_close = True
        self.arbiter.release(self)
        if self._audio is not None:
            # Forgets the keys and the buffered audio, and reports what the warning rate
            # limit held back.
            self._audio.close(self._last_activity if now is None else now)
        self._pending = None
        self._hold_until = None
        self.signature_wanted = None
        self._events.append(SessionEnded(reason))
        self.log.info("ended: %s", reason)

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
        deadline = self._idle_deadline()
        if self._pending is not None and self._hold_until is not None:
            deadline = min(deadline, self._hold_until)
        if self.state is State.READY or self.state is State.PLAYING:
            jitter_deadline = self._audio.next_deadline() if self._audio is not None else None
            if jitter_deadline is not None and jitter_deadline < deadline:
                deadline = jitter_deadline
            if self._clock is not None and self._timing_addr is not None:
                clock_deadline = self._clock.next_request_time()
                if clock_deadline is not None and clock_deadline < deadline:
                    deadline = clock_deadline
        return deadline

    def _idle_deadline(self) -> float:
        """When the session times out unless something happens first."""
        if self.state is State.PLAYING:
            deadline = self._last_activity + self.settings.session_timeout
        else:
            # Not playing: only complete requests count, and not for long.
            deadline = self._last_request + self.settings.idle_timeout
        if self._partial_since is not None:
            deadline = min(deadline, self._partial_since + self.settings.request_timeout)
        return deadline

    @property
    def input_batch_delay(self) -> float:
        """How long the adapter should batch audio datagrams now (the latency budget's B)."""
        if self._budget is None:
            return self.settings.input_delay
        return min(self._budget.batch_delay, self.settings.input_delay)

    @property
    def latency_budget(self) -> LatencyBudget | None:
        """The current stream's latency budget (None before ANNOUNCE)."""
        return self._budget

    @property
    def audio_path(self) -> AudioPath | None:
        """The current stream's audio path (None before ANNOUNCE)."""
        return self._audio

    @property
    def jitter_stats(self) -> JitterStats:
        """The jitter buffer's counters (received, duplicates, late, missing, lost, …)."""
        return self._jitter_stats

    @property
    def estimate(self) -> ClockEstimate | None:
        """The latest clock estimate, if any."""
        return self._estimate

    @property
    def clock_stats(self) -> ClockStats | None:
        """The clock's counters (rejected timing samples, late syncs...), once announced."""
        return self._clock.stats if self._clock is not None else None

    def finish(self) -> None:
        """Release whatever the jitter buffer still holds (end of a replay)."""
        if self._audio is not None:
            self._events.extend(self._audio.drain(self._last_activity))

    # -------------------------------------------------------------- RTSP side

    def _handle_request(self, request: RtspRequest, now: float) -> RtspResponse:
        headers = self._common_headers(request)
        if not self._authorised and not self._check_auth(request, now):
            headers.append(("WWW-Authenticate", digest.challenge(REALM, self._nonce)))
            # No credentials is the first half of every Digest handshake; credentials that
            # fail are a wrong password (or a replayed nonce): the reason phrase says which.
            reason = None
            if request.headers.get("Authorization") is not None:
                reason = f"Unauthorized ({_auth_failure(request, self._nonce)})"
            return RtspResponse(401, headers, reason=reason)
        if self._signature is not None:
            headers.append(("Apple-Response", self._signature))
        self._note_sender(request)
        method = request.method
        self.request_counts[_describe(request)] += 1
        handler = _HANDLERS.get((method, None)) or _HANDLERS.get((method, _path(request.uri)))
        if handler is None:
            return RtspResponse(501, headers)
        if method not in ALLOWED[self.state]:  # Rule 1
            self.stats.refused_in_state += 1
            self.log.warn_limited(now, "%s refused (455) in state %s", method, self.state.value)
            return RtspResponse(455, headers)
        if method in PLAY_LOCKED and not self.arbiter.holds(self):  # Rule 2
            self.stats.refused_not_playing += 1
            self.log.warn_limited(now, "%s refused (453): not the playing sender", method)
            return RtspResponse(453, headers)
        state = self.state
        try:
            response = handler(self, request, headers, now)
        except ProtocolError as exc:
            self.stats.bad_requests += 1
            self.log.warn_limited(now, "%s refused: %s", method, clip(exc))
            return RtspResponse(exc.status_hint, headers)
        if response.status == 200 and self.state is state:  # Rule 3
            self.state = TRANSITIONS.get((state, method), state)
        return response

    def _common_headers(self, request: RtspRequest | None) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        if request is not None:
            cseq = request.headers.get("CSeq")
            # Echoed only when it is what RTSP says it is, a number: anything else (text that
            # was not UTF-8, for one) could not be echoed byte for byte.
            if cseq is not None and cseq.isascii() and cseq.isdigit() and len(cseq) <= 10:
                headers.append(("CSeq", cseq))
        headers.append(("Server", f"AirTunes/{SERVER_VERSION}"))
        return headers

    def _check_auth(self, request: RtspRequest, now: float) -> bool:
        """Digest (core/digest.py); OPTIONS is exempt. Wrong answers are throttled."""
        if request.method == "OPTIONS":
            return True
        value = request.headers.get("Authorization")
        password = self.receiver.password
        if value is None or password is None:
            return False
        if digest.verify(
            value,
            password=password,
            realm=REALM,
            nonce=self._nonce,
            method=request.method,
            uri=request.uri,
        ):
            self._authorised = True
            self.throttle.auth_succeeded(self.peer_ip)
            return True
        self.stats.auth_failures += 1
        self.throttle.auth_failed(self.peer_ip, now)
        AUTH_FAILURES.failed(self.peer_ip, request.method, _auth_failure(request, self._nonce), now)
        return False

    def _refuse_oversized(self, request: RtspRequest, now: float) -> None:
        """A body over the limit (a 20 MB cover): 413, counted; the stream goes on."""
        self.stats.oversized_requests += 1
        self.log.warn_limited(
            now,
            "%s with a %d-byte body refused (413): over the %d-byte limit",
            clip(_describe(request)),
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
        fault = self.arbiter.output_fault
        if fault is not None:
            self.log.warn_limited(now, "refused (503): the audio output failed: %s", fault)
            return RtspResponse(503, headers)
        if not self.arbiter.claim(self):
            self.log.info("refused (453): another sender is playing")
            return RtspResponse(453, headers)
        self.params = params
        audio = AudioPath(
            decoder,
            frames_per_packet=params.frames_per_packet,
            cipher=cipher,
            jitter=self.settings.jitter,
            # Only a device plays in real time; a file takes audio as fast as it comes.
            max_ahead=MAX_AHEAD if self.settings.output_buffer_frames else None,
            label=f"[session {self.session_id}] {clip(self.user_agent or 'sender')} at "
            f"{self.peer_ip}",
        )
        # Counters run over the session's streams: the new path adds to the same objects.
        audio.stats = self.audio_stats
        audio.jitter.stats = self._jitter_stats
        self._audio = audio
        # Until the clock says otherwise, assume the least a sender may allow: small batches
        # cost a few wake-ups, large ones would make a low-latency sender underflow.
        self._budget = None
        self._use_latency((params.min_latency_frames or FIXED_LATENCY_FRAMES) / params.sample_rate)
        self._clock = ClockSync(
            min_latency_frames=params.min_latency_frames,
            max_latency_frames=params.max_latency_frames,
            latency_offset=self.settings.latency_offset,
            rate=params.sample_rate,
        )
        self._estimate = None
        self._sources.clear()
        return RtspResponse(200, headers)

    def _setup(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        if self.params is None:
            raise ProtocolError("SETUP before ANNOUNCE", status_hint=455)
        transport = request.headers.get("Transport") or ""
        profile = transport.split(";", 1)[0].strip().upper()
        if profile not in ("RTP/AVP", "RTP/AVP/UDP"):
            # Audio over the RTSP connection (RTP/AVP/TCP, e.g. PipeWire's raop.transport =
            # tcp) is not implemented: say so rather than answer with a UDP transport the
            # sender never asked for and then stall.
            raise ProtocolError(
                f"transport {profile or '(none)'} unsupported, only RTP/AVP/UDP", status_hint=461
            )
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
        # Syncs and resent audio come from the control port it declared, timing replies from
        # its timing port; the audio port is latched on first use.
        self._sources.clear()
        if control_port:
            self._sources[Channel.CONTROL] = (self._peer_as_given, control_port)
        if timing_port:
            self._sources[Channel.TIMING] = (self._peer_as_given, timing_port)
        if self.state is State.ANNOUNCED:
            self.state = State.READY  # before the timing exchange below starts
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
        if self.params is None:
            raise ProtocolError("RECORD before SETUP", status_hint=455)
        seq, rtptime = _rtp_info(request)
        if self.state is State.PLAYING:
            self.log.info("duplicate RECORD")
        self.state = State.PLAYING
        if rtptime is not None:
            self._start_at(seq, rtptime)
        self._events.append(StreamStarted(self.params, rtptime, self.user_agent, self.client_name))
        # What every AP1 receiver reports (protocol.md §6.2).
        headers.append(("Audio-Latency", str(FIXED_LATENCY_FRAMES)))
        return RtspResponse(200, headers)

    def _flush(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        seq, rtptime = _rtp_info(request)
        if self._audio is not None:
            self._audio.flush()
        if self._clock is not None:
            self._clock.flushed()  # the sender may resume on a new RTP timeline
        if rtptime is not None:
            self._start_at(seq, rtptime)
        self._events.append(Flushed(rtptime))
        return RtspResponse(200, headers)

    def _teardown(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        self.end(EndReason.TEARDOWN, now)
        headers.append(("Connection", "close"))
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
                if volume != self.volume:
                    self.log.info("volume %.2f (was %.2f)", volume, self.volume)
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

    def _auth_setup(
        self, request: RtspRequest, headers: list[tuple[str, str]], now: float
    ) -> RtspResponse:
        # MFi-SAP needs Apple's authentication chip, and we do not advertise it (et has no
        # 4). An AirPort Express without it answers 501; senders that try anyway (PipeWire's
        # auth_setup mode) go on to ANNOUNCE without encryption whatever the answer is.
        self.log.info("POST /auth-setup (MFi) not supported: 501, the sender goes on without")
        return RtspResponse(501, headers)

    # --------------------------------------------------------------- UDP side

    def _audio_received(self, packet: AudioPacket, now: float, *, resent: bool) -> None:
        self._last_activity = now
        if self._audio is None:
            self.stats.bad_datagrams += 1
            return
        self._audio.receive(packet, now, resent=resent)
        self._release(now)

    def _release(self, now: float) -> None:
        if self._audio is not None:
            self._events.extend(self._audio.release(now))

    def _send_resend_requests(self, now: float) -> None:
        if self._control_addr is None or self._audio is None:
            return
        for first_seq, count in self._audio.resend_requests(now):
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
            if self._audio is not None:
                self._audio.estimate = estimate
            self._use_latency(estimate.latency_frames / max(1, estimate.rate))
            self._events.append(ClockUpdated(estimate))

    def _use_latency(self, latency: float) -> None:
        """Share the sender's latency out between batching, repair and the output lead."""
        if self._budget is not None and self._budget.latency == latency:
            return  # every clock update says the same latency: nothing to share out again
        settings = self.settings
        budget = latency_budget(
            latency,
            max_batch_delay=settings.input_delay,
            buffer_frames=settings.output_buffer_frames,
            period_frames=settings.output_period_frames,
        )
        if self._budget is None or abs(budget.latency - self._budget.latency) > 0.01:
            self.log.info(
                "latency %.0f ms: batches of %.0f ms, repair window %.0f ms",
                budget.latency * 1e3,
                budget.batch_delay * 1e3,
                budget.repair_window * 1e3,
            )
        self._budget = budget
        if self._audio is not None:
            self._audio.use_budget(budget)

    # ---------------------------------------------------------------- helpers

    def _start_at(self, seq: int | None, rtptime: int) -> None:
        """Audio starts at (seq, rtptime): earlier audio is dropped, losses before it count."""
        if self._audio is not None:
            self._audio.start_at(seq, rtptime)


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
    ("POST", "/auth-setup"): RaopSession._auth_setup,
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
    fields = digest.parse_fields(value)
    if fields.get("nonce") != nonce:
        return "stale nonce"
    if fields.get("uri", request.uri) != request.uri or fields.get("realm", REALM) != REALM:
        return "answer for another URI or realm"
    return "wrong password"


def normalise_ip(ip: str) -> str:
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
    "ALLOWED",
    "PLAY_LOCKED",
    "TRANSITIONS",
    "Channel",
    "RaopSession",
    "ReceiverInfo",
    "SessionPorts",
    "SessionSettings",
    "State",
    "normalise_ip",
]
