"""AirPlay volume -> attenuation (dB) -> linear gain. Pure functions.

AirPlay sends a slider position, not decibels: -30.0 (bottom) ... 0.0 (top), and -144.0 for mute
(protocol.md §7.4). Two curves map it to attenuation:

* `flat`: linear in dB over `range_db`; bottom = -range_db. Default range 60 dB rather than the
  full 96 dB of 16 bits: with 96 dB, the lower half of the slider (-48 dB and below) is
  inaudible at any sane listening level, so half the slider would be dead.
* `tapered` (default): every halving of the slider position lowers the level by 10 dB, roughly
  "half as loud" each time (the DASL taper). Half slider = -10 dB, quarter = -20 dB; the bottom
  third of the slider stays usable, which a flat curve does not give. Floored at -range_db.

`max_volume_db` is the level at the top of the slider (e.g. -6 for a loud amplifier): the whole
curve shifts down so every slider position stays meaningful. `ignore_volume` pins the level to
`max_volume_db` whatever the sender says (mute included), for setups with a hardware knob.
"""

import math
from typing import Literal

MUTE = -144.0
"""The AirPlay volume that means mute."""
SLIDER_MIN = -30.0

Curve = Literal["flat", "tapered"]


def airplay_to_db(
    volume: float,
    curve: Curve = "tapered",
    *,
    range_db: float = 60.0,
    max_volume_db: float = 0.0,
    ignore_volume: bool = False,
) -> float:
    """Attenuation in dB (<= max_volume_db) for an AirPlay volume; -inf for mute."""
    if ignore_volume:
        return max_volume_db
    if volume <= MUTE or math.isnan(volume):
        return -math.inf
    position = (min(0.0, max(SLIDER_MIN, volume)) - SLIDER_MIN) / -SLIDER_MIN  # 0 ... 1
    if curve == "flat":
        db = -range_db * (1.0 - position)
    elif position <= 0.0:
        db = -range_db
    else:
        db = max(-range_db, 10.0 * math.log2(position))
    return db + max_volume_db


def db_to_gain(db: float) -> float:
    """Linear amplitude gain for `db` (0 dB -> exactly 1.0, -inf -> 0.0)."""
    if db == 0.0:
        return 1.0
    if db == -math.inf:
        return 0.0
    return float(10.0 ** (db / 20.0))


def volume_to_gain(
    volume: float,
    curve: Curve = "tapered",
    *,
    range_db: float = 60.0,
    max_volume_db: float = 0.0,
    ignore_volume: bool = False,
) -> float:
    """Linear gain for an AirPlay volume; exactly 1.0 at the top with max_volume_db = 0."""
    return db_to_gain(
        airplay_to_db(
            volume,
            curve,
            range_db=range_db,
            max_volume_db=max_volume_db,
            ignore_volume=ignore_volume,
        )
    )
