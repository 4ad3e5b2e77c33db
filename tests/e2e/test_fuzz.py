"""An RTSP fuzzer over real sockets, seeded from the recorded dialogues of real senders.

Each input is one of tests/core/data/*.rtsp.bin (the exact client bytes of node-airtunes2,
cliraop and pyatv sessions) with seeded mutations: bit flips, byte runs inserted, deleted or
duplicated, requests spliced from another dialogue, header values replaced by long or
binary text, numbers replaced by extreme ones, truncation. Each goes to a real raopd over
its own TCP connection followed by a FIN, from one of 200 loopback addresses (so the
per-address budgets and caps are not what is being tested here), eight at a time.

Afterwards: raopd is still running, logged no traceback, and a clean sender (raopd's own,
RSA/AES + ALAC) is accepted within 2 s and plays bit-exact; peak memory stays under 100 MB.
`pytest --fuzz-inputs N` sends N inputs (2,000 by default: about 30 s on the 2-core CI box).
"""

from __future__ import annotations

import asyncio
import random
import re

import numpy as np
import pytest

from tests.core.wire_data import CAPTURES, rtsp_stream
from tests.e2e.test_attacks import finish, legitimate

PARALLEL = 8
SEED = 20261129
SOURCES = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(200)]


def requests_of(stream: bytes) -> list[bytes]:
    """Cut a dialogue into its requests (by head and Content-Length)."""
    out = []
    pos = 0
    while pos < len(stream):
        end = stream.find(b"\r\n\r\n", pos)
        if end < 0:
            out.append(stream[pos:])
            break
        head = stream[pos : end + 4]
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        stop = end + 4 + (int(length[1]) if length else 0)
        out.append(stream[pos:stop])
        pos = stop
    return out


def mutate(rng: random.Random, dialogues: list[list[bytes]]) -> bytes:
    requests = list(rng.choice(dialogues))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(requests))
        req = bytearray(requests[i])
        kind = rng.randrange(8)
        if kind == 0 and req:  # bit flips
            for _ in range(rng.randint(1, 8)):
                req[rng.randrange(len(req))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # insert a run of random or structural bytes
            run = rng.choice(
                [b"\r\n", b"\r\n\r\n", b":", b" ", b"\x00", bytes([rng.randrange(256)])]
            )
            req[rng.randrange(len(req) + 1) : 0] = run * rng.randint(1, 64)
        elif kind == 2 and req:  # delete a range
            a = rng.randrange(len(req))
            del req[a : a + rng.randint(1, 64)]
        elif kind == 3:  # splice a request of another dialogue in
            requests.insert(i, rng.choice(rng.choice(dialogues)))
        elif kind == 4:  # a header value replaced by something long or binary
            lines = bytes(req).split(b"\r\n")
            j = rng.randrange(len(lines))
            name, sep, _ = lines[j].partition(b":")
            if sep:
                value = rng.choice(
                    [b"x" * rng.randint(100, 20000), bytes(rng.randrange(256) for _ in range(40))]
                )
                lines[j] = name + b": " + value
            req = bytearray(b"\r\n".join(lines))
        elif kind == 5:  # numbers replaced by extreme ones
            text = re.sub(
                rb"\d+",
                lambda m: rng.choice([b"0", b"-1", b"4294967296", b"9" * 30, m[0]]),
                bytes(req),
                count=rng.randint(1, 3),
            )
            req = bytearray(text)
        elif kind == 6:  # duplicate the request (pipelining)
            requests.insert(i, bytes(req))
        else:  # truncate
            req = req[: rng.randrange(len(req) + 1)]
        requests[i] = bytes(req)
    return b"".join(requests)


async def send_one(port: int, source: str, data: bytes) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return  # the kernel ran out of something on our side: not raopd's business
    try:
        writer.write(data)
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 15.0)
    except (OSError, TimeoutError):
        pass  # reset or slow: raopd's health is judged afterwards
    finally:
        writer.transport.abort()


async def test_fuzzed_dialogues_then_a_clean_sender_plays_bit_exact(
    start_daemon, test30, request: pytest.FixtureRequest
):
    count: int = request.config.getoption("--fuzz-inputs")
    dialogues = [requests_of(rtsp_stream(name)) for name in CAPTURES]
    rng = random.Random(SEED)
    inputs = [mutate(rng, dialogues) for _ in range(count)]
    daemon = await start_daemon()
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for item in enumerate(inputs):
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            i, data = queue.get_nowait()
            await send_one(daemon.port, SOURCES[i % len(SOURCES)], data)

    await asyncio.gather(*(worker() for _ in range(PARALLEL)))
    assert daemon.process is not None and daemon.process.returncode is None
    log = "\n".join(daemon.log)
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    pcm = np.ascontiguousarray(test30[: 2 * 44100])
    await legitimate(daemon, pcm)
    await finish(daemon, pcm)
