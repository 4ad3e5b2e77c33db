"""text/parameters bodies: volume and progress, from the captures and edge cases."""

import pytest

from raopd.core.parameters import Progress, parse_parameters, parse_progress, parse_volume
from raopd.core.rtsp import RtspReader
from raopd.errors import ProtocolError
from tests.core.wire_data import CAPTURES, rtsp_stream


def parameter_bodies(name: str) -> list[bytes]:
    reader = RtspReader()
    reader.receive_data(rtsp_stream(name))
    out = []
    while (r := reader.next_request()) is not None:
        if r.headers.get("content-type") == "text/parameters":
            out.append(r.body)
    return out


@pytest.mark.parametrize("name", CAPTURES)
def test_captured_parameter_bodies(name):
    for body in parameter_bodies(name):
        params = parse_parameters(body)
        assert set(params) <= {"volume", "progress"}
        if "volume" in params:
            assert parse_volume(params["volume"]) == -15.0
        if "progress" in params:
            parse_progress(params["progress"])


def test_node_progress_end_past_32_bits_wraps():
    (progress,) = [
        parse_parameters(b)["progress"]
        for b in parameter_bodies("node-alac-rsa")
        if b"progress" in b
    ][:1]
    assert progress == "0/441140/88228000000"
    p = parse_progress(progress)
    assert p == Progress(0, 441140, 88228000000 % 2**32)
    assert p.position_frames() == 441140


def test_pyatv_progress():
    (p,) = [parse_progress(parse_parameters(b)["progress"])
            for b in parameter_bodies("pyatv-l16") if b.startswith(b"progress")]  # fmt: skip
    assert p == Progress(66150, 66150, 1389150)
    assert (p.position_frames(), p.duration_frames()) == (0, 1323000)  # 30 s at 44.1 kHz


def test_progress_across_a_wrap():
    p = parse_progress(" 4294967000/100/4294967000 ")
    assert p.position_frames() == 396 and p.duration_frames() == 0


def test_parameters_shapes():
    assert parse_parameters(b"volume\r\n") == {"volume": ""}  # GET_PARAMETER asks by name
    assert parse_parameters(b"Volume: -11.123877\r\nprogress: 1/2/3\nvolume: 0\n\n") == {
        "volume": "-11.123877",
        "progress": "1/2/3",
    }
    assert parse_parameters(b"") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("-15", -15.0), ("-144", -144.0), ("-144.0", -144.0), ("-200", -144.0), ("-100", -30.0),
     ("-30", -30.0), ("0", 0.0), ("3.5", 0.0), ("-11.123877", -11.123877)],
)  # fmt: skip
def test_volume(text, expected):
    assert parse_volume(text) == expected


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_parameters(b"\xff\xfe"), "text/parameters body is not UTF-8"),
        (lambda: parse_parameters(b": value"), "parameter line without a name: ': value'"),
        (lambda: parse_volume("loud"), "volume is not a number: 'loud'"),
        (lambda: parse_volume("nan"), "volume is not finite: 'nan'"),
        (lambda: parse_volume("-inf"), "volume is not finite: '-inf'"),
        (lambda: parse_progress("1/2"), "progress is not start/current/end: '1/2'"),
        (lambda: parse_progress("1/-2/3"), "progress value is not a non-negative integer: '-2'"),
        (
            lambda: parse_progress("1/2/" + "9" * 21),
            "progress value is not a non-negative integer: '" + "9" * 21 + "'",
        ),
    ],
)
def test_exact_errors(call, message):
    with pytest.raises(ProtocolError) as info:
        call()
    assert (str(info.value), info.value.status_hint) == (message, 400)
