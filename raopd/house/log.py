"""The log as a fan-out consumer: who plays, and what, once per track, at INFO."""

from __future__ import annotations

import logging

from raopd.core.sessionlog import clip
from raopd.house.state import Change, ChangeKind, Track

logger = logging.getLogger("raopd.daemon")
EN_DASH = "\u2013"  # between artist and title, as a music player writes it
# The tracker's text is printable already (clean_text) but up to 1024 characters a field:
# a log line keeps this much of it. Not core's clip(), which escapes everything outside ASCII:
# titles and sender names are in every language and are for people to read.
MAX_LOGGED_CHARS = 300


def now_playing_text(track: Track, sender_name: str) -> str | None:
    """'Artist - Title (Album) from Joe's iPhone' (an en dash), with the parts that are known."""
    if not (track.title or track.artist or track.album):
        return None
    text = f" {EN_DASH} ".join(x for x in (track.artist, track.title) if x)
    if track.album:
        text = f"{text} ({track.album})" if text else f"({track.album})"
    return f"{text} from {sender_name}" if sender_name else text


def bounded(text: str) -> str:
    """`text` cut to `MAX_LOGGED_CHARS`, saying how long it was."""
    if len(text) <= MAX_LOGGED_CHARS:
        return text
    return f"{text[:MAX_LOGGED_CHARS]}... ({len(text)} chars)"


class LogConsumer:
    """Logs play starts and ends and the track, each track once."""

    def __init__(self) -> None:
        self._logged: tuple[int, tuple[str | None, ...]] | None = None

    async def __call__(self, change: Change) -> None:
        state = change.state
        sender = state.sender
        session_id = sender.session_id if sender is not None else 0
        if change.kind is ChangeKind.PLAY_BEGIN and state.stream is not None:
            logger.info(
                "[session %d] playing %s%s from %s (%s)",
                session_id,
                state.stream.codec,
                ", encrypted" if state.stream.encrypted else "",
                bounded(sender.display_name if sender is not None else "?"),
                clip((sender.user_agent if sender is not None else "") or "unknown sender"),
            )
        if change.kind in (ChangeKind.METADATA, ChangeKind.PLAY_BEGIN):
            key = (session_id, state.track.identity)
            text = now_playing_text(state.track, sender.display_name if sender else "")
            if text is not None and key != self._logged:
                self._logged = key
                logger.info("[session %d] now playing: %s", session_id, bounded(text))
        elif change.kind is ChangeKind.ERROR:
            logger.error("%s", change.reason)
