"""The daemon's ReadinessLog: one line per change of /readyz's answer, driven by the inputs.

The RTSP server and the mDNS advertiser are stand-ins with the attributes readiness reads (the
real ones are covered by tests/e2e/test_operator.py); the output is the real thread and sink.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import SimpleNamespace

import pytest

from raopd.config import Config
from raopd.core.session import ReceiverInfo
from raopd.daemon import DaemonState, ReadinessLog
from raopd.output.player import OutputThread
from raopd.output.sinks import FileSink
from tests.polling import wait_for

RECEIVER = ReceiverInfo(name="Test", hw_addr=bytes.fromhex("0a1b2c3d4e5f"))


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ready" in r.getMessage()]


async def test_one_line_per_change_from_start_to_close(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="raopd.daemon")
    state = DaemonState(config=Config(), receiver=RECEIVER)
    readiness = ReadinessLog(state, asyncio.get_running_loop())
    readiness.check()
    assert lines(caplog) == []  # nothing before start(): the daemon is still starting

    readiness.start()
    assert lines(caplog) == [
        "raopd not ready: RTSP server not listening; mDNS service not registered; "
        "audio device not open"
    ]
    readiness.check()  # nothing changed: nothing said
    assert len(lines(caplog)) == 1

    sink = FileSink(str(tmp_path / "out.raw"))
    sink.open()
    output = OutputThread(sink)
    state.output = output
    state.server = SimpleNamespace(listening=True)  # type: ignore[assignment]
    state.mdns = SimpleNamespace(  # type: ignore[assignment]
        registered=True, addresses=["192.0.2.1"], interfaces=None, service_name="X@Test"
    )
    output.on_health_change = readiness.check_threadsafe
    output.start()
    try:
        readiness.check()
        assert lines(caplog)[-1].startswith("raopd ready: X@Test on port 5000, 192.0.2.1")

        # From another thread, as the output thread calls it: the check runs on the loop.
        sink.fault = "cannot write to out.raw: No space left on device"
        threading.Thread(target=readiness.check_threadsafe).start()
        await asyncio.to_thread(
            wait_for, lambda: len(lines(caplog)) == 3, "the not-ready line from the thread"
        )
        assert lines(caplog)[-1] == (
            "raopd not ready: audio output failed: cannot write to out.raw: No space left on device"
        )
        sink.fault = None
        readiness.check()
        assert lines(caplog)[-1].startswith("raopd ready: ")
    finally:
        readiness.close()
        output.stop()  # the thread's end calls check_threadsafe: closed, so nothing more
        sink.close()
    for _ in range(3):  # a check the thread's end scheduled would run now
        await asyncio.sleep(0)
    said = len(lines(caplog))
    state.server = None
    readiness.check()
    assert len(lines(caplog)) == said == 4  # shutdown is not news
