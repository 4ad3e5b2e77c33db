"""Who may play: one session at a time, optionally taken over by a newcomer."""

from __future__ import annotations

from typing import Protocol


class Preemptible(Protocol):
    """A session that can be told to stop because another one took over."""

    def preempt(self, reason: str) -> None: ...


class PlayArbiter:
    """Grants the right to play to one session; a second gets 453 unless interruption is on."""

    def __init__(self, allow_interruption: bool = False) -> None:
        self.allow_interruption = allow_interruption
        self._owner: Preemptible | None = None

    @property
    def owner(self) -> Preemptible | None:
        """The session that plays now, if any."""
        return self._owner

    def claim(self, session: Preemptible) -> bool:
        """Try to become the playing session; interrupting the current one if allowed."""
        if self._owner is None or self._owner is session:
            self._owner = session
            return True
        if not self.allow_interruption:
            return False
        previous, self._owner = self._owner, session
        previous.preempt("interrupted by another sender")
        return True

    def release(self, session: Preemptible) -> None:
        """Give up the right to play (a no-op for a session that does not hold it)."""
        if self._owner is session:
            self._owner = None
