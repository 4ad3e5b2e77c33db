"""hook_wait_for_completion: audio held while the start hooks run, then played in sync.

Two halves, each with the real code: the daemon's router holds the stream's audio while the
hooks' gate is closed and hands it on, in order and complete, when it opens; and the real
ClockSync + Playout on virtual time (tests/core/fake_dac.py, a fake DAC and sender), given
audio only when a 3 s hook ends, play the first note right then and every frame after it at
its intended time, skipping (and counting) what was due during the wait.
"""

from __future__ import annotations

import asyncio
from typing import cast

import numpy as np

from raopd.core.events import EndReason, Flushed, SessionEnded
from raopd.core.session import RaopSession
from raopd.daemon import MAX_HELD_FRAMES, DaemonState, EventRouter
from raopd.output.player import OutputThread, Push
from tests.core.fake_dac import RATE, SENDER_LATENCY, Scenario, simulate
from tests.test_event_router import FakeOutput, PlayingState, block, turn


def make_router() -> tuple[EventRouter, FakeOutput, asyncio.Event]:
    output = FakeOutput()
    router = EventRouter(cast(DaemonState, PlayingState()), cast(OutputThread, output))
    gate = asyncio.Event()
    router.audio_gate = gate
    return router, output, gate


def feed(router: EventRouter, *events: object) -> None:
    for event in events:
        router(cast(RaopSession, None), event)  # type: ignore[arg-type]


async def test_audio_waits_for_the_gate_then_goes_on_complete_and_in_order():
    router, output, gate = make_router()
    feed(router, *(block(352 * n) for n in range(10)))
    await turn()
    assert output.commands == []  # held
    assert router.held_frames == 3520
    gate.set()
    router.release_held()
    feed(router, block(3520))
    await turn()
    pushes = [c for c in output.commands if isinstance(c, Push)]
    pcm = np.concatenate([p.pcm for p in pushes])
    expected = np.concatenate([block(352 * n).pcm for n in range(11)])
    assert pushes[0].rtptime == 0 and np.array_equal(pcm, expected)
    assert router.held_dropped_frames == 0


async def test_held_audio_is_bounded_and_a_flush_drops_it_counted():
    router, output, gate = make_router()
    blocks = MAX_HELD_FRAMES // 352 + 100
    feed(router, *(block(352 * n) for n in range(blocks)))
    assert router.held_dropped_frames == 100 * 352  # the oldest went: they would be late
    feed(router, Flushed(None))
    assert router.held_dropped_frames == blocks * 352
    gate.set()
    router.release_held()
    await turn()
    assert not any(isinstance(c, Push) for c in output.commands)


def test_first_note_comes_when_the_hook_ends_and_then_in_sync():
    start, hook = 0.3, 3.0  # the sender starts at 0.3 s; the hook runs for 3 s
    result = simulate(
        Scenario(sender_ppm=30.0, jitter=0.002, seconds=8.0, hold_until=start + hook, lock_in=0.0)
    )
    due_first = start + (SENDER_LATENCY + 11025) / RATE  # 2.3 s: when frame 0 was due
    assert due_first < start + hook
    # The first note: right when the hook ended (within the DAC queue's ~70 ms), not the
    # latency later.
    assert start + hook <= result.first_audio_leave < start + hook + 0.1
    # Every frame from there on left at its intended time.
    assert result.max_abs < 1e-3
    # What was due during the wait was skipped, counted, and the rest played from there.
    stats = result.playout.stats
    assert stats.skipped_frames >= int((start + hook - due_first) * RATE)
    assert result.played[0] >= (start + hook - due_first) * RATE
    # Contiguous after the first note but for single frames the 30 ppm drift correction
    # drops or repeats (about 8 in 6 s).
    steps = np.diff(result.played)
    assert np.all(np.isin(steps, (0, 1, 2))) and np.count_nonzero(steps != 1) <= 20


async def test_another_sessions_end_keeps_the_held_audio():
    """Every connection ends with SessionEnded now (a probe, a refused sender): only the
    playing session's end or flush may drop the audio held for the hooks."""
    router, output, gate = make_router()
    playing, probe = cast(RaopSession, object()), cast(RaopSession, object())
    cast(PlayingState, router.state).playing = playing
    for n in range(10):
        router(playing, block(352 * n))
    router(probe, SessionEnded(EndReason.CONNECTION_CLOSED))
    router(probe, Flushed(None))
    assert router.held_dropped_frames == 0
    gate.set()
    router.release_held()
    await turn()
    pushes = [c for c in output.commands if isinstance(c, Push)]
    assert sum(len(p.pcm) for p in pushes) == 3520
    router(playing, SessionEnded(EndReason.TEARDOWN))
    assert router.held_dropped_frames == 0  # nothing was held any more
