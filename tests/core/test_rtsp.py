"""RTSP framing: real client streams under every split, limits, exact errors, responses."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.rtsp import REASONS, Headers, RtspReader, RtspRequest, RtspResponse
from raopd.errors import ProtocolError
from tests.core.wire_data import CAPTURES, rtsp_stream

FAST = settings(max_examples=150, deadline=None)

EXPECTED_METHODS = {
    "node-alac-rsa": [
        "OPTIONS", "ANNOUNCE", "SETUP", "RECORD", "SET_PARAMETER", "SET_PARAMETER",
        "SET_PARAMETER", "SET_PARAMETER", "SET_PARAMETER", "OPTIONS", "OPTIONS", "TEARDOWN",
    ],
    "cliraop-alac-plain": [
        "ANNOUNCE", "SETUP", "RECORD", "SET_PARAMETER", "OPTIONS", "FLUSH", "TEARDOWN",
    ],
    "pyatv-l16": [
        "GET", "ANNOUNCE", "SETUP", "SET_PARAMETER", "SET_PARAMETER", "SET_PARAMETER",
        "SET_PARAMETER", "POST", "RECORD", "FLUSH", "POST", "TEARDOWN",
    ],
    "pyatv-stock-l16-fmtp-crash": [
        "GET", "ANNOUNCE", "SETUP", "SET_PARAMETER", "SET_PARAMETER", "SET_PARAMETER",
        "POST", "RECORD", "FLUSH",
    ],
}  # fmt: skip


def drain(reader: RtspReader) -> list[RtspRequest]:
    out = []
    while (request := reader.next_request()) is not None:
        out.append(request)
    return out


def feed(chunks, **limits) -> list[RtspRequest]:
    reader = RtspReader(**limits)
    out = []
    for chunk in chunks:
        reader.receive_data(chunk)
        out += drain(reader)
    return out


def tr(data: bytes, expected: list[RtspRequest]) -> None:
    """Whole, byte by byte, and followed by the start of another request."""
    assert feed([data]) == expected
    assert feed([data[i : i + 1] for i in range(len(data))]) == expected
    reader = RtspReader()
    reader.receive_data(data + b"OPTIONS * RTSP/1.0\r\nCSeq: 99\r\n")
    assert drain(reader) == expected
    assert reader.buffered == len(b"OPTIONS * RTSP/1.0\r\nCSeq: 99\r\n")
    reader.receive_data(b"\r\n")
    last = reader.next_request()
    assert last is not None and last.headers.get("cseq") == "99"


def head(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# -- real captures ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_captured_streams_under_every_split(name):
    data = rtsp_stream(name)
    requests = feed([data])
    assert [r.method for r in requests] == EXPECTED_METHODS[name]
    tr(data, requests)
    rng = random.Random(name)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert feed(chunks) == requests


@pytest.mark.parametrize("name", CAPTURES)
def test_captured_cseq_and_bodies(name):
    requests = feed([rtsp_stream(name)])
    cseqs = [int(r.headers.get("CSeq")) for r in requests]
    assert cseqs == list(range(cseqs[0], cseqs[0] + len(cseqs)))
    for r in requests:
        assert r.version == "RTSP/1.0"
        assert len(r.body) == int(r.headers.get("content-length") or 0)
        kind = r.headers.get("Content-Type")
        if kind == "application/sdp":
            assert r.body.startswith(b"v=0")
        elif kind == "application/x-dmap-tagged":
            assert r.body.startswith(b"mlit")
        elif kind == "image/jpeg":
            assert r.body[:2] == b"\xff\xd8" and r.body[-2:] == b"\xff\xd9" and len(r.body) == 4444


def test_node_teardown_with_empty_uri():
    requests = feed([rtsp_stream("node-alac-rsa")])
    assert (requests[-1].method, requests[-1].uri) == ("TEARDOWN", "")
    assert requests[0].headers.get("apple-challenge") == "SdX9kFJVxgKVMFof/Znj4Q"


def test_pyatv_paths():
    requests = feed([rtsp_stream("pyatv-l16")])
    assert (requests[0].method, requests[0].uri) == ("GET", "/info")
    assert (requests[7].method, requests[7].uri) == ("POST", "/feedback")
    assert requests[3].body == b"volume: -15.0"


# -- syntax accepted -------------------------------------------------------------------------


def test_bare_lf_and_mixed_line_ends():
    data = b"OPTIONS * RTSP/1.0\nCSeq: 1\n\nSETUP rtsp://x/1 RTSP/1.0\r\nCSeq: 2\n\r\n"
    expected = [
        RtspRequest("OPTIONS", "*", "RTSP/1.0", Headers([("CSeq", "1")])),
        RtspRequest("SETUP", "rtsp://x/1", "RTSP/1.0", Headers([("CSeq", "2")])),
    ]
    tr(data, expected)


def test_empty_lines_between_requests_are_skipped():
    data = b"\r\n\r\nOPTIONS * RTSP/1.0\r\n\r\n\r\n\nOPTIONS * RTSP/1.0\r\n\r\n"
    assert [r.method for r in feed([data])] == ["OPTIONS", "OPTIONS"]
    assert [r.method for r in feed([data[i : i + 1] for i in range(len(data))])] == [
        "OPTIONS",
        "OPTIONS",
    ]


@pytest.mark.parametrize("version", ["RTSP/1.0", "HTTP/1.1", "HTTP/1.0"])
def test_protocol_tokens(version):
    data = f"POST /auth-setup {version}\r\nContent-Length: 3\r\n\r\nabc".encode()
    (request,) = feed([data])
    assert (request.method, request.uri, request.version, request.body) == (
        "POST",
        "/auth-setup",
        version,
        b"abc",
    )


def test_headers_multimap():
    data = head("X * RTSP/1.0\nA: 1\nb:2\na:   3  \nEmpty:\n\n")
    (request,) = feed([data])
    h = request.headers
    assert h.get("a") == "1" and h.get("A") == "1" and h.get_all("a") == ["1", "3"]
    assert h.get("B") == "2" and h.get("empty") == "" and h.get("missing") is None
    assert h.get("missing", "d") == "d" and h.get_all("missing") == []
    assert h.items() == [("A", "1"), ("b", "2"), ("a", "3"), ("Empty", "")]
    assert "EMPTY" in h and "nope" not in h and len(h) == 4 and list(h) == ["A", "b", "a", "Empty"]
    assert h == Headers([("a", "1"), ("B", "2"), ("A", "3"), ("empty", "")])
    assert h != Headers([("a", "1")])


def test_utf8_and_latin1_header_values():
    data = "X * RTSP/1.0\r\nX-Apple-Client-Name: Logan\u2019s iPhone\r\n\r\n".encode()
    assert feed([data])[0].headers.get("x-apple-client-name") == "Logan\u2019s iPhone"
    data = b"X * RTSP/1.0\r\nName: caf\xe9\r\n\r\n"
    assert feed([data])[0].headers.get("name") == "café"


def test_content_length_leading_zeros_and_duplicates():
    data = head("X * RTSP/1.0\nContent-Length: 003\nContent-Length: 003\n\n") + b"abcX"
    reader = RtspReader()
    reader.receive_data(data)
    assert reader.next_request().body == b"abc"
    assert reader.next_request() is None and reader.buffered == 1


def test_body_exactly_at_the_limit():
    data = head("X * RTSP/1.0\nContent-Length: 10\n\n") + b"0123456789"
    assert feed([data], max_body_bytes=10)[0].body == b"0123456789"


# -- random requests -------------------------------------------------------------------------

token = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_-abcxyz0189", min_size=1, max_size=12)
value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FF, blacklist_characters="\x7f"),
    max_size=30,
)
request_strategy = st.builds(
    lambda m, u, v, hs, b: RtspRequest(m, u, v, Headers([*hs, ("Content-Length", str(len(b)))]), b),
    token,
    st.text(alphabet="rtsp:/*0123456789.abc", max_size=30),
    st.sampled_from(["RTSP/1.0", "HTTP/1.1", "HTTP/1.0"]),
    st.lists(st.tuples(token.filter(lambda t: t.lower() != "content-length"), value), max_size=8),
    st.binary(max_size=300),
)


def serialize(r: RtspRequest, eol: bytes) -> bytes:
    lines = [f"{r.method} {r.uri} {r.version}"] + [f"{n}: {v}" for n, v in r.headers.items()]
    return eol.join(line.encode() for line in lines) + eol + eol + r.body


@FAST
@given(
    st.lists(request_strategy, min_size=1, max_size=4), st.sampled_from([b"\r\n", b"\n"]), st.data()
)
def test_random_requests_any_split(requests, eol, data):
    stream = b"".join(serialize(r, eol) for r in requests)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert feed(chunks) == requests
    assert feed([stream]) == requests


# -- errors ----------------------------------------------------------------------------------


def error_of(data: bytes, **limits) -> ProtocolError:
    reader = RtspReader(**limits)
    with pytest.raises(ProtocolError) as info:
        reader.receive_data(data)
        drain(reader)
    return info.value


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"OPTIONS *\r\n\r\n", 400, "malformed request line 'OPTIONS *'"),
        (b"OPTIONS\r\n\r\n", 400, "malformed request line 'OPTIONS'"),
        (b"OPTIONS * FOO\r\n\r\n", 400, "malformed request line 'OPTIONS * FOO'"),
        (b"OPTIONS * RTSP/2.0\r\n\r\n", 505, "unsupported protocol version 'RTSP/2.0'"),
        (b"GET / HTTP/2\r\n\r\n", 505, "unsupported protocol version 'HTTP/2'"),
        (b"OPT(IONS * RTSP/1.0\r\n\r\n", 400, "malformed request method 'OPT(IONS'"),
        (b"\x00\x01\x02 * RTSP/1.0\r\n\r\n", 400, "malformed request method '\\x00\\x01\\x02'"),
        (b"X a b RTSP/1.0\r\n\r\n", 400, "malformed request URI 'a b'"),
        (b"X * RTSP/1.0\r\nNoColon\r\n\r\n", 400, "malformed header line 'NoColon'"),
        (b"X * RTSP/1.0\r\n: v\r\n\r\n", 400, "malformed header line ': v'"),
        (b"X * RTSP/1.0\r\nBad Name: v\r\n\r\n", 400, "malformed header line 'Bad Name: v'"),
        (
            b"X * RTSP/1.0\r\nA: 1\r\n  folded\r\n\r\n",
            400,
            "obsolete header line folding is not supported",
        ),
        (
            b"X * RTSP/1.0\r\nCSeq: 1\rInjected: 2\r\n\r\n",
            400,
            "control character in header 'CSeq'",
        ),
        (b"X * RTSP/1.0\r\nContent-Length: abc\r\n\r\n", 400, "bad Content-Length 'abc'"),
        (b"X * RTSP/1.0\r\nContent-Length: -1\r\n\r\n", 400, "bad Content-Length '-1'"),
        (b"X * RTSP/1.0\r\nContent-Length: +1\r\n\r\n", 400, "bad Content-Length '+1'"),
        (b"X * RTSP/1.0\r\nContent-Length: \xd9\xa3\r\n\r\n", 400, "bad Content-Length '\u0663'"),
        (
            b"X * RTSP/1.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            "conflicting Content-Length headers ['1', '2']",
        ),
        (
            b"X * RTSP/1.0\r\nContent-Length: 67108865\r\n\r\n",
            413,
            "body of 67108865 bytes exceeds the 67108864-byte limit",
        ),
        (
            b"X * RTSP/1.0\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
            413,
            "body of 99999999999999999999 bytes exceeds the 67108864-byte limit",
        ),
        (
            b"X * RTSP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
            "Transfer-Encoding is not supported",
        ),
    ],
)
def test_exact_errors(data, status, message):
    err = error_of(data)
    assert (err.status_hint, str(err)) == (status, message)
    # The same status whatever the split (garbage may be caught before its line ends,
    # so the quoted snippet can be shorter).
    reader = RtspReader()
    with pytest.raises(ProtocolError) as info:
        for i in range(len(data)):
            reader.receive_data(data[i : i + 1])
            drain(reader)
    assert info.value.status_hint == status
    assert str(info.value).split(" '")[0] == message.split(" '")[0]


def test_garbage_is_rejected_before_a_blank_line():
    reader = RtspReader()
    reader.receive_data(b"\x16\x03\x01\x02\x00\x01")  # a TLS ClientHello, say
    with pytest.raises(ProtocolError, match="malformed request method"):
        reader.next_request()
    reader = RtspReader()
    reader.receive_data(b"A" * 33)  # no method is that long
    with pytest.raises(ProtocolError, match="malformed request method"):
        reader.next_request()
    reader = RtspReader()
    reader.receive_data(b"HELLO world\n")  # first line complete: judged at once
    with pytest.raises(ProtocolError, match="malformed request line 'HELLO world'"):
        reader.next_request()


def test_header_block_limit():
    big = b"X * RTSP/1.0\r\nA: " + b"a" * 20000
    err = error_of(big)
    assert (err.status_hint, str(err)) == (431, "RTSP header block exceeds 16384 bytes")
    complete = b"X * RTSP/1.0\r\nA: " + b"a" * 200 + b"\r\n\r\n"
    err = error_of(complete, max_header_bytes=100)
    assert (err.status_hint, str(err)) == (431, "RTSP header block exceeds 100 bytes")
    ok = b"X * RTSP/1.0\r\nA: " + b"a" * 80 + b"\r\n\r\n"
    # The limit covers the head including its blank line, exactly.
    assert len(feed([ok], max_header_bytes=len(ok))) == 1
    assert error_of(ok, max_header_bytes=len(ok) - 1).status_hint == 431


def test_header_count_limit():
    data = b"X * RTSP/1.0\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n"
    err = error_of(data)
    assert (err.status_hint, str(err)) == (431, "more than 100 header lines")
    data = b"X * RTSP/1.0\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(100)) + b"\r\n"
    assert len(feed([data])[0].headers) == 100


def test_reader_stays_in_error():
    reader = RtspReader()
    reader.receive_data(b"OPTIONS * RTSP/9.9\r\n\r\nOPTIONS * RTSP/1.0\r\n\r\n")
    with pytest.raises(ProtocolError) as first:
        reader.next_request()
    for call in (reader.next_request, lambda: reader.receive_data(b"OPTIONS * RTSP/1.0\r\n\r\n")):
        with pytest.raises(ProtocolError) as again:
            call()
        assert again.value is first.value
        assert again.value.status_hint == 505


# -- responses -------------------------------------------------------------------------------


def test_response_bytes_exact():
    r = RtspResponse(200, [("CSeq", "1"), ("Server", "AirTunes/105.1")])
    assert (
        bytes(r)
        == b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nServer: AirTunes/105.1\r\nContent-Length: 0\r\n\r\n"
    )
    r = RtspResponse(
        200, {"CSeq": "5", "Content-Type": "text/parameters"}, body=b"volume: -15.000000\r\n"
    )
    assert bytes(r) == (
        b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nContent-Type: text/parameters\r\nContent-Length: 20\r\n\r\n"
        b"volume: -15.000000\r\n"
    )


def test_response_replaces_a_given_content_length():
    r = RtspResponse(400, Headers([("Content-Length", "99"), ("CSeq", "2")]), body=b"ab")
    assert bytes(r) == b"RTSP/1.0 400 Bad Request\r\nCSeq: 2\r\nContent-Length: 2\r\n\r\nab"


def test_response_reasons():
    expected = {
        200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
        405: "Method Not Allowed", 413: "Request Entity Too Large",
        431: "Request Header Fields Too Large", 451: "Parameter Not Understood",
        453: "Not Enough Bandwidth", 454: "Session Not Found",
        455: "Method Not Valid in This State", 456: "Header Field Not Valid for Resource",
        500: "Internal Server Error", 501: "Not Implemented", 505: "RTSP Version Not Supported",
    }  # fmt: skip
    for code, reason in expected.items():
        assert REASONS[code] == reason
        assert bytes(RtspResponse(code)).startswith(f"RTSP/1.0 {code} {reason}\r\n".encode())
    assert bytes(RtspResponse(299)).startswith(b"RTSP/1.0 299 Unknown\r\n")
    assert bytes(RtspResponse(200, reason="Fine")).startswith(b"RTSP/1.0 200 Fine\r\n")


@pytest.mark.parametrize(
    "headers",
    [[("CSeq", "1\r\nX: y")], [("Bad Name", "v")], [("A", "line\nbreak")], [("", "v")]],
)
def test_response_refuses_header_injection(headers):
    with pytest.raises(ValueError, match="invalid response header"):
        bytes(RtspResponse(200, headers))


def test_response_is_readable_as_a_request_stream_shape():
    # Our own writer and reader agree on framing (same head/body split rules).
    raw = bytes(RtspResponse(200, [("CSeq", "3")], body=b"xyz"))
    head_, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"xyz" and head_.endswith(b"Content-Length: 3")


def test_response_from_a_generator_serialises_twice():
    r = RtspResponse(200, ((n, v) for n, v in [("CSeq", "4")]))
    assert bytes(r) == bytes(r) == b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_a_body_over_the_limit_is_skipped_unbuffered_and_the_stream_goes_on(chunk):
    reader = RtspReader(max_body_bytes=100)
    big = b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    after = b"OPTIONS * RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 3\r\n\r\nabc"
    stream = big + after
    requests = []
    most_buffered = 0
    for start in range(0, len(stream), chunk):
        reader.receive_data(stream[start : start + chunk])
        while (request := reader.next_request()) is not None:
            requests.append(request)
        most_buffered = max(most_buffered, reader.buffered)
    assert [(r.method, r.body, r.body_refused) for r in requests] == [
        ("SET_PARAMETER", b"", 5000),
        ("OPTIONS", b"abc", 0),
    ]
    if chunk < 5000:
        assert most_buffered < 200 + chunk  # skipped as it came, never held whole
