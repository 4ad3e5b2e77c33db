"""Where audio goes: an ALSA device (through pyalsaaudio) or a file / stdout.

Every sink takes S16_LE 44.1 kHz stereo as int16 ndarrays of shape (frames, 2). Only the output
thread calls them. A clocked sink (ALSA) reports how many frames are queued ahead of the DAC,
which is what timed playout schedules against; a file has no clock, so it gets the audio
untimed, in RTP order, bit-exact.
"""

from __future__ import annotations

import logging
import sys
import wave
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from raopd.errors import OutputError

logger = logging.getLogger(__name__)

RATE = 44100
CHANNELS = 2


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

    def delay_frames(self) -> int:
        """Frames written but not yet played (0 for files)."""

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
            # writeframesraw: the header's length is fixed up on close, so a reader of the
            # finished file sees the right length and a killed process leaves a readable file.
            self._wav.writeframesraw(data)
        elif self._stream is not None:
            try:
                self._stream.write(data)
                self._stream.flush()
            except BrokenPipeError:
                logger.warning("output pipe closed by its reader; discarding audio")
                self._stream = None

    def delay_frames(self) -> int:
        return 0

    def stop(self) -> None:
        """Nothing is queued in a file."""

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._stream is not None and self._stream is not sys.stdout.buffer:
            self._stream.close()
        self._stream = None


class AlsaSink:
    """An ALSA PCM through pyalsaaudio, in blocking mode, S16_LE 44.1 kHz stereo."""

    clocked = True

    def __init__(self, device: str, period_frames: int = 1024, periods: int = 4) -> None:
        self.device = device
        self.period_frames = period_frames
        self.periods = periods
        self.buffer_frames = period_frames * periods
        self.underruns = 0
        self._pcm: object | None = None

    @property
    def description(self) -> str:
        return f"ALSA {self.device}"

    @property
    def opened(self) -> bool:
        """True while the device is open (/readyz reads it)."""
        return self._pcm is not None

    def open(self) -> None:
        import alsaaudio

        try:
            pcm = alsaaudio.PCM(
                type=alsaaudio.PCM_PLAYBACK,
                mode=alsaaudio.PCM_NORMAL,
                device=self.device,
                rate=RATE,
                channels=CHANNELS,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=self.period_frames,
                periods=self.periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            raise OutputError(f"cannot open ALSA device {self.device!r}: {exc}") from exc
        info = pcm.info()
        self.buffer_frames = int(info.get("buffer_size", self.buffer_frames))
        self.period_frames = int(info.get("period_size", self.period_frames))
        self._pcm = pcm

    def write(self, pcm: npt.NDArray[np.int16]) -> None:
        device = self._pcm
        if device is None:
            return
        written = device.write(pcm.astype("<i2", copy=False).tobytes())  # type: ignore[attr-defined]
        if written < 0:
            self.underruns += 1

    def delay_frames(self) -> int:
        device = self._pcm
        if device is None:
            return 0
        avail = int(device.avail())  # type: ignore[attr-defined]
        return max(0, self.buffer_frames - avail)

    def stop(self) -> None:
        if self._pcm is not None:
            self._pcm.drop()  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._pcm is not None:
            self._pcm.close()  # type: ignore[attr-defined]
            self._pcm = None
