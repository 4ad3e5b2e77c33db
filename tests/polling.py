"""Waiting in tests: poll a condition with a generous deadline, never sleep a fixed time.

A loaded machine then only makes a test slower, not flaky; a condition that never comes true
fails with what was being waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE = 30.0  # seconds: generous bound for one step (start, scan, stream) on a loaded box


def wait_for(
    condition: Callable[[], object],
    what: str,
    timeout: float = DEADLINE,
    interval: float = 0.05,
) -> object:
    """Poll `condition` until it returns something true (returned); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
