"""RaopSession driven directly, sans I/O, on virtual time: RTSP dialogue, audio path, policies."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import plistlib
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from raopd.core.arbiter import PlayArbiter
from raopd.core.events import AudioReady, EndReason, SessionEnded, StreamStarted, VolumeChanged
from raopd.core.jitter import JitterSettings
from raopd.core.ntp import ns_to_ntp
from raopd.core.packets import AudioPacket, ResendRequest, ResentAudio, SyncPacket, TimingPacket
from raopd.core.seq import rtp_add, seq_add
from raopd.core.session import (
    Channel,
    RaopSession,
    ReceiverInfo,
    SessionPorts,
    SessionSettings,
)
from raopd.media.alac_encode import verbatim_alac_frame
from raopd.media.crypto import PacketCipher, airport_key

HW = bytes.fromhex("0a1b2c3d4e5f")
PEER = "192.0.2.10"  # documentation range: never contacted, the session is sans-I/O
LOCAL = "192.0.2.1"
PORTS = SessionPorts(audio=6003, control=6001, timing=6002)
SENDER_CONTROL = (PEER, 50001)
FRAMES = 352


def make_session(arbiter=None, password=None, **settings) -> RaopSession:
    return RaopSession(
        receiver=ReceiverInfo(name="Test", hw_addr=HW, password=password),
        ports=PORTS,
        local_ip=LOCAL,
        peer_ip=PEER,
        now=0.0,
        arbiter=arbiter,
        settings=SessionSettings(**settings),
        nonce="fixednonce",
    )


def request(
    method: str, uri: str = "rtsp://192.0.2.1/1", cseq: int = 1, body: bytes = b"", **headers: str
) -> bytes:
    lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {cseq}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse RTSP responses with the request reader by turning the status line into a request."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers.get("Content-Length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


def exchange(session: RaopSession, data: bytes, now: float = 0.0):
    session.receive_data(data, now)
    (resp,) = responses(session.data_to_send())
    return resp


def sdp(encrypted: bool) -> tuple[bytes, PacketCipher | None]:
    lines = [
        "v=0",
        "o=iTunes 1 0 IN IP4 192.0.2.10",
        "s=iTunes",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 0 RTP/AVP 96",
        "a=rtpmap:96 AppleLossless",
        "a=fmtp:96 352 0 16 40 10 14 2 255 0 0 44100",
    ]
    cipher = None
    if encrypted:
        key, iv = os.urandom(16), os.urandom(16)
        wrapped = (
            airport_key()
            .public_key()
            .encrypt(key, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
        )
        lines += [
            "a=rsaaeskey:" + base64.b64encode(wrapped).decode().rstrip("="),
            "a=aesiv:" + base64.b64encode(iv).decode().rstrip("="),
        ]
        cipher = PacketCipher(key, iv)
    return ("\r\n".join(lines) + "\r\n").encode(), cipher


def start(session: RaopSession, encrypted=True, seq=100, rtptime=1000):
    body, cipher = sdp(encrypted)
    assert (
        exchange(session, request("ANNOUNCE", cseq=2, body=body, Content_Type="application/sdp"))[0]
        == 200
    )
    status, headers, _ = exchange(
        session,
        request(
            "SETUP",
            cseq=3,
            Transport="RTP/AVP/UDP;unicast;interleaved=0-1;mode=record;control_port=50001;"
            "timing_port=50002",
        ),
    )
    assert status == 200
    assert "server_port=6003" in headers["Transport"] and headers["Session"] == "1"
    status, headers, _ = exchange(
        session, request("RECORD", cseq=4, Range="npt=0-", RTP_Info=f"seq={seq};rtptime={rtptime}")
    )
    assert status == 200 and headers["Audio-Latency"] == "11025"
    return cipher


def audio_datagrams(cipher, seq, rtptime, n, rng):
    pcm = rng.integers(-32768, 32767, size=(n * FRAMES, 2), dtype=np.int16)
    packets = []
    for i in range(n):
        payload = verbatim_alac_frame(pcm[i * FRAMES : (i + 1) * FRAMES])
        if cipher is not None:
            payload = cipher.encrypt(payload)
        packets.append(
            AudioPacket(seq_add(seq, i), rtp_add(rtptime, i * FRAMES), 1, payload, marker=i == 0)
        )
    return pcm, packets


def collect_audio(session: RaopSession) -> tuple[np.ndarray, list[AudioReady]]:
    blocks = []
    while (event := session.next_event()) is not None:
        if isinstance(event, AudioReady):
            blocks.append(event)
    pcm = np.concatenate([b.pcm for b in blocks]) if blocks else np.zeros((0, 2), np.int16)
    return pcm, blocks


def test_options_answers_apple_challenge_with_our_address_and_hw_addr():
    session = make_session()
    challenge = base64.b64encode(bytes(range(16))).decode().rstrip("=")
    status, headers, _ = exchange(session, request("OPTIONS", "*", Apple_Challenge=challenge))
    assert status == 200 and "ANNOUNCE" in headers["Public"]
    signature = base64.b64decode(headers["Apple-Response"] + "==")
    message = (
        airport_key().public_key().recover_data_from_signature(signature, padding.PKCS1v15(), None)
    )
    assert message == bytes(range(16)) + bytes([192, 0, 2, 1]) + HW + bytes(6)


def test_encrypted_alac_session_gives_exact_audio_in_order():
    session = make_session()
    cipher = start(session, seq=65530, rtptime=0xFFFFF000)
    pcm, packets = audio_datagrams(cipher, 65530, 0xFFFFF000, 40, np.random.default_rng(1))
    order = packets[:]
    random.Random(2).shuffle(order[5:15])  # reordering within the window
    for i, p in enumerate(order):
        session.datagram_received(Channel.AUDIO, bytes(p), (PEER, 40000), now=i * 0.008)
    out, blocks = collect_audio(session)
    assert np.array_equal(out, pcm)
    assert not any(b.lost for b in blocks)
    assert blocks[0].rtptime == 0xFFFFF000


def test_lost_packet_is_requested_then_repaired_by_resend():
    session = make_session()
    cipher = start(session, seq=10, rtptime=0)
    pcm, packets = audio_datagrams(cipher, 10, 0, 10, np.random.default_rng(3))
    for p in packets[:4] + packets[5:]:
        session.datagram_received(Channel.AUDIO, bytes(p), (PEER, 40000), now=0.0)
    session.datagrams_to_send()  # timing requests
    session.handle_timer(0.1)
    sent = [d for d in session.datagrams_to_send() if d[0] is Channel.CONTROL]
    assert sent == [(Channel.CONTROL, bytes(ResendRequest(14, 1)), SENDER_CONTROL)]
    resent = ResentAudio(packets[4], request_seq=14)
    session.datagram_received(Channel.CONTROL, bytes(resent), (PEER, 50001), now=0.15)
    out, blocks = collect_audio(session)
    assert np.array_equal(out, pcm) and not any(b.lost for b in blocks)


def test_unrepaired_losses_become_silence_of_exactly_their_length():
    session = make_session(jitter=JitterSettings(resend=False, repair_window=0.5))
    cipher = start(session, seq=0, rtptime=5000)
    pcm, packets = audio_datagrams(cipher, 0, 5000, 20, np.random.default_rng(4))
    dropped = {0, 7, 8, 19}
    for p in packets:
        if p.seq not in dropped:
            session.datagram_received(Channel.AUDIO, bytes(p), (PEER, 40000), now=0.0)
    assert session.datagrams_to_send() == [] or all(
        d[0] is not Channel.CONTROL for d in session.datagrams_to_send()
    )
    session.handle_timer(0.5)
    session.finish()
    out, blocks = collect_audio(session)
    expected = pcm.copy()
    for s in (0, 7, 8):
        expected[s * FRAMES : (s + 1) * FRAMES] = 0
    # The final packet's loss is invisible: nothing after it says it existed.
    assert np.array_equal(out, expected[: 19 * FRAMES])
    assert blocks[0].rtptime == 5000 and blocks[0].lost


def test_second_sender_gets_453_until_the_first_goes_away():
    arbiter = PlayArbiter()
    first, second, third = make_session(arbiter), make_session(arbiter), make_session(arbiter)
    start(first)
    body, _ = sdp(False)
    ann = request("ANNOUNCE", body=body, Content_Type="application/sdp")
    assert exchange(second, ann)[0] == 453
    first.connection_lost(now=1.0)
    assert isinstance(_last_event(first), SessionEnded)
    assert exchange(third, ann)[0] == 200


def test_interruption_allowed_preempts_the_playing_session():
    arbiter = PlayArbiter(allow_interruption=True)
    first, second = make_session(arbiter), make_session(arbiter)
    start(first)
    body, _ = sdp(False)
    assert (
        exchange(second, request("ANNOUNCE", body=body, Content_Type="application/sdp"))[0] == 200
    )
    # The arbiter hands the displaced session back; the caller (the server) ends it.
    assert arbiter.take_displaced() == [first]
    assert not arbiter.holds(first) and arbiter.holds(second)
    first.end(EndReason.INTERRUPTED, 1.0)
    assert first.should_close
    assert _last_event(first) == SessionEnded(EndReason.INTERRUPTED)


def _last_event(session):
    last = None
    while (event := session.next_event()) is not None:
        last = event
    return last


def digest(method: str, uri: str, password: str, nonce: str = "fixednonce", upper=False) -> str:
    def h(s):
        d = hashlib.md5(s.encode()).hexdigest()
        return d.upper() if upper else d

    ha1, ha2 = h(f"iTunes:raop:{password}"), h(f"{method}:{uri}")
    resp = h(f"{ha1}:{nonce}:{ha2}")
    return (
        f'Digest username="iTunes", realm="raop", nonce="{nonce}", uri="{uri}", response="{resp}"'
    )


@pytest.mark.parametrize("upper", [False, True])
def test_password_protects_everything_but_options(upper):
    session = make_session(password="secret")
    assert exchange(session, request("OPTIONS", "*"))[0] == 200
    body, _ = sdp(False)
    status, headers, _ = exchange(
        session, request("ANNOUNCE", body=body, Content_Type="application/sdp")
    )
    assert status == 401 and 'nonce="fixednonce"' in headers["WWW-Authenticate"]
    bad = digest("ANNOUNCE", "rtsp://192.0.2.1/1", "wrong", upper=upper)
    assert (
        exchange(
            session,
            request("ANNOUNCE", body=body, Authorization=bad, Content_Type="application/sdp"),
        )[0]
        == 401
    )
    good = digest("ANNOUNCE", "rtsp://192.0.2.1/1", "secret", upper=upper)
    # A wrong answer holds the next one back (half a second after the first failure).
    session.receive_data(
        request("ANNOUNCE", body=body, Authorization=good, Content_Type="application/sdp"), 0.1
    )
    assert session.data_to_send() == b""
    assert session.get_timer() == pytest.approx(0.5)
    session.handle_timer(0.5)
    ((status, _, _),) = responses(session.data_to_send())
    assert status == 200


def test_teardown_with_empty_uri_is_answered_and_ends_the_session():
    session = make_session()
    start(session)
    session.receive_data(b"TEARDOWN  RTSP/1.0\r\nCSeq: 9\r\n\r\n", 1.0)
    ((status, headers, _),) = responses(session.data_to_send())
    assert status == 200 and headers["CSeq"] == "9"
    assert session.should_close
    assert _last_event(session) == SessionEnded(EndReason.TEARDOWN)


def test_unknown_methods_get_501_and_info_a_binary_plist():
    session = make_session()
    assert exchange(session, request("SETRATEANCHORTIME"))[0] == 501
    assert exchange(session, request("POST", "/auth-setup", body=b"x" * 33))[0] == 501
    status, _headers, body = exchange(session, request("GET", "/info"))
    assert status == 200 and plistlib.loads(body)["name"] == "Test"
    assert not session.should_close


def test_setup_before_announce_is_refused_in_state():
    session = make_session()
    assert exchange(session, request("SETUP", Transport="RTP/AVP/UDP"))[0] == 455


def test_volume_get_and_set():
    session = make_session()
    start(session)
    assert (
        exchange(
            session,
            request("SET_PARAMETER", body=b"volume: -11.5\r\n", Content_Type="text/parameters"),
        )[0]
        == 200
    )
    assert VolumeChanged(-11.5) in _events(session)
    _, _headers, body = exchange(
        session, request("GET_PARAMETER", body=b"volume\r\n", Content_Type="text/parameters")
    )
    assert body == b"volume: -11.500000\r\n"


def _events(session):
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def test_malformed_rtsp_gets_400_and_the_connection_closes():
    session = make_session()
    session.receive_data(b"\x00\x01garbage that is not RTSP\r\n\r\n", 0.0)
    ((status, _, _),) = responses(session.data_to_send())
    assert status == 400 and session.should_close


def test_record_announces_stream_start():
    session = make_session()
    start(session, encrypted=False)
    started = [e for e in _events(session) if isinstance(e, StreamStarted)]
    assert started and started[0].rtptime == 1000 and not started[0].params.encrypted


def test_idle_session_times_out():
    session = make_session(session_timeout=5.0)
    start(session)
    assert session.get_timer() <= 5.0
    session.handle_timer(5.0)
    assert SessionEnded(EndReason.TIMED_OUT) in _events(session)
    assert session.get_timer() is None


def test_datagrams_from_another_host_are_ignored():
    session = make_session()
    cipher = start(session)
    _, packets = audio_datagrams(cipher, 100, 1000, 3, np.random.default_rng(5))
    for p in packets:
        session.datagram_received(Channel.AUDIO, bytes(p), ("192.0.2.99", 40000), now=0.0)
    out, _ = collect_audio(session)
    assert len(out) == 0 and session.stats.foreign_datagrams == 3


def test_ten_thousand_bad_datagrams_never_raise_and_do_not_disturb_the_stream():
    session = make_session()
    cipher = start(session, seq=0, rtptime=0)
    pcm, packets = audio_datagrams(cipher, 0, 0, 10, np.random.default_rng(6))
    rng = random.Random(7)
    good = [bytes(p) for p in packets]
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 64))
        elif kind == 1:
            data = good[i % 10][: rng.randrange(0, 12)]  # truncated header
        elif kind == 2:
            # a valid header with a garbage payload: undecodable, counted
            data = bytes(
                AudioPacket(500 + i % 100, 999_999, 1, rng.randbytes(rng.randrange(1, 64)))
            )
        else:
            data = b"\x80\xd4" + rng.randbytes(rng.randrange(0, 40))
        channel = (Channel.AUDIO, Channel.CONTROL, Channel.TIMING)[i % 3]
        session.datagram_received(channel, data, (PEER, 40000), now=0.0)
    assert session.stats.bad_datagrams > 0
    # The real stream still plays through: a fresh flush and the packets.
    session.receive_data(request("FLUSH", cseq=20, RTP_Info="seq=0;rtptime=0"), 0.1)
    session.data_to_send()
    _events(session)
    for p in good:
        session.datagram_received(Channel.AUDIO, p, (PEER, 40000), now=0.2)
    out, _ = collect_audio(session)
    assert np.array_equal(out, pcm)


@pytest.mark.parametrize(
    ("input_delay", "buffer", "window", "batch"),
    [
        (0.0, 0, 2.0 - 0.03, 0.0),  # replay: no batching, no device
        (0.25, 0, 2.0 - 0.25 - 0.03, 0.25),  # a file: 250 ms batches, no device lead
        # ALSA, 8192-frame buffer written 2048 at a time: today's budget for a 2 s sender.
        (0.25, 8192, 2.0 - 0.25 - 10240 / 44100 - 0.03, 0.25),
    ],
)
def test_repair_window_is_what_the_latency_leaves(input_delay, buffer, window, batch):
    """Latency 2 s: gaps may wait what batching, the device lead and a safety margin leave."""
    session = make_session(
        input_delay=input_delay, output_buffer_frames=buffer, output_period_frames=2048
    )
    start(session, encrypted=False)
    session.handle_timer(1.0)  # sends the first timing request
    requests = [p for c, p, _ in session.datagrams_to_send() if c is Channel.TIMING]
    origin = TimingPacket.parse(requests[-1]).transmit
    sender_ns = 9 * 10**18
    answer = TimingPacket(True, origin, ns_to_ntp(sender_ns), ns_to_ntp(sender_ns))
    session.datagram_received(Channel.TIMING, bytes(answer), (PEER, 50002), 1.0002)
    # Sender latency 77175 frames + the fixed 11025 = 88200 frames = 2.0 s.
    sync = SyncPacket(rtptime_at_ntp=1000, ntp=ns_to_ntp(sender_ns), rtptime_now=1000 + 77175)
    session.datagram_received(Channel.CONTROL, bytes(sync), SENDER_CONTROL, 1.001)
    assert session.estimate is not None
    assert session.audio_path is not None
    assert session.audio_path.jitter.settings.repair_window == pytest.approx(window)
    assert session.input_batch_delay == pytest.approx(batch)


def test_tcp_transport_is_refused_with_461_and_one_warning(caplog):
    """Issue 9: a TCP-transport sender got 200 with a UDP transport back, then stalled."""
    session = make_session()
    body, _ = sdp(False)
    exchange(session, request("ANNOUNCE", cseq=2, body=body, Content_Type="application/sdp"))
    caplog.set_level(logging.WARNING, logger="raopd.core.session")
    status, headers, _ = exchange(
        session,
        request("SETUP", cseq=3, Transport="RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"),
    )
    assert status == 461 and "Transport" not in headers
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "RTP/AVP/TCP" in warnings[0].getMessage()
    # The session is not broken: the sender may try UDP.
    assert (
        exchange(
            session,
            request("SETUP", cseq=4, Transport="RTP/AVP/UDP;unicast;control_port=1;timing_port=2"),
        )[0]
        == 200
    )


def test_pipewire_auth_setup_mode_plays():
    """PipeWire's auth_setup mode: POST /auth-setup, then an unencrypted ANNOUNCE whose last
    SDP line (min-latency) has no line ending; it ignores the auth-setup status."""
    session = make_session()
    assert exchange(session, request("POST", "/auth-setup", body=b"\x01" + bytes(32)))[0] == 501
    body = (
        b"v=0\r\no=iTunes 1 0 IN IP4 192.0.2.10\r\ns=iTunes\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=audio 0 RTP/AVP 96\r\na=rtpmap:96 AppleLossless\r\n"
        b"a=fmtp:96 352 0 16 40 10 14 2 255 0 0 44100\r\na=min-latency:11025"
    )
    assert (
        exchange(session, request("ANNOUNCE", cseq=2, body=body, Content_Type="application/sdp"))[0]
        == 200
    )
    assert session.params is not None and session.params.min_latency_frames == 11025
    transport = (
        "RTP/AVP/UDP;unicast;interleaved=0-1;mode=record;control_port=50001;timing_port=50002"
    )
    assert exchange(session, request("SETUP", cseq=3, Transport=transport))[0] == 200
    assert exchange(session, request("RECORD", cseq=4, RTP_Info="seq=7;rtptime=0"))[0] == 200
    pcm, packets = audio_datagrams(None, 7, 0, 20, np.random.default_rng(4))
    for packet in packets:
        session.datagram_received(Channel.AUDIO, bytes(packet), (PEER, 40000), 0.1)
    out, _ = collect_audio(session)
    assert np.array_equal(out, pcm)


def test_volume_is_full_scale_until_the_sender_sets_one(caplog):
    session = make_session()
    start(session)
    _, _headers, body = exchange(
        session, request("GET_PARAMETER", body=b"volume\r\n", Content_Type="text/parameters")
    )
    assert body == b"volume: 0.000000\r\n"
    caplog.set_level(logging.INFO, logger="raopd.core.session")
    exchange(
        session, request("SET_PARAMETER", body=b"volume: -20\r\n", Content_Type="text/parameters")
    )
    assert any("volume -20.00" in r.getMessage() for r in caplog.records)


def test_a_sender_with_sync_latency_0_gets_a_250ms_budget():
    """PipeWire's sync packets carry latency 0: 11025 frames (250 ms) from sync to playing."""
    session = make_session(input_delay=0.25, output_buffer_frames=8192, output_period_frames=2048)
    start(session, encrypted=False)
    session.handle_timer(1.0)
    requests = [p for c, p, _ in session.datagrams_to_send() if c is Channel.TIMING]
    origin = TimingPacket.parse(requests[-1]).transmit
    sender_ns = 9 * 10**18
    answer = TimingPacket(True, origin, ns_to_ntp(sender_ns), ns_to_ntp(sender_ns))
    session.datagram_received(Channel.TIMING, bytes(answer), (PEER, 50002), 1.0002)
    sync = SyncPacket(rtptime_at_ntp=1000, ntp=ns_to_ntp(sender_ns), rtptime_now=1000)
    session.datagram_received(Channel.CONTROL, bytes(sync), SENDER_CONTROL, 1.001)
    budget = session.latency_budget
    assert budget is not None and budget.latency == pytest.approx(0.25)
    assert session.input_batch_delay == pytest.approx(0.03125)
    assert session.audio_path is not None
    settings = session.audio_path.jitter.settings
    assert 0.08 < settings.repair_window < 0.1
    assert settings.resend_first_delay < settings.repair_window / 2


def test_oversized_artwork_gets_413_and_the_session_plays_on():
    session = make_session()
    start(session, encrypted=False)
    session._reader.max_body_bytes = 1000  # the real limit is 4 MiB: same path, less data
    body = b"\xff\xd8\xff" + bytes(20_000)
    status, _, _ = exchange(
        session, request("SET_PARAMETER", cseq=5, body=body, Content_Type="image/jpeg")
    )
    assert status == 413
    assert session.stats.oversized_requests == 1 and not session.should_close
    status, _, _ = exchange(
        session,
        request("SET_PARAMETER", cseq=6, body=b"volume: -3\r\n", Content_Type="text/parameters"),
    )
    assert status == 200 and session.volume == -3.0
