"""DMAP metadata: the T9 vector, captured bodies, containers, unknown tags, exact errors."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.dmap import CONTAINER_TAGS, TrackMetadata, parse_dmap
from raopd.core.rtsp import RtspReader
from raopd.errors import ProtocolError
from tests.core.wire_data import rtsp_stream

T9 = bytes.fromhex(
    "6d6c69740000003c 6d696e6d00000004 536f6e67 6173617200000006 417274697374"
    " 6173616c00000005 416c62756d 6173746d00000004 000347d8 6173646b00000001 00"
)


def item(tag: str, value: bytes) -> bytes:
    return tag.encode() + struct.pack(">I", len(value)) + value


def dmap_bodies(name: str) -> list[bytes]:
    reader = RtspReader()
    reader.receive_data(rtsp_stream(name))
    out = []
    while (r := reader.next_request()) is not None:
        if r.headers.get("content-type") == "application/x-dmap-tagged":
            out.append(r.body)
    return out


def test_t9_vector():
    m = parse_dmap(T9)
    assert (m.title, m.artist, m.album, m.duration_ms) == ("Song", "Artist", "Album", 215000)
    assert m.raw == {
        "minm": b"Song",
        "asar": b"Artist",
        "asal": b"Album",
        "astm": b"\x00\x03\x47\xd8",
        "asdk": b"\x00",
    }
    assert (m.album_artist, m.genre, m.composer, m.track_number, m.disc_number, m.year) == (
        None,
    ) * 6


def test_captured_bodies():
    (node,) = dmap_bodies("node-alac-rsa")
    m = parse_dmap(node)
    assert m.title and m.title.startswith("Node Tit") and m.artist and m.album
    (pyatv,) = dmap_bodies("pyatv-l16")
    m = parse_dmap(pyatv)
    assert m.title and m.title.startswith("Sweep Ti") and set(m.raw) == {"minm", "asar", "asal"}
    # Stock pyatv sends an empty mlit: valid, and empty.
    (stock,) = dmap_bodies("pyatv-stock-l16-fmtp-crash")
    assert stock == b"mlit\x00\x00\x00\x00"
    assert parse_dmap(stock) == TrackMetadata()


def test_all_common_fields_and_fallbacks():
    body = item(
        "mlit",
        item("minm", "Tïtle".encode())
        + item("assl", b"Sort AA")
        + item("asgn", b"Genre")
        + item("ascp", b"Composer")
        + item("astn", b"\x00\x07")
        + item("asdn", b"\x01")
        + item("asyr", b"\x07\xe8")
        + item("mper", bytes(8))
        + item("zzzz", b"unknown tag skipped by length")
        + item("minm", b"second title ignored"),
    )
    m = parse_dmap(body)
    assert (m.title, m.album_artist, m.genre, m.composer) == (
        "Tïtle",
        "Sort AA",
        "Genre",
        "Composer",
    )
    assert (m.track_number, m.disc_number, m.year) == (7, 1, 2024)
    assert m.raw["zzzz"] == b"unknown tag skipped by length" and m.raw["minm"] == "Tïtle".encode()
    both = parse_dmap(item("mlit", item("asaa", b"AA") + item("assl", b"sort")))
    assert both.album_artist == "AA"


def test_nested_containers_and_several_top_level_items():
    inner = item("mlit", item("minm", b"Deep"))
    body = item("mlcl", inner) + item("asar", b"Top")
    m = parse_dmap(body)
    assert (m.title, m.artist) == ("Deep", "Top")
    assert parse_dmap(b"") == TrackMetadata()


def test_bad_utf8_is_replaced_not_fatal():
    assert parse_dmap(item("mlit", item("minm", b"a\xffb"))).title == "a\ufffdb"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"mlit", "DMAP item header truncated at offset 0"),
        (
            b"mlit\x00\x00\x00\x0c" + item("minm", b"x") + b"abc",
            "DMAP item header truncated at offset 17",
        ),
        (
            b"mlit\x00\x00\x00\x10minm\x00\x00\x00\x09abcdefgh",
            "DMAP item 'minm' at offset 8 claims 9 bytes, only 8 left",
        ),
        (
            b"mlit\x00\x00\x00\x40" + item("minm", b"x"),
            "DMAP item 'mlit' at offset 0 claims 64 bytes, only 9 left",
        ),
        (b"ml\x00t\x00\x00\x00\x00", "DMAP tag at offset 0 is not printable ASCII"),
        (
            item("mlit", item("astm", b"\x00\x01\x02\x03\x04\x05\x06\x07\x08")),
            "DMAP integer 'astm' has 9 bytes, expected 1 to 8",
        ),
        (item("mlit", item("astn", b"")), "DMAP integer 'astn' has 0 bytes, expected 1 to 8"),
        (item("mlit", item("minm", b"x")) + b"\x00", "DMAP item header truncated at offset 17"),
    ],
)
def test_exact_errors(body, message):
    with pytest.raises(ProtocolError) as info:
        parse_dmap(body)
    assert (str(info.value), info.value.status_hint) == (message, 400)


def test_nesting_limit():
    body = item("minm", b"x")
    for _ in range(17):
        body = item("mlit", body)
    with pytest.raises(ProtocolError, match=r"^DMAP containers nested deeper than 16$"):
        parse_dmap(body)
    body = item("minm", b"x")
    for _ in range(16):
        body = item("mlit", body)
    assert parse_dmap(body).title == "x"


# Leaves only: containers would be walked, and integer tags must have an integer's length.
NOT_LEAVES = CONTAINER_TAGS | {"astm", "astn", "asdn", "asyr"}
tags = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=4, max_size=4).filter(
    lambda t: t not in NOT_LEAVES
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(tags, st.binary(max_size=40)), max_size=12))
def test_random_leaf_lists(leaves):
    body = item("mlit", b"".join(item(t, v) for t, v in leaves))
    expected: dict[str, bytes] = {}
    for t, v in leaves:
        expected.setdefault(t, v)
    assert parse_dmap(body).raw == expected
