"""zeroconf's send errors that every host produces are one INFO line, not a WARNING traceback."""

from __future__ import annotations

import errno
import logging

from raopd.net.mdns import ExpectedNetworkErrors


def record(exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
        "zeroconf", logging.WARNING, "x", 1, "Error with socket 12 (('::1', 5353, 0, 0))): %s",
        (exc,), (type(exc), exc, None),
    )  # fmt: skip


def test_no_route_is_info_without_traceback():
    rec = record(OSError(errno.ENETUNREACH, "Network is unreachable"))
    assert ExpectedNetworkErrors().filter(rec)
    assert (rec.levelno, rec.levelname, rec.exc_info) == (logging.INFO, "INFO", None)
    assert "Network is unreachable" in rec.getMessage()
    assert "Traceback" not in logging.Formatter().format(rec)


def test_other_errors_keep_their_warning_and_traceback():
    rec = record(OSError(errno.EBADF, "Bad file descriptor"))
    assert ExpectedNetworkErrors().filter(rec)
    assert rec.levelno == logging.WARNING and rec.exc_info is not None
