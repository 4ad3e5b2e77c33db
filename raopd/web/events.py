"""Server-Sent Events: every player-state change (and the once-a-second sync refresh, which is
the progress tick) to every open page, and the sync history behind the health graph.

The hub is one consumer of the house's fan-out: it turns each change into one encoded event
(`event: state`, the API's state document as data) and hands the same bytes to each client.
Everything is bounded: at most `max_clients` clients (more are refused), at most
`CLIENT_BUFFER` events queued per client. A client whose queue is full is not keeping up (a
page in a frozen tab, a client that never reads): it is dropped, counted, and its
connection ends; a browser's EventSource reconnects by itself and gets the current state
first, so nothing is lost that matters. Writing to a client is the HTTP handler's job
(`api.events`); its writes time out after `WRITE_TIMEOUT`, and the socket's send buffer is
kept small so a client that stops reading fills it, and is found out, quickly.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from raopd.house.state import Change, ChangeKind, PlayerState

CLIENT_BUFFER = 32  # events queued for one client; the tick is 1/s, so 32 s of backlog
WRITE_TIMEOUT = 5.0  # seconds one event may take to be handed to a client
KEEPALIVE = 15.0  # seconds of quiet before a comment line keeps proxies from closing
HISTORY_SECONDS = 300  # the sync graph's span: the last five minutes
SEND_BUFFER = 16 * 1024  # bytes: the kernel's send buffer for an event stream's socket

Document = Callable[[PlayerState, str | None], dict[str, object]]


def encode(name: str, data: object) -> bytes:
    """One SSE event: `event:` and a single `data:` line (JSON has no raw newlines)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventClient:
    """One connected stream: its bounded queue, and whether it was dropped."""

    def __init__(self) -> None:
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self.dropped = False
        self.closed = False

    def put(self, event: bytes) -> bool:
        """Queue an event; False (and dropped) when the client has fallen too far behind."""
        if self.closed:
            return True
        if len(self._queue) >= CLIENT_BUFFER:
            self.dropped = True
            self.closed = True
            self._queue.clear()
            self._ready.set()
            return False
        self._queue.append(event)
        self._ready.set()
        return True

    async def next(self, timeout: float) -> bytes | None:
        """The next event; None after `timeout` seconds without one; EOFError when closed."""
        while not self._queue:
            if self.closed:
                raise EOFError
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        if self.closed:
            raise EOFError
        return self._queue.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()


@dataclass(slots=True)
class HubCounters:
    """For /metrics and tests."""

    connected: int = 0  # clients accepted, ever
    refused: int = 0  # over max_clients
    dropped: int = 0  # fell behind (never read, or too slowly) and were cut off
    events: int = 0  # events made (each sent to every client)


@dataclass(frozen=True, slots=True)
class SyncPoint:
    """One point of the health graph."""

    at: float  # wall-clock seconds
    sync_error_ms: float
    correction_ppm: float


class EventHub:
    """The event stream's clients, and the last minutes of sync figures."""

    def __init__(
        self,
        document: Document,
        wall: Callable[[], float],
        max_clients: int = 200,
    ) -> None:
        self._document = document
        self._wall = wall
        self.max_clients = max_clients
        self.clients: set[EventClient] = set()
        self.counters = HubCounters()
        self.history: deque[SyncPoint] = deque(maxlen=HISTORY_SECONDS)

    def connect(self) -> EventClient | None:
        """A new client, or None when there are too many."""
        if len(self.clients) >= self.max_clients:
            self.counters.refused += 1
            return None
        client = EventClient()
        self.clients.add(client)
        self.counters.connected += 1
        return client

    def disconnect(self, client: EventClient) -> None:
        client.close()
        self.clients.discard(client)

    async def close(self, timeout: float = 1.0) -> None:
        """End every stream (shutdown), giving their handlers `timeout` seconds to say goodbye
        (the end of the chunked body) before the server cuts the connections."""
        for client in list(self.clients):
            client.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def current(self, state: PlayerState) -> bytes:
        """The event a new client gets first: the state as it is."""
        return encode("state", self._document(state, None))

    async def __call__(self, change: Change) -> None:
        """The house consumer: one event per change, to every client."""
        if change.kind is ChangeKind.SYNC and change.state.sync is not None:
            sync = change.state.sync
            self.history.append(
                SyncPoint(round(self._wall(), 3), sync.sync_error_ms, sync.correction_ppm)
            )
        if not self.clients:
            return
        event = encode("state", self._document(change.state, change.kind.name.lower()))
        self.counters.events += 1
        for client in list(self.clients):
            if not client.put(event):
                self.counters.dropped += 1
                self.clients.discard(client)

    def history_document(self) -> dict[str, object]:
        """The sync history for the graph (oldest first)."""
        return {
            "span_s": HISTORY_SECONDS,
            "points": [
                {
                    "at": p.at,
                    "sync_error_ms": round(p.sync_error_ms, 3),
                    "correction_ppm": round(p.correction_ppm, 1),
                }
                for p in self.history
            ],
        }
