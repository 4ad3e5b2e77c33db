"""The session's rules, sans I/O: every end releases the play lock, states gate methods,
only the playing sender touches the stream, datagram sources latch, timeouts cannot be kept
alive by trickling, and the costly or guessable requests are throttled."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raopd.core import digest
from raopd.core.arbiter import PlayArbiter
from raopd.core.events import EndReason, Flushed, SessionEnded, VolumeChanged
from raopd.core.packets import SyncPacket
from raopd.core.session import ALLOWED, PLAY_LOCKED, Channel, State
from raopd.core.throttle import PeerThrottle
from tests.core.test_session import (
    PEER,
    audio_datagrams,
    collect_audio,
    exchange,
    make_session,
    request,
    responses,
    sdp,
    start,
)


def announce(cseq: int = 2) -> bytes:
    body, _ = sdp(False)
    return request("ANNOUNCE", cseq=cseq, body=body, Content_Type="application/sdp")


def ended(session) -> list[EndReason]:
    return [e.reason for e in iter(session.next_event, None) if isinstance(e, SessionEnded)]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"\x00garbage\r\n\r\n", EndReason.PROTOCOL_ERROR),
        (
            b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 3\r\nContent-Length: 99999999\r\n\r\n",
            EndReason.TOO_LARGE,
        ),
    ],
    ids=["malformed", "413"],
)
def test_framing_error_after_announce_ends_the_session_and_frees_the_lock(bad, reason):
    """Issue 10 case 1, in the core: the lock used to stay with a session nobody ended."""
    arbiter = PlayArbiter()
    first, second = make_session(arbiter), make_session(arbiter)
    assert exchange(first, announce())[0] == 200
    first.receive_data(bad, 1.0)
    assert responses(first.data_to_send())[0][0] in (400, 413)
    assert first.should_close and first.state is State.ENDED
    assert ended(first) == [reason]
    assert arbiter.owner is None
    assert exchange(second, announce(), now=1.0)[0] == 200


def test_state_table_refuses_stream_methods_before_announce():
    """Issue 10 case 2: FLUSH and SET_PARAMETER from a connection that never ANNOUNCEd."""
    arbiter = PlayArbiter()
    player, intruder = make_session(arbiter), make_session(arbiter)
    start(player)
    list(iter(player.next_event, None))
    flush = request("FLUSH", cseq=5, RTP_Info="seq=0;rtptime=2000000000")
    assert exchange(intruder, flush)[0] == 455
    volume = request(
        "SET_PARAMETER", cseq=6, body=b"volume: -3\r\n", Content_Type="text/parameters"
    )
    assert exchange(intruder, volume)[0] == 455
    assert list(iter(intruder.next_event, None)) == []  # nothing reached the output
    assert intruder.stats.refused_in_state == 2
    # The player itself may flush and set its volume.
    assert exchange(player, flush)[0] == 200
    assert exchange(player, volume)[0] == 200
    kinds = {type(e) for e in iter(player.next_event, None)}
    assert {Flushed, VolumeChanged} <= kinds


def test_a_displaced_session_may_not_touch_the_stream():
    arbiter = PlayArbiter(allow_interruption=True)
    first, second = make_session(arbiter), make_session(arbiter)
    start(first)
    assert exchange(second, announce())[0] == 200
    # Until the server ends it, the displaced session is refused (Rule 2), not obeyed.
    assert exchange(first, request("FLUSH", cseq=7))[0] == 453
    assert arbiter.take_displaced() == [first]


def test_rules_as_data_cover_every_state():
    assert set(ALLOWED) == set(State)
    assert ALLOWED[State.ENDED] == frozenset()
    assert ALLOWED[State.PLAYING] >= PLAY_LOCKED
    assert not (PLAY_LOCKED & ALLOWED[State.CONNECTED])


def test_datagrams_latch_on_declared_and_first_used_ports():
    """Issue 10 case 3, in the core: the sender's address from another port is foreign."""
    session = make_session()
    cipher = start(session)
    pcm, packets = audio_datagrams(cipher, 100, 1000, 4, np.random.default_rng(1))
    session.datagram_received(Channel.AUDIO, bytes(packets[0]), (PEER, 40000), 0.1)
    forged = packets[1].__class__(packets[1].seq + 5000, 99, 1, b"junk")
    session.datagram_received(Channel.AUDIO, bytes(forged), (PEER, 40001), 0.1)
    for p in packets[1:]:
        session.datagram_received(Channel.AUDIO, bytes(p), (PEER, 40000), 0.2)
    sync = SyncPacket(1000, 1 << 32, 2000, first=True)
    session.datagram_received(Channel.CONTROL, bytes(sync), (PEER, 50009), 0.2)  # not declared
    assert session.stats.foreign_datagrams == 2
    session.finish()
    out, _ = collect_audio(session)
    assert (out == pcm).all()


def test_idle_connection_closes_and_trickling_does_not_keep_it():
    """Issue 10 case 7, in the core."""
    idle = make_session()
    assert idle.get_timer() == 10.0
    idle.handle_timer(10.0)
    assert ended(idle) == [EndReason.TIMED_OUT] and idle.should_close

    trickle = make_session()
    for i, byte in enumerate(b"OPTIONS * RTSP/1.0\r\n"):
        trickle.receive_data(bytes([byte]), 0.5 + i * 0.5)
        if trickle.should_close:
            break
        trickle.handle_timer(0.5 + i * 0.5)
    assert trickle.should_close
    assert ended(trickle) == [EndReason.TIMED_OUT]


def test_playing_session_keeps_the_long_timeout():
    session = make_session(session_timeout=60.0)
    start(session)
    assert session._idle_deadline() == 60.0  # no idle_timeout while PLAYING
    session.handle_timer(30.0)
    assert not session.should_close


def test_digest_checks_uri_and_realm():
    """Issue 10 case 12: an answer for another URI or realm proves nothing."""
    session = make_session(password="secret")
    assert exchange(session, announce())[0] == 401
    body, _ = sdp(False)
    for n, (realm, uri) in enumerate(
        [("raop", "rtsp://192.0.2.1/other"), ("elsewhere", "rtsp://192.0.2.1/1")]
    ):
        auth = digest.authorization(
            username="iTunes",
            password="secret",
            realm=realm,
            nonce="fixednonce",
            method="ANNOUNCE",
            uri=uri,
        )
        data = request("ANNOUNCE", body=body, Authorization=auth, Content_Type="application/sdp")
        now = 100.0 * (n + 1)  # past any back-off
        assert exchange(session, data, now=now)[0] == 401


def test_password_guessing_is_throttled_with_a_growing_delay():
    throttle = PeerThrottle()
    session = make_session(password="secret")
    session.throttle = throttle
    body, _ = sdp(False)
    answered = []
    now = 0.0
    for guess in range(6):
        auth = digest.authorization(
            username="x",
            password=f"guess{guess}",
            realm="raop",
            nonce="fixednonce",
            method="ANNOUNCE",
            uri="rtsp://192.0.2.1/1",
        )
        session.receive_data(
            request(
                "ANNOUNCE",
                cseq=guess,
                body=body,
                Authorization=auth,
                Content_Type="application/sdp",
            ),
            now,
        )
        while not session.data_to_send():
            now = session.get_timer()
            session.handle_timer(now)
        answered.append(now)
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    assert gaps == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0])
    assert throttle.auth_failures == 6


def test_challenges_beyond_the_budget_wait_instead_of_costing_cpu():
    session = make_session()
    challenge = "AAECAwQFBgcICQoLDA0ODw=="
    data = b"".join(request("OPTIONS", "*", cseq=i, Apple_Challenge=challenge) for i in range(20))
    session.receive_data(data, 0.0)
    assert len(responses(session.data_to_send())) == 3  # the burst
    assert not session.wants_input  # the adapter stops reading
    session.handle_timer(session.get_timer())
    assert len(responses(session.data_to_send())) == 1  # then two a second


def test_deferred_signature_is_asked_of_the_adapter():
    session = make_session(defer_signatures=True)
    session.receive_data(request("OPTIONS", "*", Apple_Challenge="AAECAwQFBgcICQoLDA0ODw=="), 0)
    assert session.signature_wanted == "AAECAwQFBgcICQoLDA0ODw=="
    assert session.data_to_send() == b"" and not session.wants_input
    session.signature_made("c2lnbmF0dXJl", 0.1)
    ((status, headers, _),) = responses(session.data_to_send())
    assert status == 200 and headers["Apple-Response"] == "c2lnbmF0dXJl"
    assert session.wants_input


def test_non_utf8_cseq_is_not_echoed_reencoded():
    """Issue 10 case 13."""
    session = make_session()
    session.receive_data(b"OPTIONS * RTSP/1.0\r\nCSeq: \xff\xfe1\r\n\r\n", 0.0)
    raw = session.data_to_send()
    assert raw.startswith(b"RTSP/1.0 200")
    assert b"CSeq" not in raw
