"""Where audio goes: an ALSA device (through pyalsaaudio) or a file / stdout.

Every sink takes S16_LE 44.1 kHz stereo as int16 ndarrays of shape (frames, 2). Only the output
thread calls them. A clocked sink (ALSA) reports how many frames are queued ahead of the DAC,
which is what timed playout schedules against; a file has no clock, so it gets the audio
untimed, in RTP order, bit-exact. A sink that fails for good reports it in `fault` (a file:
disk full, broken pipe); the daemon turns that into /readyz 503 and refuses new streams.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import time
from typing import Protocol

import numpy as np
import numpy.typing as npt

from raopd.core.audio_format import OUTPUT_CHANNELS as CHANNELS
from raopd.core.audio_format import SAMPLE_RATE as RATE
from raopd.errors import OutputError
from raopd.output.alsa import AlsaSink

__all__ = ["AlsaSink", "AudioSink", "FileSink"]

logger = logging.getLogger(__name__)


class AudioSink(Protocol):
    """What the output thread needs of an output."""

    @property
    def clocked(self) -> bool:
        """True when the sink consumes audio in real time (a DAC), False for files."""

    @property
    def description(self) -> str:
        """What the sink writes to, for logs."""

    def open(self) -> None:
        """Open the device or file; raises OutputError."""

    def write(self, pcm: npt.NDArray[np.int16]) -> None:
        """Write frames (blocks while a device is full)."""

    @property
    def opened(self) -> bool:
        """True while the output can take audio (False: an unplugged device, being retried)."""

    def delay_frames(self) -> int:
        """Frames written but not yet played (0 for files)."""

    @property
    def underruns(self) -> int:
        """Times the output ran dry while playing (0 for files: they never do)."""

    def measure(self) -> tuple[float, int]:
        """(now, delay_frames) read at one instant, on the monotonic clock."""

    def reopen_if_due(self) -> bool:
        """After a loss, try to open again if it is time; True when open."""

    def stop(self) -> None:
        """Drop what is queued: the stream paused or ended."""

    def close(self) -> None:
        """Release the device or file."""


class FileSink:
    """Raw S16_LE to a file or stdout (`-`), or a WAV when the name ends in `.wav`.

    Writes never raise. A write that fails (disk full, broken pipe, I/O error) sets `fault`,
    counts the block's frames in `frames_dropped`, and leaves the file ending on the last
    whole frame written. While faulted, a write is retried at most every `retry_interval`
    seconds (a disk with room again recovers; a closed pipe stays faulted). A WAV's header is
    rewritten after every write, so whatever ends the process (even SIGKILL) leaves a header
    that matches the data.
    """

    clocked = False
    underruns = 0  # a file never runs dry
    retry_interval = 1.0  # seconds between write attempts while faulted

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._wav = path.lower().endswith(".wav") and path != "-"
        self._data_bytes = 0  # audio bytes on disk after the header
        self._retry_at = 0.0
        self.fault: str | None = None
        self.frames_dropped = 0  # frames not written because of a fault
        self.write_errors = 0

    @property
    def description(self) -> str:
        return "stdout" if self.path == "-" else self.path

    def open(self) -> None:
        try:
            if self.path == "-":
                self._fd = sys.stdout.fileno()
            else:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                if self._wav:
                    _write_all(self._fd, _wav_header(0))
        except OSError as exc:
            if self._fd is not None and self.path != "-":
                os.close(self._fd)
            self._fd = None
            raise OutputError(f"cannot open output {self.path}: {exc.strerror or exc}") from exc

    def write(self, pcm: npt.NDArray[np.int16]) -> None:
        fd = self._fd
        if fd is None:
            return
        if self.fault is not None and time.monotonic() < self._retry_at:
            self.frames_dropped += len(pcm)
            return
        data = pcm.astype("<i2", copy=False).tobytes()
        try:
            written = _write_all(fd, data)
        except _PartialWrite as exc:
            self._failed(exc.cause, len(pcm), exc.written)
            return
        self._data_bytes += written
        if self._wav:
            try:
                self._patch_header()
            except OSError as exc:
                self._failed(exc, 0, 0)
                return
        if self.fault is not None:
            logger.warning("output %s works again", self.description)
            self.fault = None

    def _failed(self, exc: OSError, frames: int, written: int) -> None:
        """A write failed after `written` bytes: keep whole frames only, note the fault."""
        assert self._fd is not None
        whole = written - written % (2 * CHANNELS)
        self._data_bytes += whole
        if whole != written and self.path != "-":
            with contextlib.suppress(OSError):  # best effort: the header still says whole frames
                os.ftruncate(self._fd, self._header_bytes + self._data_bytes)
        if self._wav:
            with contextlib.suppress(OSError):
                self._patch_header()
        self.frames_dropped += frames - whole // (2 * CHANNELS)
        self.write_errors += 1
        first = self.fault is None
        self.fault = f"cannot write to {self.description}: {exc.strerror or exc}"
        self._retry_at = time.monotonic() + self.retry_interval
        if isinstance(exc, BrokenPipeError):
            self._retry_at = float("inf")  # nobody reads the pipe any more
        if first:
            logger.error("%s; audio is discarded until it works again", self.fault)

    @property
    def _header_bytes(self) -> int:
        return WAV_HEADER_BYTES if self._wav else 0

    def _patch_header(self) -> None:
        assert self._fd is not None
        os.pwrite(self._fd, _wav_header(self._data_bytes), 0)

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def delay_frames(self) -> int:
        return 0

    def measure(self) -> tuple[float, int]:
        return time.monotonic(), 0

    def reopen_if_due(self) -> bool:
        """While faulted, look (every retry_interval) whether the disk has room again.

        Without this a full disk could never recover: new streams are refused while the
        output is faulted, so no write would come to find out.
        """
        if self.fault is not None and self._fd is not None and self.path != "-":
            now = time.monotonic()
            if now >= self._retry_at:
                self._retry_at = now + self.retry_interval
                try:
                    fs = os.fstatvfs(self._fd)
                except OSError:
                    return self.opened
                if fs.f_bavail * fs.f_frsize >= RECOVERY_FREE_BYTES:
                    logger.warning("output %s has room again", self.description)
                    self.fault = None
        return self.opened

    def stop(self) -> None:
        """Nothing is queued in a file."""

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.path != "-":
            if self._wav:
                with contextlib.suppress(OSError):
                    os.pwrite(fd, _wav_header(self._data_bytes), 0)
            os.close(fd)


WAV_HEADER_BYTES = 44
RECOVERY_FREE_BYTES = RATE * CHANNELS * 2  # a second of audio free: try writing again


def _wav_header(data_bytes: int) -> bytes:
    """A canonical 44-byte PCM WAV header for S16_LE 44.1 kHz stereo and `data_bytes`."""
    data_bytes = min(data_bytes, 0xFFFFFFFF - 36)
    block = 2 * CHANNELS
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, CHANNELS, RATE, RATE * block, block, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class _PartialWrite(Exception):
    def __init__(self, cause: OSError, written: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.written = written


def _write_all(fd: int, data: bytes) -> int:
    """Write all of `data`; raises _PartialWrite (with the bytes written) on an error."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        try:
            written += os.write(fd, view[written:])
        except InterruptedError:
            continue
        except OSError as exc:
            raise _PartialWrite(exc, written) from exc
    return written
