"""PlayerTracker driven by real RaopSessions fed real RTSP bytes (sans I/O, virtual time)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.core.arbiter import PlayArbiter
from raopd.core.events import ArtworkReceived, Flushed, VolumeChanged
from raopd.house.state import (
    MAX_ARTWORK_BYTES,
    ChangeKind,
    PlayerTracker,
    Status,
    clean_text,
    sniff_image,
)
from tests.core.test_session import exchange, make_session, request, start

JPEG = b"\xff\xd8\xff\xe0" + bytes(200)
DMAP = (
    b"mlit\x00\x00\x00\x2a"
    b"minm\x00\x00\x00\x04Song"
    b"asar\x00\x00\x00\x06Artist"
    b"mper\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x01\x02"
)


def run(tracker, session, now=0.0):
    changes = []
    while (event := session.next_event()) is not None:
        changes += tracker.apply(session, event, now)
    return changes


def announce_and_play(session, **headers):
    exchange(session, request("OPTIONS", cseq=1, **headers))
    start(session, encrypted=False)


def test_a_stream_from_first_request_to_teardown():
    tracker = PlayerTracker(db_of=lambda v: 2 * v)
    session = make_session()
    announce_and_play(
        session,
        X_Apple_Client_Name="Joe's iPhone",
        User_Agent="AirPlay/381.13",
        DACP_ID="14413BE4996FEA4D",
        Active_Remote="1986535575",
    )
    changes = run(tracker, session)
    assert [c.kind for c in changes] == [
        ChangeKind.SENDER,
        ChangeKind.ACTIVE_BEGIN,
        ChangeKind.PLAY_BEGIN,
        ChangeKind.VOLUME,  # the volume it plays at until the sender sets one
    ]
    assert changes[-1].state.volume is not None and changes[-1].state.volume.airplay == -15.0
    state = changes[-1].state
    assert state.status is Status.PLAYING and state.active
    assert state.sender is not None
    assert (state.sender.name, state.sender.user_agent) == ("Joe's iPhone", "AirPlay/381.13")
    assert (state.sender.dacp_id, state.sender.active_remote) == ("14413BE4996FEA4D", "1986535575")
    assert (state.sender.address, state.sender.server_address) == ("192.0.2.10", "192.0.2.1")
    assert state.stream is not None and state.stream.codec == "ALAC" and not state.stream.encrypted

    exchange(
        session,
        request(
            "SET_PARAMETER",
            cseq=5,
            body=DMAP,
            Content_Type="application/x-dmap-tagged",
            RTP_Info="rtptime=1000",
        ),
    )
    exchange(
        session,
        request(
            "SET_PARAMETER", cseq=6, body=JPEG, Content_Type="image/png", RTP_Info="rtptime=1000"
        ),
    )
    exchange(
        session,
        request(
            "SET_PARAMETER",
            cseq=7,
            body=b"volume: -12.5\r\nprogress: 1000/45100/442000\r\n",
            Content_Type="text/parameters",
        ),
    )
    changes = run(tracker, session, now=5.0)
    assert [c.kind for c in changes] == [
        ChangeKind.METADATA,
        ChangeKind.ARTWORK,
        ChangeKind.VOLUME,
        ChangeKind.PROGRESS,
    ]
    meta, art, volume, progress = changes
    assert meta.rtptime == 1000 and [t for t, _ in meta.items] == ["minm", "asar", "mper"]
    assert meta.state.track.title == "Song" and meta.state.track.artist == "Artist"
    assert meta.state.track.persistent_id == 0x102
    assert art.state.artwork is not None
    assert art.state.artwork.data == JPEG and art.state.artwork.content_type == "image/jpeg"
    assert volume.state.volume is not None and volume.state.volume.db == -25.0
    assert progress.state.progress is not None
    assert progress.state.progress.position_s == 1.0 and progress.state.progress.duration_s == 10.0

    started = tracker.audio_resumed(5.5)  # the first audio after RECORD: shairport-sync's prsm
    assert [c.kind for c in started] == [ChangeKind.RESUME]
    assert tracker.audio_resumed(5.6) == []
    session.receive_data(request("FLUSH", cseq=8, RTP_Info="seq=200;rtptime=90000"), 6.0)
    changes = run(tracker, session, now=6.0)
    assert [c.kind for c in changes] == [ChangeKind.FLUSH]
    assert changes[0].rtptime == 90000 and changes[0].state.status is Status.PAUSED
    resumed = tracker.audio_resumed(7.0)
    assert [c.kind for c in resumed] == [ChangeKind.RESUME]
    assert tracker.audio_resumed(7.5) == []  # once per pause

    session.receive_data(request("TEARDOWN", cseq=9), 8.0)
    changes = run(tracker, session, now=8.0)
    assert [c.kind for c in changes] == [ChangeKind.PLAY_END]
    assert changes[0].reason == "teardown" and changes[0].state.status is Status.IDLE
    assert changes[0].state.active  # until active_state_timeout
    assert tracker.session is None
    ended = tracker.active_ended(18.0)
    assert [c.kind for c in ended] == [ChangeKind.ACTIVE_END] and not ended[0].state.active


def test_a_refused_second_sender_changes_nothing():
    tracker = PlayerTracker()
    arbiter = PlayArbiter()
    first, second = make_session(arbiter), make_session(arbiter)
    announce_and_play(first, X_Apple_Client_Name="First")
    run(tracker, first)
    body = start.__globals__["sdp"](False)[0]
    status, _, _ = exchange(
        second, request("ANNOUNCE", cseq=2, body=body, Content_Type="application/sdp")
    )
    assert status == 453
    exchange(
        second,
        request("SET_PARAMETER", cseq=3, body=b"volume: 0\r\n", Content_Type="text/parameters"),
    )
    second.receive_data(request("TEARDOWN", cseq=4), 1.0)
    assert run(tracker, second) == []
    assert tracker.counters.foreign_events == 2
    assert tracker.state.sender is not None and tracker.state.sender.name == "First"


def test_a_sender_that_never_plays_leaves_no_trace():
    tracker = PlayerTracker()
    session = make_session()
    body = start.__globals__["sdp"](False)[0]
    exchange(session, request("ANNOUNCE", cseq=2, body=body, Content_Type="application/sdp"))
    # Metadata before RECORD (pyatv does this), then the sender gives up.
    exchange(
        session,
        request("SET_PARAMETER", cseq=3, body=DMAP, Content_Type="application/x-dmap-tagged"),
    )
    session.receive_data(request("TEARDOWN", cseq=4), 1.0)
    changes = run(tracker, session)
    assert [c.kind for c in changes] == [ChangeKind.SENDER, ChangeKind.METADATA, ChangeKind.SENDER]
    assert changes[-1].state.sender is None and changes[-1].state.status is Status.IDLE
    assert not changes[-1].state.active


def test_oversized_artwork_is_dropped_and_counted():
    tracker = PlayerTracker()
    session = make_session()
    announce_and_play(session)
    run(tracker, session)
    big = ArtworkReceived("image/jpeg", b"\xff\xd8\xff" + bytes(MAX_ARTWORK_BYTES), 1)
    assert tracker.apply(session, big, 1.0) == []
    assert tracker.counters.artwork_dropped == 1 and tracker.state.artwork is None
    cleared = tracker.apply(session, ArtworkReceived("image/none", b"", 2), 2.0)
    assert [c.kind for c in cleared] == [ChangeKind.ARTWORK] and cleared[0].state.artwork is None


def test_mute_and_flush_while_idle():
    tracker = PlayerTracker()
    session = make_session()
    announce_and_play(session)
    run(tracker, session)
    (mute,) = tracker.apply(session, VolumeChanged(-144.0), 1.0)
    assert mute.state.volume is not None and mute.state.volume.muted
    assert math.isinf(mute.state.volume.db) and mute.state.volume.percent == 0.0
    tracker.apply(session, Flushed(5), 1.0)
    assert tracker.apply(session, Flushed(6), 1.0) == []  # already paused: no second flush


def test_sniffing_and_cleaning():
    assert sniff_image(b"\x89PNG\r\n\x1a\n...", "image/jpeg") == "image/png"
    assert sniff_image(b"GIF89a", "image/gif") == "image/gif"
    assert sniff_image(b"junk", "text/html") == "application/octet-stream"
    assert clean_text("a\x00b\nc\x1b[31m") == "a b c [31m"
    assert clean_text("  ") is None
    assert len(clean_text("x" * 100_000) or "") == 1024


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_metadata_never_raises_out_of_the_session_or_tracker(body):
    tracker = PlayerTracker()
    session = make_session()
    announce_and_play(session)
    for content_type in ("application/x-dmap-tagged", "image/jpeg", "text/parameters"):
        session.receive_data(
            request("SET_PARAMETER", cseq=9, body=body, Content_Type=content_type), 1.0
        )
        session.data_to_send()
        run(tracker, session)
    assert tracker.state.status is Status.PLAYING
