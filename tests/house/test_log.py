"""The log consumer's lines: who plays and what, readable in any language, bounded in length."""

from __future__ import annotations

import logging

from raopd.house.log import MAX_LOGGED_CHARS, LogConsumer
from raopd.house.state import (
    MAX_TEXT_CHARS,
    Change,
    ChangeKind,
    PlayerState,
    Sender,
    StreamInfo,
    Track,
)


async def test_lines_keep_unicode_and_stay_bounded(caplog):
    caplog.set_level(logging.INFO, logger="raopd.daemon")
    sender = Sender(1, "Zoë's iPhone", "192.0.2.10", "192.0.2.1", user_agent="AirPlay/381\u00e9")
    stream = StreamInfo("ALAC", True, 44100)
    title = "\u00c9" * MAX_TEXT_CHARS  # as long as the tracker lets a field be
    state = PlayerState(sender=sender, stream=stream, track=Track(title="Été indien"))
    await LogConsumer()(Change(ChangeKind.PLAY_BEGIN, state, 0.0))
    long = PlayerState(sender=sender, stream=stream, track=Track(title=title, artist="A"))
    await LogConsumer()(Change(ChangeKind.METADATA, long, 0.0))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[session 1] playing ALAC, encrypted from Zoë's iPhone (AirPlay/381\\xe9)"
    assert lines[1] == "[session 1] now playing: Été indien from Zoë's iPhone"
    assert lines[2].startswith("[session 1] now playing: A \u2013 \u00c9\u00c9")
    whole = f"A \u2013 {title} from Zoë's iPhone"
    assert lines[2].endswith(f"... ({len(whole)} chars)")
    assert len(lines[2]) < MAX_LOGGED_CHARS + 60
