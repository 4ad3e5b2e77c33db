"""Log lines about one session: prefixed with its id, peer text clipped, floods rate-limited.

A misbehaving sender can make a session want to log on every request or datagram; at most
`burst` warnings per `window` seconds get through, and the next one that does says how many
were held back. Time comes in as `now`, like everything else in core/. Text that came from
the peer goes through `clip()` first, so no log line grows past a few hundred characters
whatever the peer sends.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

MAX_PEER_TEXT = 120  # characters of peer-supplied text kept in a log line
WARNING_WINDOW = 10.0  # seconds
WARNING_BURST = 5  # warnings per window and session


def clip(text: object, limit: int = MAX_PEER_TEXT) -> str:
    """`text` as a printable repr-like string of at most about `limit` characters."""
    value = str(text)
    if len(value) > limit:
        value = f"{value[:limit]}... ({len(value)} chars)"
    return value.encode("ascii", "backslashreplace").decode("ascii")


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """A LoggerAdapter that prefixes `[session N]` and rate-limits `warn_limited()`."""

    def __init__(self, logger: logging.Logger, session_id: int) -> None:
        super().__init__(logger, {"session": session_id})
        self.session_id = session_id
        self._window_start = float("-inf")
        self._in_window = 0
        self.suppressed = 0  # warnings held back, all windows

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[session {self.session_id}] {msg}", kwargs

    def warn_limited(self, now: float, msg: str, *args: object) -> None:
        """A warning, unless this session already logged `WARNING_BURST` in this window."""
        if now - self._window_start >= WARNING_WINDOW:
            if self._in_window > WARNING_BURST:
                held = self._in_window - WARNING_BURST
                self.warning("%d similar warnings were not logged", held)
            self._window_start = now
            self._in_window = 0
        self._in_window += 1
        if self._in_window <= WARNING_BURST:
            self.warning(msg, *args)
        else:
            self.suppressed += 1
