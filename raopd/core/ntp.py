"""NTP 64-bit fixed point (32-bit seconds, 32-bit binary fraction) <-> seconds and nanoseconds.

Senders' "NTP" clocks are rarely wall time (iOS uses an uptime-like clock with the 1900 epoch
offset added), so raopd only ever uses differences of these values. Integer nanoseconds are the
lossless form; floats of absolute NTP seconds keep only about 0.5 us of resolution.
"""

NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970)."""

_FRACTION = 1 << 32
_NS = 1_000_000_000


def ntp_to_seconds(ntp: int) -> float:
    """NTP 64-bit value -> seconds since its epoch (float; about 0.5 us resolution today)."""
    return ntp / _FRACTION


def seconds_to_ntp(seconds: float) -> int:
    """Seconds since the NTP epoch -> 64-bit NTP value (rounded to the nearest 2**-32 s)."""
    return round(seconds * _FRACTION) % (1 << 64)


def ntp_to_ns(ntp: int) -> int:
    """NTP 64-bit value -> integer nanoseconds since its epoch (truncated, exact to 1 ns)."""
    return (ntp >> 32) * _NS + (((ntp & 0xFFFFFFFF) * _NS) >> 32)


def ns_to_ntp(ns: int) -> int:
    """Integer nanoseconds since the NTP epoch -> 64-bit NTP value (rounded)."""
    seconds, rest = divmod(ns, _NS)
    fraction = (rest * _FRACTION + _NS // 2) // _NS
    return ((seconds << 32) + fraction) % (1 << 64)
