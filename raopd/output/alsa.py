"""ALSA output through pyalsaaudio 0.11: timestamped queue depth, xrun recovery, hot-unplug.

Only the output thread calls an `AlsaSink`. What it adds over a bare `alsaaudio.PCM`:

* **When a written frame is heard: `snd_pcm_delay`.** `measure()` returns the pair
  `(now, delay_frames)` that `Playout.pull` wants: the frames a frame written now has ahead of
  it before it is heard. ALSA's answer to that is `snd_pcm_delay`: the ring buffer *plus*
  whatever the device or plugin holds beyond it (a USB DAC's packets in flight, a PulseAudio
  stream's and sink's latency). `buffer_size - avail` counts the ring buffer alone. Measured on
  the `pulse` plugin into a timed PulseAudio sink (docs/alsa-delay.md): `snd_pcm_delay` gives
  when a marker frame comes out of the sink within +-0.7 ms, with 0.1-0.6 ms of noise, for
  sink chunks of 6, 12 and 23 ms; `buffer - avail` is off by -3.4 to +0.4 ms depending on the
  chunk and jumps by 1-3 ms (sd) as PulseAudio pulls data. pyalsaaudio 0.11 has no `delay()`,
  so `PcmDelay` calls libasound's `snd_pcm_delay` on the PCM the pyalsaaudio object holds,
  after checking that object's layout (see there); when that check fails, or the call does,
  the older readings are used: timestamps on the monotonic clock (`htimestamp()`: `avail`
  at the time the hardware pointer last moved, carried to now), else `avail()` read right
  after the clock. `counters().delay_reading` says which one is in use.
* **Xruns.** pyalsaaudio's `write()` prepares the PCM itself after `-EPIPE` but drops the block;
  the sink counts the underrun and writes the block again. `drop()` leaves the PCM in SETUP, and
  the next `write()` prepares it: the device stays usable after a flush.
* **A device that goes away** (USB DAC unplugged: `write()` raises, `avail()` returns -ENODEV or
  -EBADFD, the state reads DISCONNECTED) is closed; `reopen_if_due()` tries to open it again at
  once, then after `retry_interval` seconds, doubling the wait up to `retry_max` (1 s to 30 s:
  a DAC replugged is back within a second, one missing for a day costs a try every 30 s). The
  log gets one line when the device goes and one when it is back, plus one if the reason it
  cannot be opened changes; each attempt is only a debug line. The output thread keeps its
  heartbeat and the timeline meanwhile; the event loop is never involved. `opened` says which
  case holds (/readyz).
* **Devices without a clock** (ALSA's `null`, the `file` plugin over `null`) take any amount of
  audio at once. After a few writes that vanish instantly the sink paces itself to real time with
  a virtual queue of `buffer_frames`, so such a device does not spin a CPU core and reports a
  queue depth a real DAC would have.

pyalsaaudio 0.11 releases the GIL around `snd_pcm_writei` (alsaaudio.c, `alsapcm_write`, and in
`drain`/`close`), so a blocking write never starves the event loop; blocking mode is kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from raopd.errors import OutputError

logger = logging.getLogger(__name__)

RATE = 44100
CHANNELS = 2
FRAME_BYTES = 4  # S16_LE stereo

# snd_pcm_state_t values (alsaaudio exports the same numbers as PCM_STATE_*).
STATE_SETUP = 1
STATE_PREPARED = 2
STATE_RUNNING = 3
STATE_XRUN = 4
STATE_DISCONNECTED = 8

CLOCKLESS_AFTER = 8
"""Consecutive writes that vanish at once before a device counts as clockless."""
TSTAMP_SLACK = 1.0
"""A timestamp more than this (s) away from the clock is not the monotonic clock: ignore it."""

PcmFactory = Callable[..., Any]

DELAY = "snd_pcm_delay"
HTIMESTAMP = "htimestamp"
AVAIL = "avail"


class PcmDelay:
    """`snd_pcm_delay()` on the `snd_pcm_t` inside a pyalsaaudio 0.11 `PCM` object.

    pyalsaaudio keeps the handle in its C object (`alsapcm_t`: PyObject_HEAD, long pcmtype, int
    pcmmode, char *cardname, snd_pcm_t *handle, ...: 80 bytes on 64-bit). `attach()` reads it
    only when every check passes: a real `alsaaudio.PCM`, 8-byte pointers, that exact object
    size, `cardname` spelling the device that was opened, and libasound's own `snd_pcm_name()`
    of the handle spelling it too. Anything else (another pyalsaaudio, a test double) gives
    None and the sink keeps its older readings.
    """

    _CARDNAME_OFFSET = 32
    _HANDLE_OFFSET = 40
    _OBJECT_SIZE = 80

    def __init__(self, lib: ctypes.CDLL, pcm: object, handle: int) -> None:
        self._lib = lib
        self._pcm = pcm  # keeps the object (and so the address read below) alive
        self._slot = ctypes.c_void_p.from_address(id(pcm) + self._HANDLE_OFFSET)
        self._handle = handle
        self._frames = ctypes.c_long()

    @classmethod
    def attach(cls, pcm: object, device: str) -> PcmDelay | None:
        try:
            import alsaaudio
        except ImportError:
            return None
        if type(pcm) is not alsaaudio.PCM or ctypes.sizeof(ctypes.c_void_p) != 8:
            return None
        if type(pcm).__basicsize__ != cls._OBJECT_SIZE:
            return None
        name = ctypes.util.find_library("asound")
        if name is None:
            return None
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            return None
        lib.snd_pcm_delay.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_long)]
        lib.snd_pcm_delay.restype = ctypes.c_int
        lib.snd_pcm_name.argtypes = [ctypes.c_void_p]
        lib.snd_pcm_name.restype = ctypes.c_char_p
        base = id(pcm)
        cardname = ctypes.c_void_p.from_address(base + cls._CARDNAME_OFFSET).value
        handle = ctypes.c_void_p.from_address(base + cls._HANDLE_OFFSET).value
        if not cardname or not handle or ctypes.string_at(cardname) != device.encode():
            return None
        if lib.snd_pcm_name(handle) != device.encode():
            return None
        return cls(lib, pcm, handle)

    def __call__(self) -> int | None:
        """Frames between the next frame written and the one heard now; None on an error."""
        if self._slot.value != self._handle:
            return None  # pyalsaaudio closed it (its close() zeroes the handle)
        if self._lib.snd_pcm_delay(self._handle, ctypes.byref(self._frames)) < 0:
            return None
        return int(self._frames.value)


@dataclass(frozen=True, slots=True)
class AlsaCounters:
    """A snapshot of the sink's counters (plain values, safe to hand to another thread)."""

    opened: bool
    underruns: int
    """Times the DAC ran dry while playing: xruns, plus device losses mid-stream."""
    device_errors: int
    """Times the device failed and was closed (unplugged, disconnected, I/O error)."""
    reopen_attempts: int
    reopens: int
    """Successful opens after a loss."""
    timestamped: bool
    """The last delay came from snd_pcm_delay or a hardware timestamp (False: from avail())."""
    clockless: bool
    delay_reading: str = ""
    """Which reading the last delay came from: snd_pcm_delay, htimestamp or avail."""


class AlsaSink:
    """An ALSA PCM through pyalsaaudio, blocking, S16_LE 44.1 kHz stereo."""

    clocked = True

    def __init__(
        self,
        device: str,
        period_frames: int = 2048,
        buffer_frames: int = 4096,
        *,
        retry_interval: float = 1.0,
        retry_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        pcm_factory: PcmFactory | None = None,
    ) -> None:
        self.device = device
        self.period_frames = period_frames
        self.buffer_frames = buffer_frames
        self.retry_interval = retry_interval
        self.retry_max = max(retry_max, retry_interval)
        self._retry_delay = retry_interval
        self._last_failure = ""  # why the last reopen failed, logged once per distinct reason
        self._requested = (period_frames, max(2, round(buffer_frames / period_frames)))
        self._clock = clock
        self._sleep = sleep
        self._factory = pcm_factory
        self._pcm: Any = None
        self._lock = threading.Lock()  # guards the counters for snapshots from other threads
        self.underruns = 0
        self.device_errors = 0
        self.reopen_attempts = 0
        self.reopens = 0
        self._timestamped = False
        self._tstamp_ok = False
        self._delay: PcmDelay | None = None
        self._reading = ""
        self._lost = False  # the device was open once and went away
        self._next_retry = 0.0
        self._playing = False  # frames written since the last open/drop
        self._virtual_end = 0.0  # clockless pacing: when the audio written would have played
        self._vanished = 0
        self._clockless = False

    # -- state -----------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        return f"ALSA {self.device}"

    @property
    def opened(self) -> bool:
        """True while the PCM is open and usable."""
        return self._pcm is not None

    def counters(self) -> AlsaCounters:
        """Counters as plain values; callable from any thread."""
        with self._lock:
            return AlsaCounters(
                opened=self._pcm is not None,
                underruns=self.underruns,
                device_errors=self.device_errors,
                reopen_attempts=self.reopen_attempts,
                reopens=self.reopens,
                timestamped=self._timestamped,
                clockless=self._clockless,
                delay_reading=self._reading,
            )

    # -- open / close ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the PCM; raises OutputError (the daemon's start-up check)."""
        import alsaaudio

        factory = self._factory or alsaaudio.PCM
        period, periods = self._requested
        try:
            pcm = factory(
                type=alsaaudio.PCM_PLAYBACK,
                mode=alsaaudio.PCM_NORMAL,
                device=self.device,
                rate=RATE,
                channels=CHANNELS,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=period,
                periods=periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            raise OutputError(f"cannot open ALSA device {self.device!r}: {exc}") from exc
        try:
            info = pcm.info()
            self.buffer_frames = int(info.get("buffer_size", self.buffer_frames))
            self.period_frames = int(info.get("period_size", self.period_frames))
        except alsaaudio.ALSAAudioError as exc:
            pcm.close()
            raise OutputError(f"ALSA device {self.device!r} unusable: {exc}") from exc
        try:
            pcm.set_tstamp_mode(alsaaudio.PCM_TSTAMP_ENABLE)
            pcm.set_tstamp_type(alsaaudio.PCM_TSTAMP_TYPE_MONOTONIC)
            self._tstamp_ok = True
        except (alsaaudio.ALSAAudioError, RuntimeError) as exc:
            # Some plugins refuse the sw_params; avail() still gives the depth, a bit later.
            logger.info("ALSA %s: no hardware timestamps (%s); using avail()", self.device, exc)
            self._tstamp_ok = False
        self._delay = PcmDelay.attach(pcm, self.device)
        if self._delay is None:
            logger.info("ALSA %s: no snd_pcm_delay through pyalsaaudio; using avail()", self.device)
        with self._lock:
            self._pcm = pcm
        self._playing = False
        self._vanished = 0
        self._clockless = False
        self._virtual_end = 0.0

    def note_failure(self, reason: str) -> None:
        """An `open()` failed (at start-up): schedule the first retry, remember why."""
        self._last_failure = reason
        self._next_retry = self._clock() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.retry_max)

    def reopen_if_due(self) -> bool:
        """After a loss: try to open again when the retry time has come. True when open."""
        if self._pcm is not None:
            return True
        now = self._clock()
        if now < self._next_retry:
            return False
        delay = self._retry_delay
        self._next_retry = now + delay
        self._retry_delay = min(delay * 2, self.retry_max)
        with self._lock:
            self.reopen_attempts += 1
        try:
            self.open()
        except OutputError as exc:
            reason = str(exc)
            if reason != self._last_failure and self._last_failure:
                logger.warning("%s; still retrying, at most every %.0f s", reason, self.retry_max)
            else:
                logger.debug("%s; next try in %.0f s", reason, delay)
            self._last_failure = reason
            return False
        with self._lock:
            self.reopens += 1
        self._lost = False
        self._retry_delay = self.retry_interval
        self._last_failure = ""
        logger.warning("ALSA %s is back: playback resumes", self.device)
        return True

    def stop(self) -> None:
        """Drop what is queued (flush, pause, end of stream); the next write re-prepares."""
        pcm = self._pcm
        self._playing = False
        self._virtual_end = 0.0
        if pcm is None:
            return
        try:
            pcm.drop()
        except Exception as exc:
            self._device_lost(exc)

    def close(self) -> None:
        """Release the device without waiting for the queue to drain."""
        self._delay = None  # its handle dies with the PCM
        with self._lock:
            pcm, self._pcm = self._pcm, None
        if pcm is not None:
            with contextlib.suppress(Exception):
                pcm.drop()  # pyalsaaudio's close() drains first: make that instant
            try:
                pcm.close()
            except Exception as exc:
                logger.debug("ALSA %s: close failed: %s", self.device, exc)

    # -- audio -----------------------------------------------------------------------------------

    def write(self, pcm: npt.NDArray[np.int16]) -> None:
        """Write frames, blocking while the device is full; losses are handled, not raised."""
        device = self._pcm
        frames = len(pcm)
        if device is None or frames == 0:
            return
        data = pcm.astype("<i2", copy=False).tobytes()
        rewrites = 0
        while data:
            try:
                written = int(device.write(data))
            except Exception as exc:  # ALSAAudioError: unplugged, I/O error, bad state
                self._device_lost(exc)
                return
            if written == -errno.EPIPE:
                # Underrun: pyalsaaudio has prepared the PCM again but dropped this block.
                with self._lock:
                    self.underruns += 1
                rewrites += 1
                if rewrites > 2:
                    self._device_lost(OSError(errno.EPIPE, "repeated underruns"))
                    return
                continue
            if written < 0:
                self._device_lost(OSError(-written, "write failed"))
                return
            data = data[written * FRAME_BYTES :]
        self._playing = True
        self._pace(frames)

    def delay_frames(self) -> int:
        """Frames written but not yet heard, now."""
        return self.measure()[1]

    def measure(self) -> tuple[float, int]:
        """(now, frames queued ahead of the next write at `now`), both at the same instant."""
        device = self._pcm
        if device is None:
            return self._clock(), 0
        try:
            state = int(device.state())
            if state == STATE_DISCONNECTED:
                raise OSError(errno.ENODEV, "device disconnected")
            reader = self._delay
            if reader is not None and state == STATE_RUNNING:
                now = self._clock()
                delay = reader()
                if delay is not None and delay <= 4 * self.buffer_frames:
                    self._timestamped = True
                    self._reading = DELAY
                    return now, self._with_virtual(now, max(0, delay))
            if self._tstamp_ok and state == STATE_RUNNING:
                sec, nsec, avail = device.htimestamp()
                now = self._clock()
                stamp = sec + nsec * 1e-9
                if 0 <= avail <= self.buffer_frames and abs(now - stamp) < TSTAMP_SLACK:
                    queued = self.buffer_frames - int(avail)
                    delay = queued - round(max(0.0, now - stamp) * RATE)
                    self._timestamped = True
                    self._reading = HTIMESTAMP
                    return now, self._with_virtual(now, max(0, delay))
            now = self._clock()
            avail = int(device.avail())
        except Exception as exc:
            self._device_lost(exc)
            return self._clock(), 0
        self._timestamped = False
        self._reading = AVAIL
        if avail < 0:
            if avail == -errno.EPIPE or state == STATE_XRUN:
                # Ran dry since the last write; the next write recovers and counts it.
                return now, 0
            if state in (STATE_SETUP, STATE_PREPARED) and avail == -errno.EBADFD:
                return now, 0  # after drop(): nothing queued, the next write prepares
            self._device_lost(OSError(-avail, "avail failed"))
            return now, 0
        if state != STATE_RUNNING:
            return now, 0
        return now, self._with_virtual(now, max(0, self.buffer_frames - avail))

    # -- internals -------------------------------------------------------------------------------

    def _with_virtual(self, now: float, queued: int) -> int:
        if not self._clockless:
            return queued
        return max(queued, round((self._virtual_end - now) * RATE))

    def _pace(self, frames: int) -> None:
        """Detect devices that swallow audio instantly and hold them to real time."""
        now = self._clock()
        self._virtual_end = max(self._virtual_end, now) + frames / RATE
        if not self._clockless:
            device = self._pcm
            try:
                avail = int(device.avail()) if device is not None else -1
            except Exception:
                avail = -1
            # A real DAC still holds at least half of what was just written.
            if avail >= 0 and self.buffer_frames - avail < frames // 2:
                self._vanished += 1
                if self._vanished >= CLOCKLESS_AFTER:
                    self._clockless = True
                    logger.info("ALSA %s has no clock of its own: pacing it", self.device)
            else:
                self._vanished = 0
                return
        ahead = self._virtual_end - now - self.buffer_frames / RATE
        if self._clockless and ahead > 0:
            self._sleep(ahead)

    def _device_lost(self, exc: BaseException) -> None:
        if self._pcm is None:
            return
        logger.warning("ALSA %s failed (%s): closing it, will retry", self.device, exc)
        with self._lock:
            self.device_errors += 1
            if self._playing:
                self.underruns += 1  # the listener hears the DAC run dry
        self.close()
        self._lost = True
        self._playing = False
        self._next_retry = self._clock()  # first retry at once: most errors are momentary
        self._retry_delay = self.retry_interval
