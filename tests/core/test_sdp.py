"""ANNOUNCE SDP: the four captured announcements, codec from rtpmap only, exact errors."""

import base64

import pytest

from raopd.core.rtsp import RtspReader
from raopd.core.sdp import AlacConfig, Codec, StreamParams, parse_sdp
from raopd.errors import ProtocolError
from tests.core.wire_data import rtsp_stream

TYPICAL = AlacConfig(352, 0, 16, 40, 10, 14, 2, 255, 0, 0, 44100)
KEY = bytes(range(256))
IV = bytes(range(16))


def announce_body(name: str) -> bytes:
    reader = RtspReader()
    reader.receive_data(rtsp_stream(name))
    while (request := reader.next_request()) is not None:
        if request.method == "ANNOUNCE":
            return request.body
    raise AssertionError("no ANNOUNCE")


def sdp(*attributes: str) -> bytes:
    lines = [
        "v=0",
        "o=iTunes 1 0 IN IP4 127.0.0.1",
        "s=iTunes",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 0 RTP/AVP 96",
        *attributes,
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def test_codec_enum_values():
    assert Codec.ALAC.value == "AppleLossless" and Codec.L16.value == "L16"


def test_node_alac_encrypted():
    p = parse_sdp(announce_body("node-alac-rsa"))
    assert p.codec is Codec.ALAC and p.alac == TYPICAL
    assert (p.frames_per_packet, p.sample_rate, p.channels, p.bits) == (352, 44100, 2, 16)
    assert len(p.rsaaeskey) == 256 and p.encrypted
    assert p.aesiv == base64.b64decode("ePRBLI0XN5ArFaaz7ncNZw==")
    assert (p.min_latency_frames, p.max_latency_frames) == (None, None)


def test_cliraop_alac_plain():
    p = parse_sdp(announce_body("cliraop-alac-plain"))
    assert p == StreamParams(codec=Codec.ALAC, alac=TYPICAL)
    assert not p.encrypted


def test_pyatv_l16():
    assert parse_sdp(announce_body("pyatv-l16")) == StreamParams(codec=Codec.L16)


def test_pyatv_stock_l16_with_alac_fmtp_stays_l16():
    body = announce_body("pyatv-stock-l16-fmtp-crash")
    assert b"a=fmtp:96 352 0 16 40 10 14 2 255 0 0 44100" in body
    p = parse_sdp(body)
    assert p.codec is Codec.L16 and p.alac is None
    assert (p.sample_rate, p.channels, p.bits, p.frames_per_packet) == (44100, 2, 16, 352)


def test_itunes_style_full_announcement():
    p = parse_sdp(
        sdp(
            "a=rtpmap:96 AppleLossless",
            "a=fmtp:96 352 0 16 40 10 14 2 255 0 0 44100",
            f"a=rsaaeskey:{b64(KEY)}",
            f"a=aesiv:{b64(IV)}",
            "a=min-latency:11025",
            "a=max-latency:88200",
        )
    )
    assert (p.rsaaeskey, p.aesiv) == (KEY, IV)
    assert (p.min_latency_frames, p.max_latency_frames) == (11025, 88200)


def test_padded_base64_and_bare_lf_are_fine():
    body = sdp("a=rtpmap:96 AppleLossless", f"a=rsaaeskey:{base64.b64encode(KEY).decode()}",
               f"a=aesiv:{base64.b64encode(IV).decode()}").replace(b"\r\n", b"\n")  # fmt: skip
    p = parse_sdp(body)
    assert (p.rsaaeskey, p.aesiv, p.alac) == (KEY, IV, TYPICAL)


def test_partial_fmtp_keeps_typical_defaults():
    p = parse_sdp(sdp("a=rtpmap:96 AppleLossless", "a=fmtp:96 4096 0 16"))
    assert p.alac == AlacConfig(4096, 0, 16, 40, 10, 14, 2, 255, 0, 0, 44100)
    assert p.frames_per_packet == 4096
    p = parse_sdp(sdp("a=rtpmap:96 AppleLossless", "a=fmtp:96 352 0 16 40 10 14 1 255 0 0 44100 7"))
    assert p.channels == 1 and p.alac.channels == 1  # the extra 12th field is ignored


def test_rtpmap_chosen_by_media_format():
    p = parse_sdp(sdp("a=rtpmap:97 AppleLossless", "a=rtpmap:96 L16/44100/2").replace(
        b"RTP/AVP 96", b"RTP/AVP 96 97"))  # fmt: skip
    assert p.codec is Codec.L16
    p = parse_sdp(b"v=0\r\na=rtpmap:96 L16/44100/1\r\n")  # no m= line: the first rtpmap
    assert (p.codec, p.channels) == (Codec.L16, 1)


@pytest.mark.parametrize(
    ("attributes", "status", "message"),
    [
        (
            ["a=rtpmap:96 AppleLossless", "a=fpaeskey:RlBMWQECAQAAAAA8AAAAAA"],
            456,
            "FairPlay is not supported (fpaeskey)",
        ),
        (
            ["a=rtpmap:96 mpeg4-generic/44100/2", "a=fmtp:96 mode=AAC-eld; constantDuration=480"],
            456,
            "unsupported codec 'mpeg4-generic/44100/2'",
        ),
        (
            ["a=rtpmap:96 AppleLossless", f"a=rsaaeskey:{b64(KEY)}"],
            456,
            "SDP has only one of rsaaeskey/aesiv (aesiv missing)",
        ),
        (
            ["a=rtpmap:96 AppleLossless", f"a=aesiv:{b64(IV)}"],
            456,
            "SDP has only one of rsaaeskey/aesiv (rsaaeskey missing)",
        ),
        (
            ["a=rtpmap:96 AppleLossless", f"a=rsaaeskey:{b64(KEY)}", f"a=aesiv:{b64(IV[:15])}"],
            456,
            "aesiv is 15 bytes, expected 16",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=rsaaeskey:!!!!", f"a=aesiv:{b64(IV)}"],
            456,
            "rsaaeskey is not valid base64",
        ),
        (
            ["a=rtpmap:96 AppleLossless", f"a=rsaaeskey:{b64(KEY)}", "a=aesiv:ab\u00e9c"],
            456,
            "aesiv is not valid base64",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=rsaaeskey:", f"a=aesiv:{b64(IV)}"],
            456,
            "rsaaeskey is empty",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=fmtp:96 352 0 24"],
            456,
            "ALAC bit depth 24 is not supported (only 16)",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=fmtp:96 352 0 16 40 10 14 6"],
            456,
            "ALAC channel count 6 is not supported (1 or 2)",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=fmtp:96 352 0 16 40 10 14 2 255 0 0 48000"],
            456,
            "sample rate 48000 Hz is not supported (only 44100)",
        ),
        (["a=rtpmap:96 AppleLossless", "a=fmtp:96 0"], 456, "ALAC frame length 0 outside 1..8192"),
        (
            ["a=rtpmap:96 AppleLossless", "a=fmtp:96 9000"],
            456,
            "ALAC frame length 9000 outside 1..8192",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=fmtp:96 352 x"],
            400,
            "ALAC fmtp field 2 (compatible_version) is not a non-negative integer: 'x'",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=fmtp:96 352 0 16 400"],
            400,
            "ALAC fmtp field 4 (pb) out of range: 400",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=fmtp:96 352 0 16 40 10 14 2 65536"],
            400,
            "ALAC fmtp field 8 (max_run) out of range: 65536",
        ),
        (["a=rtpmap:96 L16/48000/2"], 456, "sample rate 48000 Hz is not supported (only 44100)"),
        (["a=rtpmap:96 L16/44100/6"], 456, "L16 channel count 6 is not supported (1 or 2)"),
        (["a=rtpmap:96 L16"], 400, "malformed L16 rtpmap 'L16'"),
        (["a=rtpmap:96 L16/x/2"], 400, "L16 sample rate is not a non-negative integer: 'x'"),
        (["a=min-latency:11025"], 400, "SDP has no a=rtpmap line"),
        (
            ["a=rtpmap:96 AppleLossless", "a=min-latency:-5"],
            400,
            "a=min-latency is not a non-negative integer: '-5'",
        ),
        (
            ["a=rtpmap:96 AppleLossless", "a=max-latency:lots"],
            400,
            "a=max-latency is not a non-negative integer: 'lots'",
        ),
        (["a=rtpmap:96 AppleLossless", "garbage line"], 400, "malformed SDP line 'garbage line'"),
        (["a=rtpmap:96 AppleLossless", "m=audio 0"], 400, "malformed SDP media line 'm=audio 0'"),
    ],
)
def test_exact_errors(attributes, status, message):
    with pytest.raises(ProtocolError) as info:
        parse_sdp(sdp(*attributes))
    assert (info.value.status_hint, str(info.value)) == (status, message)


@pytest.mark.parametrize("body", [b"", b"\r\n  \r\n"])
def test_empty(body):
    with pytest.raises(ProtocolError, match=r"^empty SDP body$"):
        parse_sdp(body)
