"""Hardware volume: the AirPlay slider drives an ALSA mixer control instead of software gain.

With `mixer_control` set, the sample path stays bit-exact (software gain 1.0) and the slider is
mapped onto the control's own dB range, read with `getrange(units=VOLUME_UNITS_DB)` (pyalsaaudio
0.11 reports hundredths of a dB, as alsa-lib does). The curve is the software one
(`core/volume.airplay_to_db`): `volume_range_db` defaults to the control's whole range and
`volume_max_db` (the cap) to its maximum. Mute uses the control's switch when it has one, else
its minimum. A control without dB information is driven in percent, linear in dB over the range.

Called from the event loop: a mixer write is one control ioctl, far below a millisecond.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from raopd.core.volume import Curve, airplay_to_db
from raopd.errors import OutputError

logger = logging.getLogger(__name__)

MixerFactory = Callable[..., Any]

DEFAULT_RANGE_DB = 60.0  # for percent-only controls, as in software


class HardwareMixer:
    """One ALSA simple mixer control, set from AirPlay volumes."""

    def __init__(
        self,
        control: str,
        device: str = "default",
        *,
        curve: Curve = "tapered",
        range_db: float | None = None,
        max_volume_db: float | None = None,
        ignore_volume: bool = False,
        mixer_factory: MixerFactory | None = None,
    ) -> None:
        self.control = control
        self.device = device
        self.curve = curve
        self.ignore_volume = ignore_volume
        self._range_db = range_db
        self._max_db = max_volume_db
        self._factory = mixer_factory
        self._mixer: Any = None
        self.db_limits: tuple[float, float] | None = None
        """The control's (min, max) in dB, None when it only offers percent."""
        self.has_switch = False
        self.last_db: float | None = None
        self.last_percent: int | None = None

    def open(self) -> None:
        """Find the control; raises OutputError when it does not exist."""
        import alsaaudio

        factory = self._factory or alsaaudio.Mixer
        try:
            mixer = factory(control=self.control, device=self.device)
        except alsaaudio.ALSAAudioError as exc:
            raise OutputError(
                f"cannot open ALSA mixer control {self.control!r} on {self.device!r}: {exc}"
            ) from exc
        try:
            low, high = mixer.getrange(units=alsaaudio.VOLUME_UNITS_DB)
            self.db_limits = (low / 100.0, high / 100.0) if high > low else None
        except (alsaaudio.ALSAAudioError, TypeError):
            self.db_limits = None
        try:
            self.has_switch = "Mute" in mixer.switchcap() or "Playback Mute" in mixer.switchcap()
        except alsaaudio.ALSAAudioError:
            self.has_switch = False
        self._mixer = mixer

    def target_db(self, volume: float) -> float:
        """The control's level in dB for an AirPlay volume (-inf: mute)."""
        low, high = self.db_limits or (-DEFAULT_RANGE_DB, 0.0)
        top = high if self._max_db is None else min(high, self._max_db)
        span = self._range_db if self._range_db is not None else top - low
        db = airplay_to_db(
            volume,
            self.curve,
            range_db=span,
            max_volume_db=top,
            ignore_volume=self.ignore_volume,
        )
        return db if db == -math.inf else max(low, min(high, db))

    def set_volume(self, volume: float) -> None:
        """Apply an AirPlay volume; a failing control is logged, never raised."""
        import alsaaudio

        mixer = self._mixer
        if mixer is None:
            return
        db = self.target_db(volume)
        try:
            if self.has_switch:
                mixer.setmute(db == -math.inf)
            if self.db_limits is not None:
                low = self.db_limits[0]
                level = low if db == -math.inf else db
                mixer.setvolume(round(level * 100), units=alsaaudio.VOLUME_UNITS_DB)
                self.last_db = level
            else:
                low, high = -DEFAULT_RANGE_DB, 0.0
                level = low if db == -math.inf else db
                percent = round(100 * (level - low) / (high - low))
                mixer.setvolume(max(0, min(100, percent)))
                self.last_percent = max(0, min(100, percent))
        except alsaaudio.ALSAAudioError as exc:
            logger.warning("ALSA mixer %s: cannot set volume: %s", self.control, exc)

    def close(self) -> None:
        if self._mixer is not None:
            self._mixer.close()
            self._mixer = None
