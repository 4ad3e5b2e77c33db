"""The metadata FIFO and UDP writers on real FIFOs and sockets: never blocking, nothing hidden."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading

from raopd.house.metadata_pipe import FifoWriter, UdpMetadataSender
from raopd.house.sps import Item, encode_pipe
from tests.house.sps_reader import parse_stream


async def test_no_reader_drops_and_counts_without_waiting(tmp_path):
    writer = FifoWriter(tmp_path / "md", timeout=5.0)
    writer.create()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(100):
        assert not await writer.write_item(encode_pipe(Item("ssnc", "pbeg")))
    assert loop.time() - started < 1.0  # never waited for a reader
    assert writer.counters.items_dropped == 100 and writer.counters.items_written == 0


async def test_a_reader_that_comes_later_gets_whole_items_from_then_on(tmp_path):
    path = tmp_path / "md"
    writer = FifoWriter(path, timeout=5.0)
    writer.create()
    await writer.write_item(encode_pipe(Item("ssnc", "pbeg")))  # nobody there: dropped
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        big = os.urandom(200_000)  # more than the pipe holds: written as the reader reads
        data = bytearray()

        def read() -> None:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    threading.Event().wait(0.01)
                    continue
                if not chunk:
                    if data:  # end of file; before the writer opened, b"" means nothing yet
                        return
                    threading.Event().wait(0.01)
                    continue
                data.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert await writer.write_item(encode_pipe(Item("ssnc", "PICT", big)))
        assert await writer.write_item(encode_pipe(Item("ssnc", "pend")))
        writer.close()
        await asyncio.to_thread(reader.join, 10)
    finally:
        os.close(fd)
    items, rest = parse_stream(bytes(data))
    assert rest == b"" and [(i.code, i.data) for i in items] == [("PICT", big), ("pend", b"")]
    assert writer.counters.items_dropped == 1 and writer.counters.items_written == 2


async def test_a_stalled_reader_costs_at_most_the_timeout_then_the_pipe_is_closed(tmp_path):
    path = tmp_path / "md"
    writer = FifoWriter(path, timeout=0.3)
    writer.create()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ok = await writer.write_item(encode_pipe(Item("ssnc", "PICT", os.urandom(300_000))))
        took = loop.time() - started
        assert not ok and writer.counters.timeouts == 1 and writer.counters.items_dropped == 1
        assert 0.25 < took < 3.0
        # The reader sees what fitted, then end of file: it knows the item was cut.
        received = b""
        while chunk := os.read(fd, 65536):
            received += chunk
        assert 0 < len(received) < 300_000
    finally:
        os.close(fd)


def test_udp_items_arrive_as_shairport_sync_sends_them():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender = UdpMetadataSender("127.0.0.1", receiver.getsockname()[1], 500)
    try:
        sender.send(Item("core", "minm", b"Song"))
        sender.send(Item("ssnc", "PICT", bytes(range(256)) * 4))
        assert receiver.recv(65536) == b"coreminmSong"
        chunks = []
        while len(chunks) < 3:
            payload = receiver.recv(65536)
            assert payload[:8] == b"ssncchnk" and payload[16:24] == b"ssncPICT"
            chunks.append((struct.unpack(">II", payload[8:16]), payload[24:]))
        assert [ix for (ix, _), _ in chunks] == [0, 1, 2]
        assert b"".join(data for _, data in chunks) == bytes(range(256)) * 4
        assert sender.counters.items_written == 2
    finally:
        sender.close()
        receiver.close()
