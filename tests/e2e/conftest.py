"""Fixtures for the end-to-end tests: test30.wav and raopd processes on loopback."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.daemon import TEST30, Daemon


@pytest.fixture
def test30() -> np.ndarray:
    with wave.open(str(TEST30), "rb") as wav:
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, "<i2").astype(np.int16).reshape(-1, 2)


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    """`await start_daemon("--no-resend")` -> a running Daemon; stopped at the end."""
    daemons: list[Daemon] = []

    async def start(*extra: str) -> Daemon:
        workdir = tmp_path / f"daemon{len(daemons)}"
        workdir.mkdir()
        daemon = Daemon(workdir, list(extra))
        daemons.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process is not None and daemon.process.returncode is None:
            await daemon.stop()
