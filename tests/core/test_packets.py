"""RTP/RAOP datagrams: protocol.md test vectors, real captures, round trips, exact errors."""

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.packets import (
    AudioPacket,
    ResendRequest,
    ResentAudio,
    SyncPacket,
    TimingPacket,
    parse_datagram,
)
from raopd.errors import ProtocolError
from tests.core.wire_data import CAPTURES, datagrams

FAST = settings(max_examples=200, deadline=None)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 2**64 - 1)


# -- protocol.md section 12 vectors ---------------------------------------------------------


def test_t5_sync_packet():
    raw = bytes.fromhex("80d40004 c7cd11a8 83ab1c49 2fe422e2 c7ce3f1f")
    p = parse_datagram(raw)
    assert p == SyncPacket(
        rtptime_at_ntp=3352105384,
        ntp=0x83AB1C492FE422E2,
        rtptime_now=3352182559,
        first=False,
        flags=4,
    )
    assert p.latency_frames == 77175
    assert bytes(p) == raw


def test_t6_timing_pair():
    request = bytes.fromhex("80d20007 00000000 0000000000000000 0000000000000000 83c117ccafba9b32")
    reply = bytes.fromhex("80d30007 00000000 83c117ccafba9b32 83c117ccb012ceb6 83c117ccb0141047")
    req = parse_datagram(request)
    rep = parse_datagram(reply)
    assert req == TimingPacket(reply=False, origin=0, receive=0, transmit=0x83C117CCAFBA9B32)
    assert rep == TimingPacket(
        reply=True,
        origin=0x83C117CCAFBA9B32,
        receive=0x83C117CCB012CEB6,
        transmit=0x83C117CCB0141047,
    )
    assert rep.origin == req.transmit  # the reply echoes our transmit stamp
    assert bytes(req) == request and bytes(rep) == reply


def test_t7_first_sync_from_apple_music():
    raw = bytes.fromhex("90d40007 3e93bbf3 83b08f19 ba24ea9b 3e95147b")
    p = parse_datagram(raw)
    assert isinstance(p, SyncPacket)
    assert p.first is True and p.flags == 7
    assert p.latency_frames == 88200
    assert bytes(p) == raw


def test_latency_wraps_modulo_2_32():
    p = SyncPacket(rtptime_at_ntp=0xFFFFFF00, ntp=0, rtptime_now=0x100)
    assert p.latency_frames == 0x200


# -- real captures ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_every_captured_datagram_parses_and_round_trips(name):
    kinds = Counter()
    for raw in datagrams(name):
        p = parse_datagram(raw)
        assert bytes(p) == raw
        kinds[type(p).__name__] += 1
    assert kinds["AudioPacket"] >= 4 and kinds["SyncPacket"] >= 1 and kinds["TimingPacket"] >= 2


def test_captured_details():
    node = [parse_datagram(d) for d in datagrams("node-alac-rsa")]
    audio = [p for p in node if isinstance(p, AudioPacket)]
    assert (audio[0].seq, audio[0].rtptime, audio[0].ssrc) == (14, 93128, 0x377FD69F)
    assert len(audio[0].payload) == 1416 and not audio[0].marker
    assert audio[-1].seq == 4141
    # cliraop: a first sync (0x90), a marker packet and a short last packet.
    cli = [parse_datagram(d) for d in datagrams("cliraop-alac-plain")]
    assert any(isinstance(p, SyncPacket) and p.first for p in cli)
    cli_audio = [p for p in cli if isinstance(p, AudioPacket)]
    assert cli_audio[0].marker and cli_audio[0].seq == 17768
    assert cli_audio[-1].seq == 21526 and len(cli_audio[-1].payload) == 610
    # cliraop puts its IP into bytes 4..7 of timing replies; they survive a round trip.
    replies = [p for p in cli if isinstance(p, TimingPacket) and p.reply]
    assert replies[0].reserved == 0x7F000001
    # pyatv: L16 payloads of 1408 bytes.
    py = [parse_datagram(d) for d in datagrams("pyatv-l16")]
    assert {len(p.payload) for p in py if isinstance(p, AudioPacket)} >= {1408}


# -- round trips -----------------------------------------------------------------------------

audio_packets = st.builds(AudioPacket, U16, U32, U32, st.binary(max_size=1500), st.booleans())
packets = st.one_of(
    audio_packets,
    st.builds(ResentAudio, audio_packets, U16),
    st.builds(SyncPacket, U32, U64, U32, st.booleans(), U16),
    st.builds(ResendRequest, U16, U16, U16),
    st.builds(TimingPacket, st.booleans(), U64, U64, U64, U16, U32),
)


@FAST
@given(packets)
def test_object_bytes_object(packet):
    raw = bytes(packet)
    again = parse_datagram(raw)
    assert again == packet
    assert type(again) is type(packet)
    assert bytes(again) == raw


@st.composite
def valid_wire(draw):
    """Arbitrary byte strings of a valid shape (not built from objects)."""
    kind = draw(st.sampled_from(["audio", "resent", "sync", "resend", "timing"]))
    audio = bytes([0x80, draw(st.sampled_from([0x60, 0xE0]))]) + draw(
        st.binary(min_size=10, max_size=10)
    )
    audio += draw(st.binary(max_size=64))
    if kind == "audio":
        return audio
    if kind == "resent":
        return b"\x80\xd6" + draw(st.binary(min_size=2, max_size=2)) + audio
    if kind == "sync":
        return bytes([draw(st.sampled_from([0x80, 0x90])), 0xD4]) + draw(
            st.binary(min_size=18, max_size=18)
        )
    if kind == "resend":
        return b"\x80\xd5" + draw(st.binary(min_size=6, max_size=6))
    return bytes([0x80, draw(st.sampled_from([0xD2, 0xD3]))]) + draw(
        st.binary(min_size=30, max_size=30)
    )


@FAST
@given(valid_wire())
def test_bytes_object_bytes(raw):
    assert bytes(parse_datagram(raw)) == raw


def test_each_class_parses_its_own_kind():
    a = AudioPacket(1, 2, 3, b"xyz", marker=True)
    assert AudioPacket.parse(bytes(a)) == a
    assert ResentAudio.parse(bytes(ResentAudio(a, 9))) == ResentAudio(a, 9)
    assert SyncPacket.parse(bytes(SyncPacket(1, 2, 3))) == SyncPacket(1, 2, 3)
    assert ResendRequest.parse(bytes(ResendRequest(5, 6))) == ResendRequest(5, 6, 1)
    assert bytes(ResendRequest(0xFFFF, 3)) == bytes.fromhex("80d50001ffff0003")


def test_fast_audio_construction_matches_the_dataclass():
    raw = bytes(AudioPacket(7, 8, 9, b"payload", marker=True))
    parsed = AudioPacket.parse(raw)
    built = AudioPacket(7, 8, 9, b"payload", True)
    assert parsed == built and hash(parsed) == hash(built) and repr(parsed) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.seq = 1  # type: ignore[misc]


def test_parse_accepts_buffer_types():
    raw = bytes(AudioPacket(1, 2, 3, b"abc"))
    assert (
        parse_datagram(memoryview(raw))
        == parse_datagram(bytearray(raw))
        == AudioPacket(1, 2, 3, b"abc")
    )
    assert type(parse_datagram(memoryview(raw)).payload) is bytes


@pytest.mark.parametrize(
    "packet",
    [
        AudioPacket(0x10000, 0, 0, b""),
        AudioPacket(0, 2**32, 0, b""),
        SyncPacket(0, 2**64, 0),
        ResendRequest(-1, 1),
        TimingPacket(True, 0, 0, 0, seq=0x10000),
        ResentAudio(AudioPacket(0, 0, 0, b""), 0x10000),
    ],
)
def test_out_of_range_fields_raise_value_error(packet):
    with pytest.raises(ValueError, match="out of range"):
        bytes(packet)


# -- exact errors ----------------------------------------------------------------------------

AUDIO = bytes(AudioPacket(1, 2, 3, b"\x00" * 16))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "datagram shorter than 2 bytes (0 bytes)"),
        (b"\x80", "datagram shorter than 2 bytes (1 bytes)"),
        (b"\x80\x61", "unknown RTP payload type 0x61"),
        (b"\x80\xff" + bytes(30), "unknown RTP payload type 0x7f"),
        (b"\x80\x60", "RTP audio packet shorter than 12 bytes (2 bytes)"),
        (AUDIO[:11], "RTP audio packet shorter than 12 bytes (11 bytes)"),
        (b"\x81" + AUDIO[1:], "RTP audio packet byte 0 is 0x81, expected 0x80"),
        (b"\x90" + AUDIO[1:], "RTP audio packet byte 0 is 0x90, expected 0x80"),
        (b"\x80\xd6\x00\x01" + AUDIO[:11], "resent audio packet shorter than 16 bytes (15 bytes)"),
        (
            b"\x80\xd6\x00\x01" + b"\x80\xd4" + AUDIO[2:],
            "resent packet carries payload type 0x54, not audio (0x60)",
        ),
        (b"\x80\x56\x00\x01" + AUDIO, "resent audio packet byte 1 is 0x56, expected 0xd6"),
        (b"\xa0\xd6\x00\x01" + AUDIO, "resent audio packet byte 0 is 0xa0, expected 0x80"),
        (
            b"\x80\xd6\x00\x01" + b"\x00" + AUDIO[1:],
            "RTP audio packet byte 0 is 0x00, expected 0x80",
        ),
        (b"\x80\xd4" + bytes(17), "sync packet is 19 bytes, expected 20"),
        (b"\x80\xd4" + bytes(19), "sync packet is 21 bytes, expected 20"),
        (b"\x88\xd4" + bytes(18), "sync packet byte 0 is 0x88, expected 0x80 or 0x90"),
        (b"\x80\x54" + bytes(18), "sync packet byte 1 is 0x54, expected 0xd4"),
        (b"\x80\xd5" + bytes(5), "resend request is 7 bytes, expected 8"),
        (b"\x90\xd5" + bytes(6), "resend request byte 0 is 0x90, expected 0x80"),
        (b"\x80\x55" + bytes(6), "resend request byte 1 is 0x55, expected 0xd5"),
        (b"\x80\xd3" + bytes(29), "timing packet is 31 bytes, expected 32"),
        (b"\x00\xd3" + bytes(30), "timing packet byte 0 is 0x00, expected 0x80"),
        (b"\x80\x52" + bytes(30), "timing packet byte 1 is 0x52, expected 0xd2 or 0xd3"),
    ],
)
def test_exact_error_messages(raw, message):
    with pytest.raises(ProtocolError) as info:
        parse_datagram(raw)
    assert str(info.value) == message
    assert info.value.status_hint == 400


def test_class_parse_rejects_other_kinds():
    sync = bytes(SyncPacket(1, 2, 3))
    with pytest.raises(
        ProtocolError, match=r"^RTP packet payload type 0x54 is not audio \(0x60\)$"
    ):
        AudioPacket.parse(sync + bytes(4))
    with pytest.raises(ProtocolError, match="timing packet is 20 bytes"):
        TimingPacket.parse(sync)
