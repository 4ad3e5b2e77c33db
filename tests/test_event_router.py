"""The daemon's EventRouter: how session events become output-thread commands.

The output thread is replaced by a recorder of submitted commands (a fake: the real thread's
wake-ups are what this ordering saves, and they cannot be counted from outside).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from raopd.core.clock import ClockEstimate
from raopd.core.events import AudioReady, ClockUpdated, Event, Flushed
from raopd.core.session import RaopSession
from raopd.daemon import DaemonState, EventRouter
from raopd.output.player import Command, Flush, OutputThread, Push, UseClock


@dataclass
class _FileLikeSink:
    clocked: bool = False


@dataclass
class FakeOutput:
    """Records what would have been queued for the output thread."""

    sink: _FileLikeSink = field(default_factory=_FileLikeSink)
    commands: list[Command] = field(default_factory=list)

    def submit(self, command: Command) -> None:
        self.commands.append(command)


def estimate(anchor_rtp: int) -> ClockEstimate:
    return ClockEstimate(
        anchor_rtp=anchor_rtp,
        anchor_local=10.0,
        reference=10.0,
        drift=0.0,
        rate=44100,
        latency_frames=88200,
        offset_ns=0,
        samples=1,
        filter="envelope",
    )


def block(start: int, frames: int = 352) -> AudioReady:
    pcm = np.arange(start * 2, (start + frames) * 2, dtype=np.int64).astype(np.int16)
    return AudioReady(start, pcm.reshape(-1, 2))


class PlayingState:
    """The one part of DaemonState the router reads for these events: who plays."""

    playing: RaopSession | None = None  # feed() sends as session None: "the playing one"


def make_router() -> tuple[EventRouter, FakeOutput]:
    output = FakeOutput()
    state = cast(DaemonState, PlayingState())
    return EventRouter(state, cast(OutputThread, output)), output


async def turn() -> None:
    """Let the loop run the callbacks scheduled so far."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def feed(router: EventRouter, *events: Event) -> None:
    session = cast(RaopSession, None)
    for event in events:
        router(session, event)


async def test_batch_of_audio_is_one_push_after_the_callback() -> None:
    router, output = make_router()
    feed(router, block(0), block(352), block(704))
    assert output.commands == []  # nothing before the loop finishes the callback
    await turn()
    assert len(output.commands) == 1
    push = output.commands[0]
    assert isinstance(push, Push) and push.rtptime == 0
    expected = np.concatenate([block(0).pcm, block(352).pcm, block(704).pcm])
    assert np.array_equal(push.pcm, expected)


async def test_non_contiguous_audio_stays_apart() -> None:
    router, output = make_router()
    feed(router, block(0), block(1000))
    await turn()
    assert [(type(c), getattr(c, "rtptime", None)) for c in output.commands] == [
        (Push, 0),
        (Push, 1000),
    ]


async def test_clock_estimate_alone_does_not_wake_the_output() -> None:
    router, output = make_router()
    for n in range(5):  # the fast timing phase: many estimates, no audio yet
        feed(router, ClockUpdated(estimate(n)))
        await turn()
    assert output.commands == []
    feed(router, block(0))
    await turn()
    # Only the newest estimate is handed over, ahead of the audio it times.
    assert len(output.commands) == 2
    first, second = output.commands
    assert isinstance(first, UseClock) and first.estimate.anchor_rtp == 4
    assert isinstance(second, Push)


async def test_a_flush_from_a_session_that_is_not_playing_never_reaches_the_output() -> None:
    router, output = make_router()
    other = cast(RaopSession, object())
    router(other, Flushed(2_000_000_000))  # e.g. FLUSH before RECORD, then the session ends
    await turn()
    assert output.commands == []


async def test_estimate_goes_before_a_flush() -> None:
    router, output = make_router()
    feed(router, ClockUpdated(estimate(7)), Flushed(1234))
    assert [type(c) for c in output.commands] == [UseClock, Flush]
    await turn()
    assert len(output.commands) == 2
