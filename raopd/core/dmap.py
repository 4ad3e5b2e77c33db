"""DMAP (`application/x-dmap-tagged`) track metadata -> `TrackMetadata`.

A DMAP item is a 4-byte ASCII tag, a u32 big-endian length and that many bytes
of value. Senders send one `mlit` container holding the track's items. Container
tags (a fixed list) are walked; every other item is a leaf and kept in `raw`
under its tag, so unknown tags cost nothing and are skipped by length. Strings
are UTF-8 (undecodable bytes are replaced, not fatal); integers are big-endian
of 1 to 8 bytes. A structural defect (an item running past its container, a
non-ASCII tag, an integer tag of the wrong size) raises `ProtocolError` (400).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raopd.errors import ProtocolError

# Tags whose value is a list of items. Only `mlit` is seen from RAOP senders;
# the rest are DMAP/DAAP containers a sender could plausibly wrap around it.
CONTAINER_TAGS = frozenset(
    {
        "mlit",
        "mlcl",
        "mdcl",
        "mccr",
        "msrv",
        "mlog",
        "mupd",
        "adbs",
        "apso",
        "aply",
        "avdb",
        "cmst",
        "cmgt",
        "casp",
        "abro",
        "abar",
        "abal",
        "agal",
        "mcon",
    }
)
_STRING_TAGS = {
    "minm": "title",
    "asar": "artist",
    "asal": "album",
    "asaa": "album_artist",
    "asgn": "genre",
    "ascp": "composer",
}
_INT_TAGS = {
    "astm": "duration_ms",
    "astn": "track_number",
    "asdn": "disc_number",
    "asyr": "year",
}
# Sort-name album artist, used only when `asaa` is missing.
_ALBUM_ARTIST_FALLBACK = "assl"
_MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class TrackMetadata:
    """The common fields, decoded; `raw` has every leaf item's value bytes by tag.

    When a tag repeats, the first occurrence wins (both here and in `raw`).
    """

    title: str | None = None
    artist: str | None = None
    album: str | None = None
    album_artist: str | None = None
    genre: str | None = None
    composer: str | None = None
    duration_ms: int | None = None
    track_number: int | None = None
    disc_number: int | None = None
    year: int | None = None
    raw: dict[str, bytes] = field(default_factory=dict)
    # The items directly inside the outer container (normally `mlit`), in the order sent,
    # as (tag, value bytes): what shairport-sync's metadata pipe passes on one by one.
    items: tuple[tuple[str, bytes], ...] = ()


def _walk(body: bytes, raw: dict[str, bytes]) -> None:
    # Iterative walk with an explicit stack of (end offset, depth) per container,
    # so hostile nesting cannot exhaust the interpreter stack.
    stack: list[tuple[int, int]] = [(len(body), 0)]
    pos = 0
    while stack:
        end, depth = stack[-1]
        if pos == end:
            stack.pop()
            continue
        if end - pos < 8:
            raise ProtocolError(f"DMAP item header truncated at offset {pos}")
        tag_bytes = body[pos : pos + 4]
        if not all(0x20 < b < 0x7F for b in tag_bytes):
            raise ProtocolError(f"DMAP tag at offset {pos} is not printable ASCII")
        tag = tag_bytes.decode("ascii")
        length = int.from_bytes(body[pos + 4 : pos + 8], "big")
        start = pos + 8
        if length > end - start:
            raise ProtocolError(
                f"DMAP item {tag!r} at offset {pos} claims {length} bytes, only {end - start} left"
            )
        if tag in CONTAINER_TAGS:
            if depth + 1 > _MAX_DEPTH:
                raise ProtocolError(f"DMAP containers nested deeper than {_MAX_DEPTH}")
            stack.append((start + length, depth + 1))
            pos = start
        else:
            raw.setdefault(tag, body[start : start + length])
            pos = start + length


def _int_value(tag: str, value: bytes) -> int:
    if not 1 <= len(value) <= 8:
        raise ProtocolError(f"DMAP integer {tag!r} has {len(value)} bytes, expected 1 to 8")
    return int.from_bytes(value, "big")


def parse_dmap(body: bytes) -> TrackMetadata:
    """Parse a DMAP body (normally one `mlit`); an empty body gives empty metadata."""
    raw: dict[str, bytes] = {}
    _walk(bytes(body), raw)
    strings = {
        attr: raw[tag].decode("utf-8", errors="replace")
        for tag, attr in _STRING_TAGS.items()
        if tag in raw
    }
    if "album_artist" not in strings and _ALBUM_ARTIST_FALLBACK in raw:
        strings["album_artist"] = raw[_ALBUM_ARTIST_FALLBACK].decode("utf-8", errors="replace")
    ints = {attr: _int_value(tag, raw[tag]) for tag, attr in _INT_TAGS.items() if tag in raw}
    return TrackMetadata(**strings, **ints, raw=raw, items=_top_items(bytes(body)))  # type: ignore[arg-type]


def _top_items(body: bytes) -> tuple[tuple[str, bytes], ...]:
    """The children of a body that is one container item, else the body's own items.

    Only called after `_walk` accepted the body, so every header and length is sound.
    """
    if len(body) >= 8 and body[:4].decode("ascii") in CONTAINER_TAGS:
        length = int.from_bytes(body[4:8], "big")
        if 8 + length == len(body):
            body = body[8:]
    items: list[tuple[str, bytes]] = []
    pos = 0
    while pos + 8 <= len(body):
        tag = body[pos : pos + 4].decode("ascii")
        length = int.from_bytes(body[pos + 4 : pos + 8], "big")
        items.append((tag, body[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    return tuple(items)
