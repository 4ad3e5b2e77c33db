"""The house, wired to the daemon: tracker + fan-out + the configured consumers + timers.

The daemon's event router hands every non-audio session event to `House.session_event` (and
says when audio resumes after a flush); the tracker turns it into changes and the fan-out
hands them on. The house owns what needs time: the active state's timeout after the last
stream (`active_state_timeout`) and a once-a-second refresh of the sync figures while a
stream plays, only if a consumer takes it (the web page's graph and state; nothing else uses
it). `stop()` ends the playing session from our side (remote "stop").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from raopd.core.events import Event
from raopd.house import fanout as fanout_module
from raopd.house.dacp import DacpRemote
from raopd.house.fanout import Fanout, Subscription
from raopd.house.hooks import Hooks
from raopd.house.log import LogConsumer
from raopd.house.metadata_pipe import FifoWriter, MetadataPipeConsumer, UdpMetadataSender
from raopd.house.mqtt import MqttClient
from raopd.house.sps import VolumeRange
from raopd.house.state import (
    Change,
    ChangeKind,
    PlayerTracker,
    SessionView,
    Status,
    SyncFigures,
)

logger = logging.getLogger(__name__)

SYNC_REFRESH = 1.0  # seconds between sync-figure refreshes while playing

Handler = Callable[[Change], Awaitable[None]]


class House:
    """Player state and its consumers for one daemon."""

    def __init__(
        self,
        *,
        db_of: Callable[[float], float] | None = None,
        active_state_timeout: float = 10.0,
        sync_figures: Callable[[], SyncFigures | None] | None = None,
    ) -> None:
        self.tracker = PlayerTracker(db_of)
        self.fanout = Fanout()
        self.active_state_timeout = active_state_timeout
        self._sync_figures = sync_figures
        self._tasks: list[asyncio.Task[None]] = []
        self._active_timer: asyncio.TimerHandle | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by the daemon: remote control (DACP + stop) and the MQTT client, if configured.
        self.remote: DacpRemote | None = None
        self.mqtt: MqttClient | None = None
        self.hooks: Hooks | None = None
        self.pipe: MetadataPipeConsumer | None = None
        # Set by the daemon once its RTSP server runs: ends a session from our side.
        self.end_session: Callable[[SessionView], bool] | None = None

    @property
    def state(self) -> object:
        """The latest player state (PlayerState)."""
        return self.fanout.state

    # -------------------------------------------------------------- inputs

    def session_event(self, session: SessionView, event: Event) -> None:
        """A session event (never audio): update the state and tell everyone."""
        loop = self._running_loop()
        self._publish(self.tracker.apply(session, event, loop.time()))

    def audio_resumed(self) -> None:
        """Audio came again after a flush."""
        self._publish(self.tracker.audio_resumed(self._running_loop().time()))

    def error(self, message: str) -> None:
        """raopd gives up on something (the unfixable-error hook runs)."""
        self._publish(self.tracker.error(message, self._running_loop().time()))

    def stop(self) -> bool:
        """End the playing session from our side; False when nothing plays."""
        session = self.tracker.session
        if session is None or self.end_session is None:
            return False
        return self.end_session(session)

    # ----------------------------------------------------------- consumers

    def add_consumer(
        self, name: str, handler: Handler, maxlen: int = 256, *, sync: bool = False
    ) -> Subscription:
        """Subscribe `handler` and run it as a task of its own until close(). With `sync` it
        also gets the once-a-second sync refresh (ChangeKind.SYNC) while a stream plays."""
        subscription = self.fanout.subscribe(name, maxlen, sync=sync)
        task = asyncio.get_running_loop().create_task(
            fanout_module.run(subscription, handler), name=f"house-{name}"
        )
        self._tasks.append(task)
        return subscription

    async def close(self, drain: float = 1.0) -> None:
        """Stop the timers and the consumer tasks (what is queued gets `drain` seconds)."""
        if self._active_timer is not None:
            self._active_timer.cancel()
        if self._sync_task is not None:
            self._sync_task.cancel()
        # Let consumers finish what is queued (play_end at shutdown), briefly.
        deadline = asyncio.get_running_loop().time() + drain
        while any(s.pending() or s.busy for s in self.fanout.subscriptions):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # ----------------------------------------------------------- internals

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _publish(self, changes: list[Change]) -> None:
        if not changes:
            return
        self.fanout.publish(changes)
        for change in changes:
            if change.kind is ChangeKind.PLAY_BEGIN:
                if self._active_timer is not None:
                    self._active_timer.cancel()
                    self._active_timer = None
                if (
                    self._sync_figures is not None
                    and self._sync_task is None
                    and self.fanout.wants_sync
                ):
                    self._sync_task = self._running_loop().create_task(self._refresh_sync())
            elif change.kind is ChangeKind.PLAY_END:
                if self._active_timer is not None:
                    self._active_timer.cancel()
                self._active_timer = self._running_loop().call_later(
                    self.active_state_timeout, self._active_timeout
                )

    def _active_timeout(self) -> None:
        self._active_timer = None
        self._publish(self.tracker.active_ended(self._running_loop().time()))

    async def _refresh_sync(self) -> None:
        assert self._sync_figures is not None
        try:
            while self.fanout.state.status is not Status.IDLE:
                await asyncio.sleep(SYNC_REFRESH)
                figures = self._sync_figures()
                if figures is not None:
                    self._publish(self.tracker.refresh_sync(figures, self._running_loop().time()))
        finally:
            self._sync_task = None


async def start_metadata_pipe(
    house: House,
    stack: AsyncExitStack,
    *,
    pipe_path: str | None,
    timeout: float,
    socket_address: str | None,
    socket_port: int,
    msglength: int,
    cover_art: bool,
    volume_range: VolumeRange,
) -> MetadataPipeConsumer | None:
    """The metadata pipe and/or UDP consumer, when configured."""
    if pipe_path is None and socket_address is None:
        return None
    pipe = None
    if pipe_path is not None:
        pipe = FifoWriter(Path(pipe_path), timeout)
        pipe.create()
        logger.info("metadata items to pipe %s", pipe_path)
    udp = None
    if socket_address is not None:
        udp = UdpMetadataSender(socket_address, socket_port, msglength)
        logger.info("metadata items to udp %s:%d", socket_address, socket_port)
    consumer = MetadataPipeConsumer(pipe, udp, cover_art=cover_art, volume_range=volume_range)
    stack.callback(consumer.close)
    house.add_consumer("metadata-pipe", consumer, maxlen=1024)
    return consumer


def start_log(house: House) -> None:
    """The "now playing" log consumer (always on)."""
    house.add_consumer("log", LogConsumer())
