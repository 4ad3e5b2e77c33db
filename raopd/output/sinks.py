"""Where audio goes: an ALSA device (through pyalsaaudio) or a file / stdout.

Every sink takes S16_LE 44.1 kHz stereo as int16 ndarrays of shape (frames, 2). Only the output
thread calls them. A clocked sink (ALSA) reports how many frames are queued ahead of the DAC,
which is what timed playout schedules against; a file has no clock, so it gets the audio
untimed, in RTP order, bit-exact.
"""

from __future__ import annotations

import logging
import sys
import time
import wave
from pathlib import Path
from typing import BinaryIO, Protocol

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

    def measure(self) -> tuple[float, int]:
        """(now, delay_frames) read at one instant, on the monotonic clock."""

    def reopen_if_due(self) -> bool:
        """After a loss, try to open again if it is time; True when open."""

    def stop(self) -> None:
        """Drop what is queued: the stream paused or ended."""

    def close(self) -> None:
        """Release the device or file."""


class FileSink:
    """Raw S16_LE to a file or stdout (`-`), or a WAV when the name ends in `.wav`."""

    clocked = False

    def __init__(self, path: str) -> None:
        self.path = path
        self._wav: wave.Wave_write | None = None
        self._stream: BinaryIO | None = None

    @property
    def description(self) -> str:
        return "stdout" if self.path == "-" else self.path

    def open(self) -> None:
        try:
            if self.path == "-":
                self._stream = sys.stdout.buffer
            elif self.path.lower().endswith(".wav"):
                self._wav = wave.open(self.path, "wb")  # noqa: SIM115 - closed in close()
                self._wav.setnchannels(CHANNELS)
                self._wav.setsampwidth(2)
                self._wav.setframerate(RATE)
            else:
                self._stream = Path(self.path).open("wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutputError(f"cannot open output {self.path}: {exc.strerror or exc}") from exc

    def write(self, pcm: npt.NDArray[np.int16]) -> None:
        data = pcm.astype("<i2", copy=False).tobytes()
        if self._wav is not None:
            # writeframesraw: the header's length is written on close. A process killed before
            # that leaves a header that understates the length; read such a file as raw, or
            # use a .raw output when something reads the file while raopd runs.
            self._wav.writeframesraw(data)
        elif self._stream is not None:
            try:
                self._stream.write(data)
                self._stream.flush()
            except BrokenPipeError:
                logger.warning("output pipe closed by its reader; discarding audio")
                self._stream = None

    @property
    def opened(self) -> bool:
        return self._wav is not None or self._stream is not None

    def delay_frames(self) -> int:
        return 0

    def measure(self) -> tuple[float, int]:
        return time.monotonic(), 0

    def reopen_if_due(self) -> bool:
        return self.opened

    def stop(self) -> None:
        """Nothing is queued in a file."""

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._stream is not None and self._stream is not sys.stdout.buffer:
            self._stream.close()
        self._stream = None
