"""Reopening a missing device: real alsa-lib opens, virtual time, backoff 1 s doubling to 30 s."""

from __future__ import annotations

import itertools
import logging
import os

import pytest

from raopd.errors import OutputError
from raopd.output.alsa import AlsaSink


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_retries_back_off_to_30_s_and_log_only_changes(alsa_config, caplog) -> None:
    clock = Clock()
    sink = AlsaSink("raopdtest", period_frames=1024, buffer_frames=4096, clock=clock)
    with pytest.raises(OutputError) as failed:  # at start-up, as the daemon opens it
        sink.open()
    sink.note_failure(str(failed.value))
    attempts_at: list[float] = []
    with caplog.at_level(logging.DEBUG, logger="raopd.output.alsa"):
        for _ in range(600):  # ten minutes, polled every second as the output thread would
            clock.now += 1.0
            before = sink.reopen_attempts
            assert not sink.reopen_if_due()
            if sink.reopen_attempts > before:
                attempts_at.append(clock.now - 100.0)
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert attempts_at[0] == 1.0
    assert gaps[:5] == [2.0, 4.0, 8.0, 16.0, 30.0]
    assert set(gaps[4:]) == {30.0}  # at most every 30 s from then on
    assert len(attempts_at) <= 24  # not 600
    # Same reason every time: nothing above DEBUG.
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]

    # The reason changes (the PCM is defined now, but on a card that is not there): one line.
    replacement = alsa_config.path.with_suffix(".hw")  # a new inode: alsa-lib re-reads it
    replacement.write_text('pcm.raopdtest {\n type hw\n card "DAC"\n}\n')
    os.replace(replacement, alsa_config.path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="raopd.output.alsa"):
        for _ in range(120):
            clock.now += 1.0
            sink.reopen_if_due()
    changed = [r.getMessage() for r in caplog.records]
    assert len(changed) == 1 and "still retrying, at most every 30 s" in changed[0], changed

    # The device appears: the next due attempt opens it; the delay starts over at 1 s.
    alsa_config.write({"raopdtest": str(alsa_config.directory / "out.raw")})
    clock.now += 30.0
    with caplog.at_level(logging.INFO, logger="raopd.output.alsa"):
        assert sink.reopen_if_due()
    assert sink.opened and sink.reopens == 1
    assert "ALSA raopdtest is back" in caplog.text
    sink.close()
