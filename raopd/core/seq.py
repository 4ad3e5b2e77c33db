"""Serial-number arithmetic for 16-bit RTP sequence numbers and 32-bit RTP timestamps.

This is the only module that does wraparound maths: elsewhere, comparing two
sequence numbers or timestamps with `<` is a bug. The primitive is the signed
modular difference; every comparison derives from it (RFC 1982 style).
"""

SEQ_MODULUS = 1 << 16
RTP_MODULUS = 1 << 32


def seq_add(seq: int, n: int) -> int:
    """The 16-bit sequence number `n` steps after `seq` (n may be negative)."""
    return (seq + n) % SEQ_MODULUS


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in [-32768, 32767]: positive when `a` comes after `b`."""
    return (a - b + (SEQ_MODULUS >> 1)) % SEQ_MODULUS - (SEQ_MODULUS >> 1)


def seq_gt(a: int, b: int) -> bool:
    """True when sequence number `a` comes after `b`."""
    return seq_diff(a, b) > 0


def rtp_add(rtptime: int, n: int) -> int:
    """The 32-bit RTP timestamp `n` frames after `rtptime` (n may be negative)."""
    return (rtptime + n) % RTP_MODULUS


def rtp_diff(a: int, b: int) -> int:
    """Signed distance a - b in frames, in [-2**31, 2**31 - 1]."""
    return (a - b + (RTP_MODULUS >> 1)) % RTP_MODULUS - (RTP_MODULUS >> 1)


def rtp_gt(a: int, b: int) -> bool:
    """True when RTP timestamp `a` comes after `b`."""
    return rtp_diff(a, b) > 0
