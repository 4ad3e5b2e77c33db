"""The fan-out: every consumer gets every change in order; a slow or broken one hurts nobody."""

from __future__ import annotations

import asyncio

from raopd.house import fanout
from raopd.house.fanout import Fanout
from raopd.house.house import House
from raopd.house.state import Change, ChangeKind, PlayerState, Status, SyncFigures


def change(n: int) -> Change:
    return Change(ChangeKind.PROGRESS, PlayerState(status=Status.PLAYING), float(n))


async def test_every_consumer_gets_every_change_in_order():
    hub = Fanout()
    seen: dict[str, list[float]] = {"a": [], "b": []}

    async def record(name: str, c: Change) -> None:
        seen[name].append(c.at)

    tasks = [
        asyncio.create_task(fanout.run(hub.subscribe(n), lambda c, n=n: record(n, c))) for n in seen
    ]
    hub.publish([change(n) for n in range(10)])
    while any(len(v) < 10 for v in seen.values()):
        await asyncio.sleep(0)
    assert seen == {"a": [float(n) for n in range(10)], "b": [float(n) for n in range(10)]}
    assert hub.state == change(9).state
    for task in tasks:
        task.cancel()


async def test_a_stuck_consumer_loses_its_oldest_changes_and_delays_no_one():
    hub = Fanout()
    stuck = hub.subscribe("stuck", maxlen=4)
    blocked = asyncio.Event()

    async def never_returns(c: Change) -> None:
        await blocked.wait()

    fast_seen: list[float] = []

    async def fast(c: Change) -> None:
        fast_seen.append(c.at)

    stuck_task = asyncio.create_task(fanout.run(stuck, never_returns))
    fast_task = asyncio.create_task(fanout.run(hub.subscribe("fast"), fast))
    hub.publish([change(0)])
    while stuck.pending():  # the stuck consumer takes change 0 and hangs in it
        await asyncio.sleep(0)
    hub.publish([change(n) for n in range(1, 100)])  # returns at once: publish never waits
    while len(fast_seen) < 100:
        await asyncio.sleep(0)
    # Of the other 99 only the newest 4 are kept, and the 95 dropped are counted.
    assert stuck.counters.dropped == 95
    assert stuck.pending() == 4
    assert [c.at for _ in range(4) if (c := stuck.get_nowait())] == [96.0, 97.0, 98.0, 99.0]
    assert fast_seen == [float(n) for n in range(100)]
    stuck_task.cancel()
    fast_task.cancel()


async def test_a_failing_consumer_is_counted_and_goes_on(caplog):
    hub = Fanout()
    sub = hub.subscribe("broken")
    calls: list[float] = []

    async def broken(c: Change) -> None:
        calls.append(c.at)
        raise RuntimeError("boom")

    task = asyncio.create_task(fanout.run(sub, broken))
    hub.publish([change(n) for n in range(5)])
    while len(calls) < 5:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sub.counters.failed == 5 and sub.counters.delivered == 0
    assert sum("boom" in r.getMessage() for r in caplog.records) == 1  # logged once
    task.cancel()


def test_a_failing_observer_does_not_stop_the_others():
    hub = Fanout()
    seen: list[float] = []

    def bad(c: Change) -> None:
        raise ValueError("observer bug")

    hub.observe(bad)
    hub.observe(lambda c: seen.append(c.at))
    hub.publish([change(1), change(2)])
    assert seen == [1.0, 2.0] and hub.observer_failures == 2


async def test_closed_subscription_ends_its_consumer():
    hub = Fanout()
    sub = hub.subscribe("sse-client")
    got: list[float] = []

    async def handler(c: Change) -> None:
        got.append(c.at)

    task = asyncio.create_task(fanout.run(sub, handler))
    hub.publish([change(1)])
    while not got:
        await asyncio.sleep(0)
    sub.close()
    await asyncio.wait_for(task, 5)  # ends by itself
    assert sub not in hub.subscriptions


def test_the_sync_refresh_goes_only_to_subscriptions_that_take_it():
    hub = Fanout()
    assert not hub.wants_sync  # nobody yet
    log = hub.subscribe("log", sync=False)
    assert not hub.wants_sync
    page = hub.subscribe("web")  # a bare subscription gets everything
    assert hub.wants_sync
    refresh = Change(ChangeKind.SYNC, PlayerState(status=Status.PLAYING), 1.0)
    hub.publish([change(0), refresh, change(2)])
    assert [c.at for _ in range(3) if (c := page.get_nowait())] == [0.0, 1.0, 2.0]
    assert [c.at for _ in range(2) if (c := log.get_nowait())] == [0.0, 2.0]
    assert log.pending() == 0 and log.counters.dropped == 0


async def test_the_house_refreshes_sync_figures_only_for_a_consumer_that_takes_them():
    figures = SyncFigures(0.0, 0.0, None, 0, 0, 0, True)
    begin = Change(ChangeKind.PLAY_BEGIN, PlayerState(status=Status.PLAYING), 0.0)

    async def ignore(c: Change) -> None:
        pass

    quiet = House(sync_figures=lambda: figures)
    quiet.add_consumer("log", ignore)  # consumers default to no sync refresh
    quiet._publish([begin])
    assert quiet._sync_task is None  # nothing to refresh for: no timer runs
    await quiet.close(drain=0)

    graph = House(sync_figures=lambda: figures)
    graph.add_consumer("log", ignore)
    graph.add_consumer("web", ignore, sync=True)
    graph._publish([begin])
    assert graph._sync_task is not None
    await graph.close(drain=0)
