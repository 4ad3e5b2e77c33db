"""Per-address budgets for the two costly things a stranger can ask of us.

- RSA signatures (Apple-Challenge): each costs milliseconds of CPU. A token bucket per
  address allows `challenge_burst` at once and `challenge_rate` a second after that; a
  request over budget waits (its connection is held, nothing is refused), so a client that
  pipelines thousands of challenges slows only itself.
- Password guesses (Digest): after each failed answer from an address, the next one from that
  address is not looked at before a delay that doubles with every failure (from
  `auth_base_delay` up to `auth_max_delay`); a success clears the address's record.

Sans-I/O like the rest of core/: every method takes `now`. At most `max_peers` addresses are
remembered; the least recently seen is forgotten first, so the table cannot grow without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

CHALLENGE_RATE = 2.0  # signatures per second per address, sustained (a sender needs one or two)
CHALLENGE_BURST = 3.0  # iTunes: one on its probe connection, one on the session
AUTH_BASE_DELAY = 0.5  # seconds after the first wrong answer
AUTH_MAX_DELAY = 30.0  # a guesser gets two tries a minute at most
MAX_PEERS = 1024


@dataclass(slots=True)
class _Peer:
    tokens: float
    refilled: float
    failures: int = 0
    blocked_until: float = 0.0


class PeerThrottle:
    """Challenge budgets and Digest back-off per peer address; see the module docstring."""

    def __init__(
        self,
        *,
        challenge_rate: float = CHALLENGE_RATE,
        challenge_burst: float = CHALLENGE_BURST,
        auth_base_delay: float = AUTH_BASE_DELAY,
        auth_max_delay: float = AUTH_MAX_DELAY,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.challenge_rate = challenge_rate
        self.challenge_burst = challenge_burst
        self.auth_base_delay = auth_base_delay
        self.auth_max_delay = auth_max_delay
        self.max_peers = max_peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self.challenges_delayed = 0  # requests that had to wait for a signature budget
        self.auth_failures = 0  # wrong Digest answers, all addresses

    def _peer(self, address: str, now: float) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            peer = _Peer(tokens=self.challenge_burst, refilled=now)
            self._peers[address] = peer
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(address)
        return peer

    def take_challenge(self, address: str, now: float) -> float | None:
        """Spend one signature from `address`'s budget: None if done, else when to ask again."""
        peer = self._peer(address, now)
        peer.tokens = min(
            self.challenge_burst, peer.tokens + (now - peer.refilled) * self.challenge_rate
        )
        peer.refilled = now
        if peer.tokens >= 1.0:
            peer.tokens -= 1.0
            return None
        self.challenges_delayed += 1
        return now + (1.0 - peer.tokens) / self.challenge_rate

    def auth_allowed_at(self, address: str, now: float) -> float:
        """The earliest time a Digest answer from `address` is looked at."""
        peer = self._peers.get(address)
        return peer.blocked_until if peer is not None else now

    def auth_failed(self, address: str, now: float) -> float:
        """Record a wrong answer; returns the delay imposed before the next one."""
        peer = self._peer(address, now)
        peer.failures += 1
        self.auth_failures += 1
        delay = min(self.auth_max_delay, self.auth_base_delay * 2.0 ** min(peer.failures - 1, 30))
        peer.blocked_until = now + delay
        return delay

    def auth_succeeded(self, address: str) -> None:
        """A right answer: the address starts again from no failures."""
        peer = self._peers.get(address)
        if peer is not None:
            peer.failures = 0
            peer.blocked_until = 0.0
