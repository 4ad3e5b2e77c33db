"""RTSP/1.0 framing: bytes in any split -> `RtspRequest`s; `RtspResponse` -> bytes.

The reader is sans-I/O: feed it whatever the socket delivered with
`receive_data()`, then call `next_request()` until it returns None. However the
byte stream is cut, the same requests come out.

What it accepts, on purpose:
- request line `METHOD SP URI SP VERSION` with VERSION `RTSP/1.0`, `HTTP/1.1` or
  `HTTP/1.0` (pyatv POSTs with HTTP/1.1). The URI may be empty: node-airtunes2
  sends `TEARDOWN  RTSP/1.0` with two spaces.
- CRLF line ends, and bare LF as well; empty lines between requests are skipped.
- header values as UTF-8 (sender names are UTF-8); a line that is not valid UTF-8
  is read as Latin-1 rather than rejected.

What it rejects, with the RTSP status to answer (`ProtocolError.status_hint`):
- 400: malformed request line or header line, header folding, control characters,
  a bad or conflicting Content-Length;
- 431: a header block over `max_header_bytes`, or more than `max_headers` lines;
- 413: a body over `max_discard_bytes` (64 MiB), which ends the connection. A body over
  `max_body_bytes` (4 MiB leaves room for artwork) but within that is skipped as it arrives
  (never buffered) and the request comes out with an empty body and `body_refused` set to
  its length: the session answers 413 and the stream goes on (a 20 MB cover must not stop
  the music);
- 501: Transfer-Encoding (RTSP frames bodies by Content-Length only);
- 505: a protocol version other than the three above.
After one error the reader is dead: every later call raises the same error,
because the framing of the rest of the stream can no longer be trusted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from raopd.errors import ProtocolError

SUPPORTED_VERSIONS = frozenset({"RTSP/1.0", "HTTP/1.1", "HTTP/1.0"})

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_DISCARD_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_HEADERS = 100

REASONS: dict[int, str] = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    431: "Request Header Fields Too Large",
    451: "Parameter Not Understood",
    453: "Not Enough Bandwidth",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    456: "Header Field Not Valid for Resource",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "RTSP Version Not Supported",
}

# RFC 7230 tchar: what a method or header name may be made of.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# Control characters other than HT may not appear in a header value (a stray CR
# would let an echoed CSeq split our response).
_BAD_VALUE_CHARS = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))

_TOKEN_BYTES = frozenset(ord(c) for c in _TOKEN_CHARS)
# No RTSP or HTTP method is anywhere near this long; it only bounds the early check.
_MAX_METHOD = 32


def _is_token(s: str) -> bool:
    return bool(s) and _TOKEN_CHARS.issuperset(s)


class Headers:
    """An ordered, case-insensitive multimap of header names to string values.

    `items()` keeps the original spelling and order; lookups ignore case.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append one header line."""
        self._items.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, in order (empty if absent)."""
        return list(self._index.get(name.lower(), ()))

    def items(self) -> list[tuple[str, str]]:
        """All (name, value) pairs in their original order and spelling."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n.lower(), v) for n, v in self._items] == [(n.lower(), v) for n, v in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True, slots=True)
class RtspRequest:
    """One parsed request. `version` is the protocol token as sent (e.g. `RTSP/1.0`)."""

    method: str
    uri: str
    version: str
    headers: Headers
    body: bytes = b""
    body_refused: int = 0  # the length of a body over the limit, skipped unread


def _decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _parse_request_line(raw: bytes) -> tuple[str, str, str]:
    line = _decode_line(raw)
    method, sp, rest = line.partition(" ")
    uri, sp2, version = rest.rpartition(" ")
    if not sp or not sp2:
        raise ProtocolError(f"malformed request line {line[:80]!r}")
    if not _is_token(method) or len(method) > _MAX_METHOD:
        raise ProtocolError(f"malformed request method {method[:40]!r}")
    if not _BAD_VALUE_CHARS.isdisjoint(uri) or " " in uri:
        raise ProtocolError(f"malformed request URI {uri[:80]!r}")
    if version not in SUPPORTED_VERSIONS:
        proto, slash, number = version.partition("/")
        if slash and proto in ("RTSP", "HTTP") and number:
            raise ProtocolError(f"unsupported protocol version {version[:20]!r}", 505)
        raise ProtocolError(f"malformed request line {line[:80]!r}")
    return method, uri, version


class RtspReader:
    """Incremental RTSP request parser; see the module docstring for the rules."""

    def __init__(
        self,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_discard_bytes: int = DEFAULT_MAX_DISCARD_BYTES,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_discard_bytes = max(max_discard_bytes, max_body_bytes)
        self.max_headers = max_headers
        self._buf = bytearray()
        # Where the search for the blank line resumes, so feeding one byte at a
        # time stays linear.
        self._scan = 0
        self._line_checked = False
        # A parsed head waiting for its body.
        self._head: tuple[str, str, str, Headers] | None = None
        self._body_len = 0
        self._discard = 0  # body bytes still to skip (a body over max_body_bytes)
        self._refused = 0  # its whole length
        self._error: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the peer (any amount, any split)."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a request."""
        return len(self._buf)

    def next_request(self) -> RtspRequest | None:
        """The next complete request, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _next(self) -> RtspRequest | None:
        buf = self._buf
        if self._head is None and not self._find_head():
            return None
        if self._discard:
            skip = min(self._discard, len(buf))
            del buf[:skip]
            self._discard -= skip
            if self._discard:
                return None
        if len(buf) < self._body_len:
            return None
        assert self._head is not None
        method, uri, version, headers = self._head
        body = bytes(buf[: self._body_len])
        del buf[: self._body_len]
        self._head = None
        self._body_len = 0
        refused, self._refused = self._refused, 0
        return RtspRequest(method, uri, version, headers, body, body_refused=refused)

    def _find_head(self) -> bool:
        buf = self._buf
        if self._scan == 0:
            # Tolerate empty lines between requests (RFC 7230 section 3.5).
            skip = 0
            while skip < len(buf) and buf[skip] in b"\r\n":
                skip += 1
            if skip:
                del buf[:skip]
            if not buf:
                return False
        # The request line is judged first, however much of the head has arrived,
        # so that every split of the stream fails the same way.
        if not self._line_checked:
            self._check_first_line()
        start = max(self._scan - 2, 0)
        # A head ends within max_header_bytes or not at all: never search further. (With
        # pipelined requests buffered behind it, a search to the end of the buffer made
        # each request cost time proportional to everything queued after it.)
        limit = self.max_header_bytes + 3
        end_lf = buf.find(b"\n\n", start, limit)
        end_crlf = buf.find(b"\n\r\n", start, limit)
        if end_lf < 0 and end_crlf < 0:
            if len(buf) > self.max_header_bytes:
                raise ProtocolError(f"RTSP header block exceeds {self.max_header_bytes} bytes", 431)
            self._scan = min(len(buf), limit)
            return False
        if end_crlf >= 0 and (end_lf < 0 or end_crlf < end_lf):
            head_end, body_start = end_crlf, end_crlf + 3
        else:
            head_end, body_start = end_lf, end_lf + 2
        if body_start > self.max_header_bytes:
            raise ProtocolError(f"RTSP header block exceeds {self.max_header_bytes} bytes", 431)
        head = bytes(buf[:head_end])
        del buf[:body_start]
        self._scan = 0
        self._line_checked = False
        self._parse_head(head)
        return True

    def _check_first_line(self) -> None:
        # Reject garbage as soon as its first line (or just its method) is in,
        # instead of waiting for a blank line that may never come.
        buf = self._buf
        # No newline before self._scan: it was searched on the previous call.
        nl = buf.find(b"\n", self._scan, self.max_header_bytes)
        if nl >= 0:
            _parse_request_line(bytes(buf[:nl]).rstrip(b"\r"))
            self._line_checked = True
            return
        sp = buf.find(b" ", 0, _MAX_METHOD + 1)
        method = bytes(buf[: sp if sp >= 0 else _MAX_METHOD + 1])
        if sp < 0 and method.endswith(b"\r"):
            method = method[:-1]  # maybe the start of the line end
        if not _TOKEN_BYTES.issuperset(method) or len(method) > _MAX_METHOD:
            raise ProtocolError(f"malformed request method {_decode_line(method)[:40]!r}")

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\n")
        method, uri, version = _parse_request_line(lines[0].rstrip(b"\r"))
        if len(lines) - 1 > self.max_headers:
            raise ProtocolError(f"more than {self.max_headers} header lines", 431)
        headers = Headers()
        for raw in lines[1:]:
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            line = _decode_line(raw)
            if line[:1] in (" ", "\t"):
                raise ProtocolError("obsolete header line folding is not supported")
            name, colon, value = line.partition(":")
            if not colon or not _is_token(name):
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            value = value.strip(" \t")
            if not _BAD_VALUE_CHARS.isdisjoint(value):
                raise ProtocolError(f"control character in header {name!r}")
            headers.add(name, value)
        if "transfer-encoding" in headers:
            raise ProtocolError("Transfer-Encoding is not supported", 501)
        length = self._content_length(headers)
        if length > self.max_body_bytes:
            self._discard = self._refused = length
            length = 0
        self._body_len = length
        self._head = (method, uri, version, headers)

    def _content_length(self, headers: Headers) -> int:
        values = headers.get_all("Content-Length")
        if not values:
            return 0
        if any(v != values[0] for v in values):
            raise ProtocolError(f"conflicting Content-Length headers {values[:4]!r}")
        text = values[0]
        if not (text.isascii() and text.isdigit()):
            raise ProtocolError(f"bad Content-Length {text[:40]!r}")
        digits = text.lstrip("0") or "0"
        # Compare by length first: int() refuses strings over 4300 digits.
        if len(digits) > 12 or int(digits) > self.max_discard_bytes:
            raise ProtocolError(
                f"body of {digits[:20]} bytes exceeds the {self.max_discard_bytes}-byte limit",
                413,
            )
        return int(digits)


HeadersLike = Headers | Mapping[str, str] | Iterable[tuple[str, str]]


def _header_pairs(headers: HeadersLike) -> list[tuple[str, str]]:
    if isinstance(headers, Headers):
        return headers.items()
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


@dataclass(frozen=True, slots=True)
class RtspResponse:
    """A response: always `RTSP/1.0`, headers in the given order, then Content-Length.

    `headers` may be `Headers`, a mapping or (name, value) pairs. A Content-Length
    among them is ignored: the real one is computed from `body` and written last.
    """

    status: int
    headers: HeadersLike = field(default_factory=list)
    body: bytes = b""
    reason: str | None = None

    def __post_init__(self) -> None:
        # A one-shot iterator would be empty the second time the response is
        # serialised; keep a list instead.
        if not isinstance(self.headers, Headers | Mapping | list | tuple):
            object.__setattr__(self, "headers", list(self.headers))

    def __bytes__(self) -> bytes:
        reason = self.reason if self.reason is not None else REASONS.get(self.status, "Unknown")
        if not 100 <= self.status <= 999:
            raise ValueError(f"bad RTSP status {self.status}")
        parts = [f"RTSP/1.0 {self.status} {reason}"]
        for name, value in _header_pairs(self.headers):
            if not _is_token(name) or not _BAD_VALUE_CHARS.isdisjoint(value):
                raise ValueError(f"invalid response header {name!r}: {value!r}")
            if name.lower() != "content-length":
                parts.append(f"{name}: {value}")
        parts.append(f"Content-Length: {len(self.body)}")
        if not _BAD_VALUE_CHARS.isdisjoint(reason):
            raise ValueError(f"invalid reason phrase {reason!r}")
        return ("\r\n".join(parts) + "\r\n\r\n").encode("utf-8") + self.body
