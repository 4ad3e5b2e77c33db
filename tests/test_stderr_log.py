"""C libraries' stderr into the log: rate limit on virtual time, and the real fd 2 redirect."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from raopd.stderr_log import RateLimitedLines, StderrCapture

LINE = "ALSA lib confmisc.c:165:(snd_config_get_card) Cannot get card index for DAC"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_record_per_distinct_message_per_interval(caplog):
    clock = Clock()
    lines = RateLimitedLines(interval=600.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        for second in range(3600):  # an hour of the old once-a-second retry loop
            clock.now = float(second)
            lines.feed(LINE)
            if second == 10:
                lines.feed("ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM dac")
    records = [r for r in caplog.records if r.name == "raopd.alsa_lib"]
    assert len(records) == 7  # t = 0, 600, ..., 3000 and the other message once
    assert records[0].getMessage() == (
        "confmisc.c:165:(snd_config_get_card) Cannot get card index for DAC"
    )
    assert records[2].getMessage().endswith("(599 more times in the last 600 s)")
    assert records[1].getMessage().endswith("Unknown PCM dac")


def test_other_lines_and_blank_lines():
    lines = RateLimitedLines()
    logger = logging.getLogger("raopd.stderr")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        lines.feed("   ")
        lines.feed("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]


def test_capture_takes_what_c_code_writes_to_fd_2(caplog):
    """Real fd 2: what libc's fprintf(stderr) writes ends up as a log record."""
    capture = StderrCapture()
    before = sys.stderr
    with caplog.at_level(logging.WARNING):
        python_stderr = capture.start()
        try:
            libc = ctypes.CDLL(None)
            libc.dprintf(2, b"ALSA lib test.c:1:(test) %s\n", b"hello from C")
            print("python's own stderr is not captured", file=python_stderr)
        finally:
            capture.stop()
    assert sys.stderr is before
    assert os.get_inheritable(2) is not None  # fd 2 is back and valid
    messages = [r.getMessage() for r in caplog.records if r.name == "raopd.alsa_lib"]
    assert messages == ["test.c:1:(test) hello from C"]
    assert "python's own" not in caplog.text
