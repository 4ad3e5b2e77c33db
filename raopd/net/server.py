"""The asyncio RTSP server: one RaopSession per TCP connection, with its three UDP sockets.

The adapter is deliberately boring (aioquic's pattern): feed the session what arrives, with
`now = loop.time()`, then `_process()`: write its RTSP bytes, send its datagrams, hand its
events to the player, and re-arm the one timer at `session.get_timer()`. Every protocol
decision is the session's.

A connection's UDP ports are bound when it is accepted, on the local address the sender
reached us on, from `udp_port_base` upwards (0: any free port), so the SETUP answer needs no
callback into I/O. Anything that goes wrong inside one connection ends that connection only.

Every way a connection ends goes through `RtspConnection._finish(reason)`: the session ends
(releasing the play lock), its events reach the daemon, and the timer, UDP sockets and TCP
transport are closed. When a newcomer displaces the playing session, the arbiter hands the
displaced session back and the server ends it there, under that connection's own guard: no
session's code runs inside another's.

Bounded by construction: at most `max_connections` connections, `max_per_address` from one
address (a newcomer over either limit closes the oldest connection that is not playing);
a connection whose replies are not being read is not read either (write back-pressure), nor is
one whose requests wait for a signature or a password back-off; RSA signatures for
Apple-Challenge run on one worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import cast

from raopd.core.arbiter import PlayArbiter
from raopd.core.events import EndReason, Event
from raopd.core.session import (
    Channel,
    RaopSession,
    ReceiverInfo,
    SessionPorts,
    SessionSettings,
    normalise_ip,
)
from raopd.core.sessionlog import clip
from raopd.core.throttle import PeerThrottle
from raopd.errors import ProtocolError
from raopd.media.crypto import apple_response

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 32  # each holds three UDP ports; senders open one or two at a time
MAX_PER_ADDRESS = 4  # a sender needs two; the rest of the table stays free for others
# Audio datagrams are read in batches, at most this long after the first one of a batch
# arrives: each stream's latency budget (core/latency.py) picks its own delay up to this.
# Each wake-up starts with cold caches: here the first ALAC packet decoded after a 100 ms
# sleep cost 300-400 us against 55 us for the next ones, and every stage (parsing, AES,
# events, the output thread) pays the same again. Per-packet wake-ups cost 5.5 s of CPU per
# audio minute; with the clock's fast start left out, 100 ms batches cost 1.5 s and 250 ms
# batches 1.1 s (benchmarks/stream_cost.py). A quarter second is still small next to the
# ~2 s of latency: a gap is noticed, and its first resend request sent, at most that much
# later, and sessions take it off their repair window (SessionSettings.input_delay).
AUDIO_BATCH_DELAY = 0.25
# The audio socket must hold a whole batch and then some: the kernel default (208 KiB on
# Debian, ~90 datagrams of ALAC on loopback) is ~0.7 s of audio. Asking for 1 MiB gives up
# to what net.core.rmem_max allows, silently capped.
AUDIO_RECEIVE_BUFFER = 1 << 20
MAX_DATAGRAM = 65536
EventSink = Callable[[RaopSession, Event], None]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where to listen and which UDP ports to use."""

    address: str = ""  # "" = every address, IPv4 and IPv6
    port: int = 5000
    udp_port_base: int = 6001  # 0: let the kernel pick
    udp_port_range: int = 100
    max_connections: int = MAX_CONNECTIONS
    max_per_address: int = MAX_PER_ADDRESS


class UdpChannel(asyncio.DatagramProtocol):
    """One of a session's UDP sockets; hands datagrams to the connection."""

    def __init__(self, connection: RtspConnection, channel: Channel) -> None:
        self.connection = connection
        self.channel = channel
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: before Python 3.12 the selector loop's UDP transport does not
        # derive from asyncio.DatagramTransport, although it has its whole interface.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.connection.datagram_received(self.channel, data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable after the sender went away, for instance: not ours to fix.
        logger.debug("UDP %s error: %s", self.channel.value, exc)

    def sendto(self, data: bytes, addr: tuple[object, ...]) -> None:
        """Send one datagram from this channel's socket."""
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def close(self) -> None:
        """Close the socket."""
        if self.transport is not None:
            self.transport.close()


class BatchedUdpChannel:
    """The audio socket, read in batches (see AUDIO_BATCH_DELAY) rather than per datagram.

    When the socket becomes readable the reader is switched off and a drain is scheduled
    `delay` later; the drain reads everything queued and hands it to the session in one go.
    While audio keeps coming the drains simply repeat every `delay` (one wake-up per batch);
    a drain that finds nothing switches the reader back on, so an idle socket costs nothing.
    """

    def __init__(
        self,
        connection: RtspConnection,
        channel: Channel,
        sock: socket.socket,
        delay: float = AUDIO_BATCH_DELAY,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.sock = sock
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, AUDIO_RECEIVE_BUFFER)
        except OSError as exc:  # the default buffer still works, with less headroom
            logger.debug("audio socket keeps its default receive buffer: %s", exc)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self._timer = self.loop.call_later(self.delay, self._drain)

    def _drain(self) -> None:
        self._timer = None
        if self._closed:
            return
        batch: list[tuple[bytes, tuple[object, ...]]] = []
        recvfrom = self.sock.recvfrom
        while True:
            try:
                batch.append(recvfrom(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors surfacing on a UDP socket
                logger.debug("UDP %s error: %s", self.channel.value, exc)
                break
        if self._closed:
            return
        if batch:
            self._timer = self.loop.call_later(self.delay, self._drain)
        else:
            self.loop.add_reader(self.sock.fileno(), self._readable)
        if batch:
            self.connection.datagrams_received(self.channel, batch)

    def drain_now(self) -> None:
        """Hand over what is queued now, ahead of the batch timer.

        Called before an RTSP request or the connection's end is handled: audio the sender
        sent before its FLUSH or TEARDOWN belongs before it (PulseAudio FLUSHes right after
        its last packet; handled first, the FLUSH discarded the batch still in the socket).
        """
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        else:
            self.loop.remove_reader(self.sock.fileno())
        self._drain()  # re-arms the reader, or the timer if it found audio

    def sendto(self, data: bytes, addr: tuple[object, ...]) -> None:
        """Send one datagram from this socket (best effort, like a datagram transport)."""
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            logger.debug("UDP %s send error: %s", self.channel.value, exc)

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class RtspConnection(asyncio.Protocol):
    """Binds one TCP connection, its UDP channels and its RaopSession together."""

    def __init__(self, server: RtspServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.session: RaopSession | None = None
        self.transport: asyncio.Transport | None = None
        self.channels: dict[Channel, UdpChannel | BatchedUdpChannel] = {}
        self.peer_ip = ""
        self.accepted_at = self.loop.time()
        self._scope_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._eof = False  # the peer sent FIN: answer what it sent, then close
        self._write_paused = False
        self._read_paused = False
        self._signing = False
        self._resume_scheduled = False
        # RTSP bytes that arrive while the UDP sockets are still being bound.
        self._early: list[bytes] = []

    @property
    def playing(self) -> bool:
        """True when this connection's session holds the play lock."""
        return self.session is not None and self.server.arbiter.holds(self.session)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer_ip = normalise_ip(str(peername[0])) if peername else ""
        if not self.server.make_room_for(self):
            logger.warning("too many connections; refusing %s", self.peer_ip)
            self._closed = True
            transport.abort()
            return
        self.server.connections.add(self)
        task = self.loop.create_task(self._open())
        self.server.track(task)

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            self._early.append(data)
            return
        self._drain_audio()
        self._guarded(lambda s: s.receive_data(data, self.loop.time()))

    def eof_received(self) -> bool:
        # Keep the transport open for writing: requests that came with the FIN are answered
        # first (see _process), then the connection closes.
        self._eof = True
        if self.session is not None:
            self._guarded(lambda s: None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(EndReason.CONNECTION_CLOSED)

    def pause_writing(self) -> None:
        # The peer does not read its replies: stop reading its requests until it does.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._schedule_resume()
        self._update_reading()

    def _schedule_resume(self) -> None:
        """Answer the next slice of pipelined requests after the loop's other work."""
        session = self.session
        if session is None or not session.backlogged or self._write_paused:
            return
        if not self._resume_scheduled:
            self._resume_scheduled = True
            self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_scheduled = False
        if not self._write_paused:
            self._guarded(lambda s: s.resume(self.loop.time()))

    # UDP

    def datagram_received(self, channel: Channel, data: bytes, addr: tuple[object, ...]) -> None:
        self.datagrams_received(channel, [(data, addr)])

    def datagrams_received(
        self, channel: Channel, batch: list[tuple[bytes, tuple[object, ...]]]
    ) -> None:
        """A batch read from one socket: fed in order, then one round of output."""
        if self.session is None:
            return
        now = self.loop.time()

        def feed(session: RaopSession) -> None:
            for data, addr in batch:
                session.datagram_received(channel, data, (str(addr[0]), int(str(addr[1]))), now)

        self._guarded(feed)

    # internals

    def _drain_audio(self) -> None:
        """Audio already received goes to the session before the RTSP input that follows it."""
        audio = self.channels.get(Channel.AUDIO)
        if isinstance(audio, BatchedUdpChannel):
            audio.drain_now()

    async def _open(self) -> None:
        """Bind the UDP channels, make the session, then feed it what already arrived."""
        assert self.transport is not None
        if self._closed:
            return  # evicted or gone before its turn came: no ports for it
        sockname = self.transport.get_extra_info("sockname")
        peername = self.transport.get_extra_info("peername")
        try:
            ports = await self._bind_udp(sockname)
        except OSError as exc:
            logger.error("no free UDP ports for %s: %s", self.peer_ip, exc)
            self._finish(EndReason.INTERNAL_ERROR, abort=True)
            return
        if self._closed:
            # The peer hung up while the ports were being bound (a TCP health probe does
            # just that): its ports and a never-ending session used to stay behind, and three
            # probes used up the default port range for good.
            self._close_udp()
            return
        self.session = RaopSession(
            receiver=self.server.receiver,
            ports=ports,
            local_ip=str(sockname[0]),
            peer_ip=str(peername[0]),
            now=self.loop.time(),
            arbiter=self.server.arbiter,
            settings=self.server.session_settings,
            session_id=next(self.server.ids),
            throttle=self.server.throttle,
        )
        self.session.log.info("connection from %s", self.peer_ip)
        data = b"".join(self._early)
        self._early = []
        self._guarded(lambda s: s.receive_data(data, self.loop.time()))

    async def _bind_udp(self, sockname: tuple[object, ...]) -> SessionPorts:
        host = str(sockname[0])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family == socket.AF_INET6 and len(sockname) >= 4:
            self._scope_id = int(str(sockname[3]))
        candidates = self.server.udp_ports()
        # All three are bound before the first await: connections accepted together must not
        # each take a port or two and then all fail for want of the last one.
        socks: list[socket.socket] = []
        try:
            for _ in range(3):
                socks.append(_bind_first_free(family, host, self._scope_id, candidates))
        except OSError:
            for sock in socks:
                sock.close()
            raise
        bound: dict[Channel, int] = {}
        try:
            for channel, sock in zip(
                (Channel.CONTROL, Channel.TIMING, Channel.AUDIO), socks, strict=True
            ):
                if channel is Channel.AUDIO:
                    self.channels[channel] = BatchedUdpChannel(self, channel, sock)
                    bound[channel] = sock.getsockname()[1]
                    continue
                protocol = UdpChannel(self, channel)
                await self.loop.create_datagram_endpoint(lambda p=protocol: p, sock=sock)  # type: ignore[misc]
                self.channels[channel] = protocol
                bound[channel] = sock.getsockname()[1]
        except BaseException:
            self._close_udp()
            for sock in socks[len(bound) :]:
                sock.close()
            raise
        return SessionPorts(
            audio=bound[Channel.AUDIO], control=bound[Channel.CONTROL], timing=bound[Channel.TIMING]
        )

    def _guarded(self, step: Callable[[RaopSession], None]) -> None:
        """Run one input step; a bug here ends this connection, never the daemon."""
        session = self.session
        if session is None or self._closed:
            return
        started = time.perf_counter()
        try:
            step(session)
            self._process()
        except Exception:
            session.log.exception("internal error; closing it")
            self._finish(EndReason.INTERNAL_ERROR, abort=True)
        finally:
            self.server.busy_seconds += time.perf_counter() - started
        self.server.end_displaced()

    def _process(self) -> None:
        session = self.session
        if session is None or self._closed:
            return
        assert self.transport is not None
        data = session.data_to_send()
        if data:
            self.transport.write(data)
        for channel, payload, (host, port) in session.datagrams_to_send():
            udp = self.channels.get(channel)
            if udp is None:
                continue
            addr: tuple[object, ...] = (host, port)
            if ":" in host:
                addr = (host, port, 0, self._scope_id)
            udp.sendto(payload, addr)
        self._route_events()
        audio = self.channels.get(Channel.AUDIO)
        if isinstance(audio, BatchedUdpChannel):
            # The stream's latency budget decides how long audio may wait to be read.
            audio.delay = session.input_batch_delay
        if session.signature_wanted is not None and not self._signing:
            self._signing = True
            self.server.track(self.loop.create_task(self._sign(session.signature_wanted)))
        if self._eof and session.wants_input and session.signature_wanted is None:
            # Everything the peer sent before its FIN is answered: nothing more will come.
            session.end(EndReason.CONNECTION_CLOSED, self.loop.time())
        if session.should_close:
            self._finish(session.end_reason or EndReason.CONNECTION_CLOSED)
            return
        self._schedule_resume()
        self._update_reading()
        self._arm_timer()

    def _route_events(self) -> None:
        session = self.session
        if session is None:
            return
        while (event := session.next_event()) is not None:
            self.server.on_event(session, event)

    async def _sign(self, challenge: str) -> None:
        """The Apple-Response for `challenge`, computed on the signing thread."""
        session = self.session
        assert session is not None
        response: str | None = None
        try:
            response = await self.loop.run_in_executor(
                self.server.signer,
                apple_response,
                challenge,
                session.local_ip,
                session.receiver.hw_addr,
            )
        except ProtocolError as exc:
            session.log.warn_limited(self.loop.time(), "bad Apple-Challenge: %s", clip(exc))
        finally:
            self._signing = False
        self._guarded(lambda s: s.signature_made(response, self.loop.time()))

    def _update_reading(self) -> None:
        """Read only while the session wants input and the peer reads its replies."""
        if self.transport is None or self._closed or self.session is None:
            return
        want = self.session.wants_input and not self._write_paused
        if want and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        elif not want and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _arm_timer(self) -> None:
        assert self.session is not None
        when = self.session.get_timer()
        if self._timer is not None:
            if when is not None and self._timer.when() == when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._guarded(lambda s: s.handle_timer(self.loop.time()))

    def end(self, reason: EndReason) -> None:
        """End this connection's session for `reason` (shutdown, eviction, displacement)."""
        if self.session is None or self._closed:
            self._finish(reason)
            return
        self._guarded(lambda s: s.end(reason, self.loop.time()))

    def _finish(self, reason: EndReason, abort: bool = False) -> None:
        """The one way a connection ends: session, events, timer, UDP ports, transport."""
        if self._closed:
            return
        # Audio the sender sent before it went belongs before the end (while still open:
        # a closed connection takes no input).
        self._drain_audio()
        self._closed = True
        session = self.session
        if session is not None:
            try:
                session.end(reason, self.loop.time())
                self._route_events()
            except Exception:  # the cleanup below must run whatever happens here
                session.log.exception("error while ending it")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_udp()
        self.server.connections.discard(self)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()  # after the buffered response is written

    def _close_udp(self) -> None:
        for udp in self.channels.values():
            udp.close()
        self.channels.clear()

    def shutdown(self) -> None:
        """Daemon shutdown: end the session and close."""
        self.end(EndReason.SHUTDOWN)


class RtspServer:
    """Listens for senders and keeps track of their connections."""

    def __init__(
        self,
        *,
        receiver: ReceiverInfo,
        settings: ServerSettings,
        session_settings: SessionSettings,
        arbiter: PlayArbiter[RaopSession],
        on_event: EventSink,
        throttle: PeerThrottle | None = None,
    ) -> None:
        self.receiver = receiver
        self.settings = settings
        # Audio is read in batches: sessions shorten their repair window to match.
        self.session_settings = replace(
            session_settings,
            input_delay=max(session_settings.input_delay, AUDIO_BATCH_DELAY),
            defer_signatures=True,
        )
        self.arbiter = arbiter
        self.on_event = on_event
        self.connections: set[RtspConnection] = set()
        self.throttle = throttle or PeerThrottle()
        # One thread for RSA signatures: a flood of challenges queues there (and is
        # rate-limited per address by the throttle) instead of stalling the event loop.
        self.signer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raopd-rsa")
        self.evicted = 0  # connections closed to make room for newer ones
        self.refused = 0  # connections refused at accept
        self.ids = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Event-loop seconds spent in session steps (parsing, jitter, decryption, decoding,
        # routing): two clock reads per input, which is what /metrics can afford to measure.
        self.busy_seconds = 0.0

    @property
    def listening(self) -> bool:
        """True while at least one listening socket is open."""
        return any(server.is_serving() for server in self._servers)

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (tests read the port from them)."""
        return [sock for server in self._servers for sock in server.sockets]

    async def start(self) -> None:
        """Listen on the configured address (every address, both families, when empty)."""
        loop = asyncio.get_running_loop()
        host = self.settings.address or None
        server = await loop.create_server(
            lambda: RtspConnection(self), host=host, port=self.settings.port, reuse_address=True
        )
        self._servers.append(server)
        names = sorted({f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets})
        logger.info("RTSP listening on %s", ", ".join(names))

    async def close(self) -> None:
        """Stop accepting, end every session, and wait for the listeners to close."""
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        self.signer.shutdown(wait=False, cancel_futures=True)

    def make_room_for(self, newcomer: RtspConnection) -> bool:
        """Whether `newcomer` may be served, closing an idle connection if that is needed.

        Over the per-address limit the oldest connection from the same address goes; over
        the global one, the oldest anywhere. The playing connection is never chosen.
        """
        settings = self.settings
        same = [c for c in self.connections if c.peer_ip == newcomer.peer_ip]
        if len(same) >= settings.max_per_address:
            pool = same
        elif len(self.connections) >= settings.max_connections:
            pool = list(self.connections)
        else:
            return True
        candidates = sorted((c for c in pool if not c.playing), key=lambda c: c.accepted_at)
        if not candidates:
            self.refused += 1
            return False
        victim = candidates[0]
        self.evicted += 1
        logger.info("closing an idle connection from %s to make room", victim.peer_ip)
        victim.end(EndReason.EVICTED)
        return True

    def end_session(self, session: object, reason: EndReason) -> bool:
        """End `session` from our side (remote "stop"); False when no connection holds it."""
        for connection in list(self.connections):
            if connection.session is session:
                connection.end(reason)
                return True
        return False

    def end_displaced(self) -> None:
        """End the sessions the arbiter says were displaced, each under its own guard."""
        for session in self.arbiter.take_displaced():
            for connection in list(self.connections):
                if connection.session is session:
                    connection.end(EndReason.INTERRUPTED)
                    break
            else:
                session.end(EndReason.INTERRUPTED, asyncio.get_running_loop().time())

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to a connection's set-up task until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def udp_ports(self) -> list[int]:
        """Candidate UDP ports, in the order to try them."""
        base, count = self.settings.udp_port_base, self.settings.udp_port_range
        if base == 0:
            return [0]
        return list(range(base, min(65536, base + max(1, count))))


def _bind_first_free(family: int, host: str, scope_id: int, candidates: list[int]) -> socket.socket:
    """A UDP socket bound to the first free candidate port on `host`."""
    last_error: OSError | None = None
    for port in candidates:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.bind((host.split("%")[0], port, 0, scope_id))
            else:
                sock.bind((host, port))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        sock.setblocking(False)
        return sock
    raise last_error or OSError("no UDP port candidates")
