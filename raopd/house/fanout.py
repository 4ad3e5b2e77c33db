"""One fan-out for player-state changes: every consumer gets each `Change` through its own queue.

`Fanout.publish(change)` runs on the event loop, where the session events arrive, and never
waits: it appends the change to each subscription's bounded queue and returns. A subscription
whose consumer is slow or stuck loses its *oldest* changes (counted in `dropped`), never
delays the audio path or another consumer. A subscription made with `sync=False` is not
handed the periodic sync refresh (`ChangeKind.SYNC`): consumers with no use for it (the log,
the metadata pipe, MQTT, hooks) are not woken once a second for nothing, and the house runs
the refresh only while some subscription wants it (`wants_sync`).

`run(subscription, handler)` is the consumer task: it awaits the handler for each change in
order; a handler that raises is logged (once per kind of failure, then counted) and the task
goes on with the next change.

Observers (`observe`) are the exception for bookkeeping that must be done before the next
event, such as folding an ended session's counters into /metrics: they are called inline and
must be quick; one that raises is counted and logged, and the others still run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from raopd.house.state import Change, ChangeKind, PlayerState

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = 256  # changes: minutes of ordinary use; a burst of metadata is a few dozen


@dataclass(slots=True)
class ConsumerCounters:
    """Per consumer, for /metrics."""

    delivered: int = 0
    dropped: int = 0  # oldest changes lost because the queue was full
    failed: int = 0  # handler calls that raised


class Subscription:
    """A consumer's bounded queue of changes (drop-oldest)."""

    def __init__(self, fanout: Fanout, name: str, maxlen: int, *, sync: bool = True) -> None:
        self.name = name
        self.sync = sync  # takes the periodic sync refresh (ChangeKind.SYNC)
        self.counters = ConsumerCounters()
        self._fanout = fanout
        self._queue: deque[Change] = deque(maxlen=maxlen)
        self._ready = asyncio.Event()
        self.closed = False
        self.busy = False  # its consumer is handling a change now

    def put(self, change: Change) -> None:
        """Queue a change (the fan-out's side); the oldest goes when the queue is full."""
        if self.closed:
            return
        if len(self._queue) == self._queue.maxlen:
            self.counters.dropped += 1
        self._queue.append(change)
        self._ready.set()

    async def get(self) -> Change:
        """The next change, in order; waits while there is none."""
        while not self._queue:
            if self.closed:
                raise EOFError(self.name)
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def get_nowait(self) -> Change | None:
        """The next change if one is queued, else None."""
        return self._queue.popleft() if self._queue else None

    def pending(self) -> int:
        """Changes queued, not yet taken."""
        return len(self._queue)

    def close(self) -> None:
        """Stop receiving; a waiting `get` raises EOFError once the queue is empty."""
        self.closed = True
        self._ready.set()
        self._fanout.unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[Change]:
        while True:
            try:
                yield await self.get()
            except EOFError:
                return


class Fanout:
    """Publishes each change to every subscription and observer; holds the latest state."""

    def __init__(self) -> None:
        self.state = PlayerState()
        self.subscriptions: list[Subscription] = []
        self._observers: list[Callable[[Change], None]] = []
        self.observer_failures = 0

    def subscribe(
        self, name: str, maxlen: int = DEFAULT_QUEUE, *, sync: bool = True
    ) -> Subscription:
        """A new queue that receives every change published from now on (without the periodic
        sync refresh when `sync` is False)."""
        subscription = Subscription(self, name, maxlen, sync=sync)
        self.subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription (Subscription.close does this)."""
        if subscription in self.subscriptions:
            self.subscriptions.remove(subscription)

    @property
    def wants_sync(self) -> bool:
        """Some subscription takes the periodic sync refresh."""
        return any(subscription.sync for subscription in self.subscriptions)

    def observe(self, observer: Callable[[Change], None]) -> None:
        """Call `observer(change)` inline for every change (bookkeeping only: keep it quick)."""
        self._observers.append(observer)

    def publish(self, changes: list[Change]) -> None:
        """Hand changes to everyone; returns at once."""
        for change in changes:
            self.state = change.state
            for observer in self._observers:
                try:
                    observer(change)
                except Exception:
                    self.observer_failures += 1
                    logger.exception("state observer %r failed", observer)
            refresh = change.kind is ChangeKind.SYNC
            for subscription in self.subscriptions:
                if subscription.sync or not refresh:
                    subscription.put(change)


async def run(subscription: Subscription, handler: Callable[[Change], Awaitable[None]]) -> None:
    """Feed `subscription`'s changes to `handler` until cancelled or closed."""
    failures: set[str] = set()
    async for change in subscription:
        subscription.busy = True
        try:
            await handler(change)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            subscription.counters.failed += 1
            what = f"{type(exc).__name__}: {exc}"
            if what not in failures and len(failures) < 32:
                failures.add(what)  # once per kind of failure: a broken consumer cannot flood
                logger.warning(
                    "%s: %s (further such failures are counted only)", subscription.name, what
                )
        else:
            subscription.counters.delivered += 1
        finally:
            subscription.busy = False
