"""shairport-sync's metadata formats, item by item, against its documentation."""

from __future__ import annotations

import base64
import struct

from raopd.house.sps import Item, VolumeRange, encode_datagrams, encode_pipe, items_for, pvol_text
from raopd.house.state import Change, ChangeKind, PlayerState, Sender, Volume
from tests.house.sps_reader import parse_stream


def test_text_item_matches_the_documented_example():
    # The example in rAudio's notes on shairport-sync's pipe: album "Songs of Innocence".
    assert encode_pipe(Item("core", "asal", b"Songs of Innocence")) == (
        b"<item><type>636f7265</type><code>6173616c</code><length>18</length>\n"
        b'<data encoding="base64">\nU29uZ3Mgb2YgSW5ub2NlbmNl</data></item>\n'
    )


def test_item_without_data_has_no_data_element():
    assert encode_pipe(Item("ssnc", "pbeg")) == (
        b"<item><type>73736e63</type><code>70626567</code><length>0</length></item>\n"
    )


def test_binary_payloads_round_trip_through_a_strict_reader():
    jpeg = bytes(range(256)) * 40 + b"\xff\xd9"  # binary, longer than one 57-byte chunk
    odd = b"\x00\xff\x10"  # every base64 padding case: 3n, 3n+1, 3n+2 bytes
    items = [Item("ssnc", "PICT", jpeg), Item("core", "mper", b"\x01" * 8)]
    items += [Item("core", "asar", odd[:n]) for n in (1, 2, 3)]
    stream = b"".join(encode_pipe(i) for i in items)
    parsed, rest = parse_stream(stream)
    assert rest == b""
    assert [(p.type, p.code, p.data) for p in parsed] == [(i.type, i.code, i.data) for i in items]
    # One base64 line per item: what line-based readers count on.
    assert stream.count(b"\n") == 3 * len(items)


def _change(kind: ChangeKind, state: PlayerState, **extra: object) -> Change:
    return Change(kind, state, 0.0, **extra)  # type: ignore[arg-type]


def test_metadata_is_bracketed_by_mdst_and_mden_with_the_rtptime():
    items = (("minm", b"Song"), ("asar", b"Artist"), ("asal", b"Album"), ("mper", b"\0" * 8))
    out = items_for(_change(ChangeKind.METADATA, PlayerState(), rtptime=123456, items=items))
    assert [(i.type, i.code, i.data) for i in out] == [
        ("ssnc", "mdst", b"123456"),
        ("core", "minm", b"Song"),
        ("core", "asar", b"Artist"),
        ("core", "asal", b"Album"),
        ("core", "mper", b"\0" * 8),
        ("ssnc", "mden", b"123456"),
    ]
    # Without an RTP time both brackets are empty items.
    bare = items_for(_change(ChangeKind.METADATA, PlayerState(), items=items[:1]))
    assert [(i.code, i.data) for i in bare] == [("mdst", b""), ("minm", b"Song"), ("mden", b"")]


def test_sender_items_in_shairport_sync_order():
    sender = Sender(1, "Joe's iPhone", "10.0.0.2", "10.0.0.1", "AirPlay/381.13", "", "ABCD", "42")
    out = items_for(_change(ChangeKind.SENDER, PlayerState(sender=sender)))
    assert [(i.code, i.data.decode()) for i in out] == [
        ("snam", "Joe's iPhone"),
        ("snua", "AirPlay/381.13"),
        ("acre", "42"),
        ("daid", "ABCD"),
        ("clip", "10.0.0.2"),
        ("svip", "10.0.0.1"),
    ]


def test_pvol_format():
    assert pvol_text(-15.0, -10.0, VolumeRange(-60.0, 0.0)) == "-15.00,-10.00,-60.00,0.00"
    assert pvol_text(-144.0, float("-inf"), VolumeRange(-60.0, 0.0)) == "-144.00,-60.00,-60.00,0.00"
    assert pvol_text(-7.5, -3.0, VolumeRange(ignored=True)) == "-7.50,0.00,0.00,0.00"
    out = items_for(_change(ChangeKind.VOLUME, PlayerState(volume=Volume(-15.0, -10.0))))
    assert out == [Item("ssnc", "pvol", b"-15.00,-10.00,-60.00,0.00")]


def test_small_datagram_is_type_code_value():
    assert encode_datagrams(Item("core", "minm", b"Song"), 500) == [b"coreminmSong"]


def test_large_datagram_goes_in_chunks_that_reassemble():
    data = bytes(range(256)) * 10
    payloads = encode_datagrams(Item("ssnc", "PICT", data), 500)
    assert all(len(p) <= 500 for p in payloads)
    joined = b""
    for index, payload in enumerate(payloads):
        assert payload[:8] == b"ssncchnk"
        ix, total = struct.unpack(">II", payload[8:16])
        assert (ix, total) == (index, len(payloads))
        assert payload[16:24] == b"ssncPICT"
        joined += payload[24:]
    assert joined == data
    assert base64.b64encode(joined) == base64.b64encode(data)
