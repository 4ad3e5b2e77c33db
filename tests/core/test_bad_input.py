"""Hostile input: only ProtocolError may ever escape a wire parser.

More than 10,000 generated inputs (random bytes, truncations, bit flips, byte
insertions and deletions of real captured packets and requests) go through
parse_datagram, RtspReader, parse_sdp, parse_dmap and the text/parameters
parsers. Anything a parser accepts must also be something it would accept
intact: datagrams it accepts round-trip byte for byte, and the reader gives the
same requests however the mutated stream is split. Seeded loops keep it
reproducible and fast.
"""

import random
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.dmap import parse_dmap
from raopd.core.packets import parse_datagram
from raopd.core.parameters import parse_parameters, parse_progress, parse_volume
from raopd.core.rtsp import RtspReader, RtspRequest
from raopd.core.sdp import parse_sdp
from raopd.errors import ProtocolError
from tests.core.wire_data import CAPTURES, datagrams, rtsp_stream

PACKET_TYPES = [0x60, 0xE0, 0x56, 0xD6, 0x54, 0xD4, 0x55, 0xD5, 0x52, 0xD2, 0x53, 0xD3]
COUNTS: dict[str, int] = {}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random damage: truncate, flip bits, insert, delete or overwrite bytes."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.randrange(6)
        if op == 0 and b:
            del b[rng.randrange(len(b) + 1) :]
        elif op == 1 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 8)]
        elif op == 4 and b:
            i = rng.randrange(len(b))
            b[i] = rng.choice(b"\r\n :/=\x00\xff0123456789")
        elif op == 5 and b:
            i = rng.randrange(len(b))
            b[i : i + 4] = rng.choice(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]
            )
    return bytes(b)


def only_protocol_errors(parse: Callable[[bytes], object], data: bytes) -> object | None:
    try:
        return parse(data)
    except ProtocolError as exc:
        assert str(exc) and exc.status_hint in {400, 413, 431, 456, 501, 505}
        return None


# -- datagrams -------------------------------------------------------------------------------

REAL_DATAGRAMS = [d for name in CAPTURES for d in datagrams(name)]


def check_datagram(data: bytes) -> None:
    packet = only_protocol_errors(parse_datagram, data)
    if packet is not None:
        assert bytes(packet) == data  # anything accepted is canonical


def test_datagrams_random_and_mutated():
    rng = random.Random(1)
    n = 0
    for _ in range(3000):
        size = rng.choice([0, 1, 2, 8, 11, 12, 15, 16, 19, 20, 21, 31, 32, 33, rng.randint(0, 80)])
        data = bytearray(rng.randbytes(size))
        if size >= 2 and rng.random() < 0.8:
            data[0] = rng.choice([0x80, 0x80, 0x90, 0x00, 0xFF])
            data[1] = rng.choice(PACKET_TYPES)
        check_datagram(bytes(data))
        n += 1
    for _ in range(3000):
        check_datagram(mutate(rng, rng.choice(REAL_DATAGRAMS)))
        n += 1
    for data in REAL_DATAGRAMS:  # every truncation point of the short packets
        if len(data) <= 32:
            for cut in range(len(data)):
                check_datagram(data[:cut])
                n += 1
    COUNTS["datagrams"] = n
    assert n >= 6000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_datagrams_hypothesis(data):
    check_datagram(data)


def test_real_datagrams_are_accepted():
    assert all(bytes(parse_datagram(d)) == d for d in REAL_DATAGRAMS)


# -- RTSP ------------------------------------------------------------------------------------


def read_all(chunks: list[bytes]) -> tuple[list[RtspRequest], ProtocolError | None]:
    reader = RtspReader()
    out: list[RtspRequest] = []
    try:
        for chunk in chunks:
            reader.receive_data(chunk)
            while (request := reader.next_request()) is not None:
                out.append(request)
    except ProtocolError as exc:
        assert exc.status_hint in {400, 413, 431, 501, 505}
        return out, exc
    return out, None


def random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = (
        sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 30))))
        if len(data) > 1
        else []
    )
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_rtsp_mutated_streams():
    rng = random.Random(2)
    streams = [rtsp_stream(name) for name in CAPTURES]
    # Head-heavy material too: the streams without their two big JPEG bodies mutate faster.
    for _ in range(1500):
        data = mutate(rng, rng.choice(streams))
        whole, whole_error = read_all([data])
        split, split_error = read_all(random_chunks(rng, data))
        assert split == whole  # same requests whatever the split
        assert (whole_error is None) == (split_error is None)
        if whole_error is not None and split_error is not None:
            assert whole_error.status_hint == split_error.status_hint
    COUNTS["rtsp"] = 1500


def test_rtsp_random_bytes():
    rng = random.Random(3)
    for _ in range(1000):
        prefix = rng.choice(
            [b"", b"OPTIONS * RTSP/1.0\r\n", b"SET_PARAMETER x RTSP/1.0\r\nContent-Length: "]
        )
        read_all(random_chunks(rng, prefix + rng.randbytes(rng.randint(0, 200))))
    COUNTS["rtsp_random"] = 1000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_rtsp_hypothesis(chunks):
    read_all(chunks)


# -- SDP, DMAP, parameters -------------------------------------------------------------------


def bodies(content_type: str) -> list[bytes]:
    out = []
    for name in CAPTURES:
        requests, error = read_all([rtsp_stream(name)])
        assert error is None
        out += [r.body for r in requests if r.headers.get("content-type") == content_type]
    return out


def test_sdp_mutated():
    rng = random.Random(4)
    real = bodies("application/sdp")
    assert len(real) == 4 and all(parse_sdp(b) for b in real)
    for _ in range(2000):
        only_protocol_errors(parse_sdp, mutate(rng, rng.choice(real)))
    COUNTS["sdp"] = 2000


def test_dmap_mutated():
    rng = random.Random(5)
    real = bodies("application/x-dmap-tagged")
    assert len(real) == 3 and all(parse_dmap(b) is not None for b in real)
    for _ in range(2000):
        only_protocol_errors(parse_dmap, mutate(rng, rng.choice(real)))
    for _ in range(500):
        only_protocol_errors(parse_dmap, b"mlit" + rng.randbytes(rng.randint(0, 40)))
    COUNTS["dmap"] = 2500


def test_parameters_mutated():
    rng = random.Random(6)
    real = bodies("text/parameters")
    assert real
    for _ in range(1000):
        data = mutate(rng, rng.choice(real))
        params = only_protocol_errors(parse_parameters, data)
        if isinstance(params, dict):
            if "volume" in params:
                only_protocol_errors(lambda d: parse_volume(d.decode()), params["volume"].encode())
            if "progress" in params:
                only_protocol_errors(
                    lambda d: parse_progress(d.decode()), params["progress"].encode()
                )
    COUNTS["parameters"] = 1000


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_sdp_dmap_parameters_hypothesis(data):
    only_protocol_errors(parse_sdp, data)
    only_protocol_errors(parse_dmap, data)
    only_protocol_errors(parse_parameters, data)


def test_total_volume_of_bad_input():
    # Runs last in this module (definition order): more than 10,000 seeded inputs.
    assert sum(COUNTS.values()) >= 10_000, COUNTS
