"""What C libraries print to stderr (alsa-lib above all), read back into raopd's log.

alsa-lib reports trouble by printing lines such as
`ALSA lib confmisc.c:165:(snd_config_get_card) Cannot get card index for DAC` straight to file
descriptor 2: no timestamp, no level, and once per attempt, so a DAC that is missing for a day
fills a pod's log. Its per-thread hook (`snd_lib_error_set_local`) would be the tidy way in,
but alsa-lib 1.2.8 (Debian bookworm) hands that hook the format string unexpanded ("Cannot
get card index for %s"), and the global hook is variadic, which ctypes cannot receive. So raopd
takes the lines where they are printed: while the daemon runs, fd 2 is a pipe that a thread
reads line by line, and Python's own stderr (the log handler, a last-resort traceback) writes
to a duplicate of the original fd 2.

Each line becomes a log record (logger `raopd.alsa_lib` for alsa-lib's lines, `raopd.stderr`
for anything else) with raopd's timestamp, at WARNING. A line already logged is logged again
only after `interval` seconds, then with how many times it came meanwhile: one line per
distinct message per interval, however often the library repeats it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

DEFAULT_INTERVAL = 600.0  # seconds between two records of the same message
MAX_REMEMBERED = 1000  # distinct messages kept for the rate limit (oldest forgotten first)
MAX_LINE = 4096  # characters of one line kept in the log

_ALSA_PREFIX = "ALSA lib "


class RateLimitedLines:
    """Logs each distinct line once per `interval`, counting the repeats in between."""

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # line -> (last logged, repeats since)
        self._lock = threading.Lock()

    def feed(self, line: str) -> None:
        """One line as the library printed it (without the line end)."""
        line = line.rstrip()[:MAX_LINE]
        if not line.strip():
            return
        now = self._clock()
        with self._lock:
            last = self._seen.get(line)
            if last is not None and now - last[0] < self.interval:
                self._seen[line] = (last[0], last[1] + 1)
                return
            repeats, since = (last[1], now - last[0]) if last is not None else (0, 0.0)
            self._seen.pop(line, None)
            self._seen[line] = (now, 0)
            if len(self._seen) > MAX_REMEMBERED:
                del self._seen[next(iter(self._seen))]
        if line.startswith(_ALSA_PREFIX):
            log, text = logging.getLogger("raopd.alsa_lib"), line[len(_ALSA_PREFIX) :]
        else:
            log, text = logging.getLogger("raopd.stderr"), line
        if repeats:
            log.warning("%s (%d more times in the last %.0f s)", text, repeats, since)
        else:
            log.warning("%s", text)


class StderrCapture:
    """Turns fd 2 into a pipe read by a thread; `start()` returns the stream Python should use."""

    def __init__(self, lines: RateLimitedLines | None = None) -> None:
        self.lines = lines or RateLimitedLines()
        self._saved: int | None = None
        self._thread: threading.Thread | None = None
        self._python_stderr: TextIO | None = None
        self._previous: TextIO | None = None

    def start(self) -> TextIO:
        """Redirect fd 2 and point `sys.stderr` at the original stderr; returns that stream."""
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._python_stderr = open(  # noqa: SIM115 - closed in stop()
            self._saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False
        )
        self._previous = sys.stderr
        sys.stderr = self._python_stderr
        self._thread = threading.Thread(
            target=self._read, args=(read_fd,), name="raopd-stderr", daemon=True
        )
        self._thread.start()
        return self._python_stderr

    def stop(self, timeout: float = 1.0) -> None:
        """Give fd 2 back; what the pipe still holds is logged first."""
        if self._saved is None:
            return
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the reader sees its end
        if self._thread is not None:
            self._thread.join(timeout)
        if self._previous is not None:
            sys.stderr = self._previous
        if self._python_stderr is not None:
            with contextlib.suppress(OSError):
                self._python_stderr.flush()
        os.close(self._saved)
        self._saved = None

    def _read(self, fd: int) -> None:
        pending = b""
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self.lines.feed(raw.decode("utf-8", "replace"))
                if len(pending) > MAX_LINE:  # a line without end: log what came so far
                    self.lines.feed(pending.decode("utf-8", "replace"))
                    pending = b""
            if pending:
                self.lines.feed(pending.decode("utf-8", "replace"))
        except Exception:  # never let the reader die silently: the pipe would fill and block
            logging.getLogger("raopd.stderr").exception("reading stderr failed")
        finally:
            os.close(fd)
