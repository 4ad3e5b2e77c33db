"""A timed-out session closes its connection and answers nothing more."""

from __future__ import annotations

from raopd.core.arbiter import PlayArbiter
from raopd.core.events import EndReason, SessionEnded
from tests.core.test_session import exchange, make_session, request, sdp, start


def test_timed_out_session_closes_its_connection_and_frees_the_receiver():
    arbiter = PlayArbiter()
    first, second = make_session(arbiter, session_timeout=5.0), make_session(arbiter)
    start(first)
    first.handle_timer(5.0)
    assert SessionEnded(EndReason.TIMED_OUT) in list(iter(first.next_event, None))
    assert first.should_close  # the adapter closes the TCP connection
    first.receive_data(request("OPTIONS", cseq=9), 6.0)
    assert first.data_to_send() == b""  # no zombie answers
    body, _ = sdp(False)
    ann = request("ANNOUNCE", body=body, Content_Type="application/sdp")
    assert exchange(second, ann, now=6.0)[0] == 200
    assert arbiter.owner is second
