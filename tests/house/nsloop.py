"""An asyncio event loop in a thread that lives inside a network namespace.

Network namespaces belong to threads: a thread that enters one (setns) creates every socket
there, and the threads it starts (zeroconf's, an executor's) inherit it. `NsLoop(lan, ns)`
starts such a thread with its own event loop, so a test can run a real MQTT client, a real
zeroconf responder or a sender *inside* the namespace while its own loop stays outside.
`await ns_loop.run(coro)` runs a coroutine there and returns its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tests.net.conftest import Lan

T = TypeVar("T")


class NsLoop:
    def __init__(self, lan: Lan, ns: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(lan, ns), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self, lan: Lan, ns: str) -> None:
        with lan.inside(ns):
            asyncio.set_event_loop(self.loop)
            self._ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(cancel_all()).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
