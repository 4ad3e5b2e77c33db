"""NTP 64-bit fixed point: 32-bit seconds + 32-bit binary fraction (units of 2**-32 s).

RAOP senders stamp sync packets and timing replies with this format, but their
clock is not wall time (iOS uses an uptime-like clock with the 1900 epoch added,
pyatv starts near 1970), so raopd only ever takes differences between stamps.

Era rule: a 64-bit NTP value names an instant inside one 2**32-second era
(about 136 years). Conversions *to* NTP fold any input into that era, i.e. they
work modulo 2**64 (negative inputs and inputs past the era wrap, exactly like a
sender's counter does). Conversions *from* NTP return a value in
`[0, 2**32)` seconds, or `[0, 2**32 * 10**9)` ns. So
`ntp_to_ns(ns_to_ntp(ns)) == ns % NTP_ERA_NS` for every integer `ns`, and
`ntp_diff_ns` gives the signed distance between two stamps across the era
boundary.

The integer (ns) conversions round to nearest and are exact round trips in
the ns -> NTP -> ns direction (one NTP unit is 0.23 ns); NTP -> ns -> NTP is
within one ns. The float (seconds) conversions are limited by the float's
53-bit mantissa: about 1 us of resolution near 2**32 s.
"""

NTP_EPOCH_OFFSET = 2208988800
"""Seconds from 1900-01-01 (the NTP epoch) to 1970-01-01 (the Unix epoch)."""

NTP_FRACTION = 1 << 32
"""NTP units per second."""

NTP_MODULUS = 1 << 64
"""64-bit NTP values wrap here (the end of an era)."""

NTP_ERA_NS = (1 << 32) * 1_000_000_000
"""Length of one NTP era in nanoseconds."""

_NS_PER_S = 1_000_000_000
_MASK64 = NTP_MODULUS - 1


def _check(ntp: int) -> None:
    if not 0 <= ntp <= _MASK64:
        raise ValueError(f"NTP timestamp {ntp} is not a 64-bit unsigned value")


def ntp_to_seconds(ntp: int) -> float:
    """Seconds since the era start for a 64-bit NTP value, in [0, 2**32)."""
    _check(ntp)
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / NTP_FRACTION


def seconds_to_ntp(s: float) -> int:
    """The 64-bit NTP value nearest to `s` seconds, folded into one era (modulo 2**64)."""
    return round(s * NTP_FRACTION) & _MASK64


def ntp_to_ns(ntp: int) -> int:
    """Nanoseconds since the era start, rounded to nearest, in [0, NTP_ERA_NS)."""
    _check(ntp)
    # Integer maths throughout: float would lose ns precision after ~104 days.
    return ((ntp * _NS_PER_S + (1 << 31)) >> 32) % NTP_ERA_NS


def ns_to_ntp(ns: int) -> int:
    """The 64-bit NTP value nearest to `ns` nanoseconds, folded into one era."""
    return (((ns << 32) + _NS_PER_S // 2) // _NS_PER_S) & _MASK64


def ntp_diff_ns(a: int, b: int) -> int:
    """Signed a - b in nanoseconds, taken modulo the era so a wrap between them is harmless.

    The result lies in [-2**31 s, 2**31 s): stamps further apart than half an era
    cannot be told apart from ones that wrapped.
    """
    _check(a)
    _check(b)
    d = (a - b + (NTP_MODULUS >> 1)) % NTP_MODULUS - (NTP_MODULUS >> 1)
    # Round half away from zero symmetrically, so diff(a, b) == -diff(b, a).
    mag = (abs(d) * _NS_PER_S + (1 << 31)) >> 32
    return mag if d >= 0 else -mag
