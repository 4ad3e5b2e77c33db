"""RtspServer connection set-up: UDP ports are bound all at once and never outlive their peer.

Real UDP sockets on 127.0.0.1; the TCP side is a FakeTransport because the point is an exact
ordering (the peer hangs up before the ports are bound) that a real socket cannot force.
"""

from __future__ import annotations

import asyncio
import select
import socket

from raopd.core.arbiter import PlayArbiter
from raopd.core.session import Channel, ReceiverInfo, SessionSettings
from raopd.net.server import (
    AUDIO_BATCH_DELAY,
    BatchedUdpChannel,
    RtspConnection,
    RtspServer,
    ServerSettings,
)


class FakeTransport(asyncio.Transport):
    """A TCP transport that only says who is connected and records being closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 5000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def make_server(udp_port_base: int = 0, udp_port_range: int = 100) -> RtspServer:
    return RtspServer(
        receiver=ReceiverInfo(name="Test", hw_addr=bytes(6)),
        settings=ServerSettings(
            address="127.0.0.1", port=0, udp_port_base=udp_port_base, udp_port_range=udp_port_range
        ),
        session_settings=SessionSettings(),
        arbiter=PlayArbiter(),
        on_event=lambda session, event: None,
    )


def free_port_run(count: int) -> int:
    """The first of `count` consecutive UDP ports free on 127.0.0.1 right now."""
    for base in range(42000, 60000, count):
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no free UDP port run")


async def settle(server: RtspServer) -> None:
    await asyncio.gather(*server._tasks, return_exceptions=True)
    for _ in range(3):  # transports close their sockets on the next loop iterations
        await asyncio.sleep(0)


async def test_peer_gone_before_ports_are_bound_leaves_nothing_behind():
    base = free_port_run(3)
    server = make_server(base, 3)
    connection = RtspConnection(server)
    transport = FakeTransport()
    connection.connection_made(transport)
    connection.connection_lost(None)  # a TCP health probe: connect, then close at once
    await settle(server)
    assert connection.session is None
    assert connection.channels == {}
    assert connection not in server.connections
    # All three ports are free again: the next sender gets them.
    again = RtspConnection(server)
    again.connection_made(FakeTransport())
    await settle(server)
    assert again.session is not None
    assert sorted(
        (again.session.ports.control, again.session.ports.timing, again.session.ports.audio)
    ) == [base, base + 1, base + 2]
    again.shutdown()


async def test_connections_accepted_together_do_not_starve_each_other():
    base = free_port_run(3)
    server = make_server(base, 3)  # room for exactly one connection's three ports
    transports = [FakeTransport() for _ in range(3)]
    connections = [RtspConnection(server) for _ in transports]
    for connection, transport in zip(connections, transports, strict=True):
        connection.connection_made(transport)
    await settle(server)
    # Binding one port per await let each take some and all three fail for want of the rest.
    first, *refused = connections
    assert first.session is not None and len(first.channels) == 3
    for connection, transport in zip(refused, transports[1:], strict=True):
        assert connection.session is None and connection.channels == {}
        assert transport.closed  # refused cleanly
    first.shutdown()


def test_sessions_know_audio_is_read_in_batches():
    """The repair window of every session accounts for the audio socket's batch delay."""
    assert make_server().session_settings.input_delay == AUDIO_BATCH_DELAY


async def test_audio_already_received_goes_before_the_rtsp_request_that_follows_it():
    """A FLUSH right after the last packet (PulseAudio) must not overtake that packet while
    it waits in the socket for the next batch: the batch is handed over first."""
    server = make_server(free_port_run(3), 3)
    connection = RtspConnection(server)
    connection.connection_made(FakeTransport())
    await settle(server)
    session = connection.session
    assert session is not None
    handed: list[int] = []
    connection.datagrams_received = lambda channel, batch: handed.append(len(batch))  # type: ignore[method-assign]
    audio = connection.channels[Channel.AUDIO]
    assert isinstance(audio, BatchedUdpChannel)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(2):
            sender.sendto(b"\x80\x60" + bytes(10), ("127.0.0.1", session.ports.audio))
    for _ in range(2):  # both queued in the kernel; the loop has not run the reader
        assert select.select([audio.sock], [], [], 5.0)[0]
    connection.data_received(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    assert handed == [2]
    connection.shutdown()
