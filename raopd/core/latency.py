"""The latency budget: how a sender's latency is shared out between raopd's stages.

A sender allows L seconds from producing a frame to that frame being heard (its sync
packets' latency + 11025 frames, clamped to the SDP's min/max: ClockEstimate.latency_frames).
Between a packet's arrival and its frame being heard, raopd spends:

    batch delay B       the audio socket is read in batches (wake-ups cost CPU)
    repair window W     how long a gap may hold up the audio behind it (resends)
    output lead         the device buffer kept full to F frames, written W_out at a time
    safety              scheduling noise on a loaded machine

so B + W + (F + W_out) / rate + safety must fit in L, or audio reaches the output after it
was due (an underflow). The rule (docs/latency.md explains it):

    B     = L / 8, within [MIN_BATCH_DELAY, the adapter's maximum (250 ms)]
    F     = L / 4 in frames, at most the device buffer
    W_out = min(ALSA period, F / 2), at least MIN_WRITE_FRAMES
    W     = L - B - (F + W_out) / rate - SAFETY, within [MIN_REPAIR_WINDOW, 4 s]

A 2 s sender (Apple, pyatv, raopd's own) gets exactly what it always had: 250 ms batches, a
full device buffer written a period at a time, ~1.5 s of repair. A 250 ms sender (PipeWire:
sync latency 0) gets 31 ms batches, ~62 ms of device buffer written 31 ms at a time, and
~95 ms of repair with resend timing scaled to fit. Nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from raopd.core.audio_format import SAMPLE_RATE

__all__ = [
    "MIN_BATCH_DELAY",
    "MIN_REPAIR_WINDOW",
    "MIN_WRITE_FRAMES",
    "SAFETY",
    "LatencyBudget",
    "latency_budget",
    "output_lead",
]

MIN_BATCH_DELAY = 0.01
"""Seconds: below this, batching saves nothing over per-datagram wake-ups."""

MIN_WRITE_FRAMES = 256
"""Frames: the smallest write to the device (5.8 ms)."""

MIN_REPAIR_WINDOW = 0.02
"""Seconds: even the tightest budget waits this long for a reordered packet."""

MAX_REPAIR_WINDOW = 4.0
"""Seconds: the longest a gap may hold the audio behind it, whatever the latency."""

SAFETY = 0.03
"""Seconds left over for scheduling noise (a loaded 2-core machine, a busy Pi)."""

# Resend timing for a roomy window (shairport-sync's): first request after 100 ms, then
# every 250 ms, none in the last 100 ms. A small window scales these down to fit.
_RESEND_FIRST = 0.1
_RESEND_INTERVAL = 0.25
_RESEND_LAST = 0.1


@dataclass(frozen=True, slots=True)
class LatencyBudget:
    """One stream's shares of its sender's latency (see the module docstring)."""

    latency: float  # L, seconds
    batch_delay: float  # B, seconds
    output_fill_frames: int  # F
    write_frames: int  # W_out
    repair_window: float  # W, seconds
    resend_first_delay: float
    resend_interval: float
    resend_last_margin: float


def output_lead(latency: float, buffer_frames: int, period_frames: int) -> tuple[int, int]:
    """(F, W_out): how full to keep the device buffer, and how much to write at a time."""
    fill = max(MIN_WRITE_FRAMES, min(buffer_frames, round(latency / 4 * SAMPLE_RATE)))
    write = max(MIN_WRITE_FRAMES, min(period_frames, fill // 2))
    return fill, write


def latency_budget(
    latency: float,
    *,
    max_batch_delay: float,
    buffer_frames: int,
    period_frames: int,
) -> LatencyBudget:
    """The budget for a sender that allows `latency` seconds.

    `max_batch_delay` is the adapter's longest batching (0 when it does not batch, as in
    replay); `buffer_frames` and `period_frames` are the output device's (0 for a file,
    which has no lead).
    """
    latency = max(0.0, latency)
    batch = min(max_batch_delay, max(MIN_BATCH_DELAY, latency / 8))
    if buffer_frames > 0:
        fill, write = output_lead(latency, buffer_frames, period_frames)
        lead = (fill + write) / SAMPLE_RATE
    else:
        fill, write, lead = 0, 0, 0.0
    window = latency - batch - lead - SAFETY
    window = min(MAX_REPAIR_WINDOW, max(MIN_REPAIR_WINDOW, window))
    return LatencyBudget(
        latency=latency,
        batch_delay=batch,
        output_fill_frames=fill,
        write_frames=write,
        repair_window=window,
        resend_first_delay=min(_RESEND_FIRST, window / 4),
        resend_interval=min(_RESEND_INTERVAL, window / 2),
        resend_last_margin=min(_RESEND_LAST, window / 4),
    )
