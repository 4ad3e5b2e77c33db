"""The sender's pieces: fault plans, SDP, key wrapping, Digest, Apple-Response, payloads;
and whole streams into raopd's RtspServer running in the same event loop on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.arbiter import PlayArbiter
from raopd.core.events import AudioReady, Event
from raopd.core.rtsp import RtspReader
from raopd.core.sdp import Codec, parse_sdp
from raopd.core.session import RaopSession, ReceiverInfo, SessionPorts, SessionSettings
from raopd.media.crypto import PacketCipher, apple_response, unwrap_session_key
from raopd.media.decoder import make_decoder
from raopd.net.server import RtspServer, ServerSettings
from raopd.tools.sender import (
    FaultPlan,
    PayloadEncoder,
    RaopSender,
    SenderError,
    SenderOptions,
    digest_authorization,
    make_sdp,
    verify_apple_response,
    wrap_session_key,
)

HW = bytes.fromhex("0A1B2C3D4E5F")


# ------------------------------------------------------------------ fault plans


@settings(max_examples=200, deadline=None)
@given(
    packets=st.integers(1, 400),
    drop=st.floats(0, 1),
    reorder=st.floats(0, 1),
    duplicate=st.floats(0, 1),
    seed=st.integers(0, 10**6),
)
def test_fault_plan_invariants(packets, drop, reorder, duplicate, seed):
    plan = FaultPlan.make(packets, drop=drop, reorder=reorder, duplicate=duplicate, seed=seed)
    assert len(plan.dropped) == round(drop * (packets - 1))
    assert packets - 1 not in plan.dropped  # the last packet always goes out
    kept = [i for i in range(packets) if i not in plan.dropped]
    # Every kept packet once, plus exactly one extra copy of each duplicated one.
    counts = {i: plan.entries.count(i) for i in set(plan.entries)}
    assert sorted(counts) == kept
    assert {i for i, n in counts.items() if n == 2} == plan.duplicated
    assert all(n in (1, 2) for n in counts.values())
    # A reordered packet goes out before the kept packet preceding it, and only by one.
    first_pos = {}
    for pos, i in enumerate(plan.entries):
        first_pos.setdefault(i, pos)
    for i in plan.reordered:
        before = kept[kept.index(i) - 1]
        assert first_pos[i] < first_pos[before]
    assert FaultPlan.make(packets, drop=drop, reorder=reorder, duplicate=duplicate, seed=seed) == (
        plan
    )


def test_fault_plan_clean_is_in_order():
    plan = FaultPlan.make(50)
    assert plan.entries == tuple(range(50))
    assert not plan.dropped and not plan.duplicated and not plan.reordered


def test_fault_plan_knobs_are_independent():
    a = FaultPlan.make(500, drop=0.1, seed=7)
    b = FaultPlan.make(500, drop=0.1, reorder=0.3, duplicate=0.2, seed=7)
    assert a.dropped == b.dropped
    assert FaultPlan.make(500, drop=0.1, seed=8).dropped != a.dropped


# ------------------------------------------------------------ SDP and keys


@pytest.mark.parametrize("codec", ["alac", "alac-verbatim", "l16"])
def test_sdp_parses_back_with_the_wrapped_key(codec):
    key, iv = bytes(range(16)), bytes(range(16, 32))
    body = make_sdp(
        codec=codec,
        session_id=1234,
        local_ip="127.0.0.1",
        remote_ip="::1",
        aes_key_wrapped=wrap_session_key(key),
        aes_iv=iv,
    )
    params = parse_sdp(body)
    assert params.codec is (Codec.L16 if codec == "l16" else Codec.ALAC)
    assert (params.sample_rate, params.channels, params.frames_per_packet) == (44100, 2, 352)
    assert params.rsaaeskey is not None and unwrap_session_key(params.rsaaeskey) == key
    assert params.aesiv == iv
    assert b"c=IN IP6 ::1\r\n" in body


def test_sdp_without_keys_is_unencrypted():
    params = parse_sdp(
        make_sdp(codec="alac", session_id=1, local_ip="1.2.3.4", remote_ip="5.6.7.8")
    )
    assert params.rsaaeskey is None and params.aesiv is None


def test_wrapped_keys_differ_each_time():
    # OAEP is randomised: the same key never travels as the same ciphertext.
    key = bytes(16)
    assert wrap_session_key(key) != wrap_session_key(key)


# ------------------------------------------------------------- payloads


@pytest.mark.parametrize("codec", ["alac", "alac-verbatim", "l16"])
@pytest.mark.parametrize("frames", [352, 200, 1])
def test_payloads_decode_bit_exact_through_aes(codec, frames):
    rng = np.random.default_rng(frames)
    pcm = rng.integers(-32768, 32768, size=(frames, 2), dtype=np.int16)
    pcm[:, 1] = pcm[:, 0] // 3  # some correlation, as in music
    params = parse_sdp(make_sdp(codec=codec, session_id=1, local_ip="::1", remote_ip="::1"))
    cipher = PacketCipher(bytes(range(16)), bytes(16))
    payload = cipher.encrypt(PayloadEncoder(codec).encode(pcm))
    decoded = make_decoder(params).decode(cipher.decrypt(payload))
    assert np.array_equal(decoded, pcm)


def test_compressed_alac_is_smaller_than_verbatim(tmp_path):
    t = np.arange(352)
    tone = (np.sin(t / 10) * 8000).astype(np.int16)
    pcm = np.stack([tone, tone], axis=1)
    assert len(PayloadEncoder("alac").encode(pcm)) < len(
        PayloadEncoder("alac-verbatim").encode(pcm)
    )


# ------------------------------------------------------ Apple-Response check


def challenge_pair(ip: str, hw: bytes = HW) -> tuple[bytes, str]:
    challenge = bytes(range(100, 116))
    b64 = base64.b64encode(challenge).decode().rstrip("=")
    return challenge, apple_response(b64, ip, hw)


@pytest.mark.parametrize("ip", ["127.0.0.1", "192.168.1.20", "fe80::1%eth0", "::ffff:10.0.0.1"])
def test_apple_response_verifies_and_reveals_the_hw_addr(ip):
    challenge, response = challenge_pair(ip)
    assert verify_apple_response(challenge, response, ip, HW) == HW
    assert verify_apple_response(challenge, response, ip) == HW


def test_apple_response_for_another_receiver_is_refused():
    challenge, response = challenge_pair("127.0.0.1", hw=bytes(6))
    with pytest.raises(SenderError, match="hardware address 000000000000, expected 0A1B2C"):
        verify_apple_response(challenge, response, "127.0.0.1", HW)


def test_apple_response_for_another_address_or_challenge_is_refused():
    challenge, response = challenge_pair("127.0.0.1")
    with pytest.raises(SenderError, match="another challenge or address"):
        verify_apple_response(challenge, response, "127.0.0.2", HW)
    with pytest.raises(SenderError, match="another challenge or address"):
        verify_apple_response(bytes(16), response, "127.0.0.1", HW)


@pytest.mark.parametrize("response", ["", "not base64!", base64.b64encode(bytes(256)).decode()])
def test_bad_apple_response_is_refused(response):
    with pytest.raises(SenderError, match="does not verify"):
        verify_apple_response(bytes(16), response, "127.0.0.1")


# ------------------------------------------------------------------ Digest


def make_session(password: str | None = "secret") -> RaopSession:
    return RaopSession(
        receiver=ReceiverInfo(name="t", hw_addr=HW, password=password),
        ports=SessionPorts(audio=6003, control=6001, timing=6002),
        local_ip="127.0.0.1",
        peer_ip="127.0.0.1",
        now=0.0,
        nonce="c2VjcmV0bm9uY2U=",
    )


def status_of(session: RaopSession, request: bytes) -> int:
    session.receive_data(request, 0.0)
    return int(session.data_to_send().split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("password", "expected"), [("secret", 200), ("wrong", 401)], ids=["right", "wrong"]
)
def test_digest_authorization_is_what_the_session_checks(password, expected):
    session = make_session()
    uri = "rtsp://127.0.0.1/1"
    body = make_sdp(codec="l16", session_id=1, local_ip="127.0.0.1", remote_ip="127.0.0.1")
    auth = digest_authorization(
        username="iTunes",
        password=password,
        realm="raop",
        nonce="c2VjcmV0bm9uY2U=",
        method="ANNOUNCE",
        uri=uri,
    )
    request = (
        f"ANNOUNCE {uri} RTSP/1.0\r\nCSeq: 2\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    assert status_of(session, request) == expected


def test_digest_value_format():
    value = digest_authorization(
        username="u", password="p", realm="r", nonce="n", method="OPTIONS", uri="*"
    )
    # The RTSP reader on the other side must be able to carry it as one header line.
    reader = RtspReader()
    reader.receive_data(f"OPTIONS * RTSP/1.0\r\nAuthorization: {value}\r\n\r\n".encode())
    request = reader.next_request()
    assert request is not None and request.headers.get("Authorization") == value
    assert value.startswith('Digest username="u", realm="r", nonce="n", uri="*", response="')


# ----------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"codec": "aac"},
        {"speed": 0},
        {"drop": 1.5},
        {"reorder": -0.1},
        {"hw_addr": b"\x00"},
        {"latency_frames": -1},
    ],
)
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        SenderOptions(**kwargs)


# ------------------------------------------------- whole streams, in process


class Received:
    """Collects what sessions emit, as the daemon's event router would."""

    def __init__(self) -> None:
        self.blocks: list[AudioReady] = []

    def __call__(self, session: RaopSession, event: Event) -> None:
        if isinstance(event, AudioReady):
            self.blocks.append(event)

    def pcm(self) -> np.ndarray:
        return np.concatenate([b.pcm for b in self.blocks]) if self.blocks else np.zeros((0, 2))


async def run_server(received: Received, password: str | None = None) -> RtspServer:
    server = RtspServer(
        receiver=ReceiverInfo(name="t", hw_addr=HW, password=password),
        settings=ServerSettings(address="127.0.0.1", port=0, udp_port_base=0),
        session_settings=SessionSettings(),
        arbiter=PlayArbiter(),
        on_event=received,
    )
    await server.start()
    return server


def music(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 44100))
    left = (np.sin(t * 2 * np.pi * 440 / 44100) * 9000).astype(np.int16)
    right = (np.sin(t * 2 * np.pi * 660 / 44100) * 7000).astype(np.int16)
    return np.stack([left, right], axis=1)


@pytest.mark.parametrize(
    ("codec", "encrypt", "password"),
    [("alac", True, None), ("alac-verbatim", True, "pw"), ("l16", False, None)],
)
async def test_stream_arrives_bit_exact(codec, encrypt, password):
    received = Received()
    server = await run_server(received, password)
    port = server.sockets[0].getsockname()[1]
    pcm = music(1.5)
    options = SenderOptions(
        codec=codec,
        encrypt=encrypt,
        password=password,
        speed=8.0,
        linger=0.5,
        hw_addr=HW,
        first_seq=65500,  # the stream wraps the 16-bit sequence number
        first_rtptime=2**32 - 44100,  # and the 32-bit timestamp
    )
    try:
        report = await RaopSender("127.0.0.1", port, options).stream(pcm)
    finally:
        await server.close()
    assert report.apple_response is True and report.receiver_hw_addr == HW.hex().upper()
    assert report.sent == report.packets == 188 and report.syncs == 2
    assert received.blocks[0].rtptime == options.first_rtptime
    assert np.array_equal(received.pcm(), pcm)


async def test_wrong_password_is_a_sender_error():
    received = Received()
    server = await run_server(received, "right")
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SenderError, match="ANNOUNCE refused: 401"):
            await RaopSender("127.0.0.1", port, SenderOptions(password="wrong")).stream(music(0.1))
    finally:
        await server.close()


async def test_wrong_receiver_identity_is_a_sender_error():
    received = Received()
    server = await run_server(received)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SenderError, match="hardware address"):
            await RaopSender("127.0.0.1", port, SenderOptions(hw_addr=bytes(6))).stream(music(0.1))
    finally:
        await server.close()


async def test_burst_mode_stamps_syncs_late_and_alike_for_one_start():
    """node-airtunes2's pacing: a sync is stamped with the time of the burst that carries it,
    0..100 ms after its frame's time; two senders with one start and seed stamp alike."""
    received = Received()
    server = await run_server(received)
    port = server.sockets[0].getsockname()[1]
    pcm = music(4.0)
    options = SenderOptions(speed=2.0, linger=0.2, hw_addr=HW, burst=0.1, seed=3)
    senders = [RaopSender("127.0.0.1", port, options) for _ in range(2)]
    stamps: list[list[tuple[int, float]]] = [[], []]
    for sender, log in zip(senders, stamps, strict=True):
        original = sender._send_sync

        def record(frame, at, first, original=original, log=log):
            log.append((frame, at))
            original(frame, at, first)

        sender._send_sync = record  # type: ignore[method-assign]
    try:
        await senders[0].connect()
        start = asyncio.get_running_loop().time() + 0.2
        await senders[0].play(pcm, start=start)
        await senders[0].teardown()
        await senders[0].close()
        await senders[1].connect()
        await senders[1].play(pcm, start=start)  # its start is in the past: same grid
        await senders[1].close()
    finally:
        await server.close()
    assert len(stamps[0]) >= 4
    assert stamps[0] == stamps[1]
    late = [at - (start + frame / (44100 * 2.0)) for frame, at in stamps[0]]
    assert all(0.0 <= lateness <= 0.1 + 0.002 + 1e-9 for lateness in late)
    assert max(late) > 0.01  # not stamped at the frame's own time
