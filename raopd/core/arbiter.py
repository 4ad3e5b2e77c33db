"""Who may play: one session at a time, optionally taken over by a newcomer.

The arbiter never calls into a session. When a newcomer displaces the playing session (only
with interruption allowed), `claim()` hands the displaced session back; whoever asked (the
server, through the session) ends it under its own guard. `take_displaced()` returns the
sessions displaced since the last call, for adapters that collect them after each step.

It also answers the one question every session must ask before it starts a stream: can the
audio output take audio at all? (`output_fault`, read through the callable the daemon sets
in `fault_source`, so that /readyz and ANNOUNCE always agree.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")


class PlayArbiter(Generic[S]):
    """Grants the right to play to one session; a second gets 453 unless interruption is on."""

    def __init__(self, allow_interruption: bool = False) -> None:
        self.allow_interruption = allow_interruption
        self._owner: S | None = None
        self._displaced: list[S] = []
        # Why the output cannot play (disk full, broken pipe, device gone); None when it can.
        self.fault_source: Callable[[], str | None] | None = None

    @property
    def output_fault(self) -> str | None:
        """Why no stream may start now, or None."""
        return self.fault_source() if self.fault_source is not None else None

    @property
    def owner(self) -> S | None:
        """The session that plays now, if any."""
        return self._owner

    def holds(self, session: S) -> bool:
        """True when `session` holds the right to play."""
        return self._owner is not None and self._owner is session

    def claim(self, session: S) -> bool:
        """Try to become the playing session, displacing the current one if allowed.

        A displaced session is queued for `take_displaced()`; it no longer holds anything.
        """
        if self._owner is None or self._owner is session:
            self._owner = session
            return True
        if not self.allow_interruption:
            return False
        self._displaced.append(self._owner)
        self._owner = session
        return True

    def take_displaced(self) -> list[S]:
        """The sessions displaced since the last call, oldest first."""
        displaced, self._displaced = self._displaced, []
        return displaced

    def release(self, session: S) -> None:
        """Give up the right to play (a no-op for a session that does not hold it)."""
        if self._owner is session:
            self._owner = None
