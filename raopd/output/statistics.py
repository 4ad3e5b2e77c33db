"""The periodic statistics line, with shairport-sync's names where they mean the same.

`format_statistics` is pure: it takes the output thread's snapshot and the playing session's
counters (any may be missing) and returns one line, e.g.

    Sync Error ms: +0.04, Net Sync PPM: +12.0, All Sync PPM: +9.8, Source Drift PPM: +21.3,
    Packets: 1200, Missing: 2, Late: 0, Resend Reqs: 2, Resent: 2, Lost: 0, Undecodable: 0,
    Dropped: 0, Flushed: 0, Refused: 0, Min DAC Queue: 2914, Underruns: 0, Underflows: 0,
    Resyncs: 0, Realigned: 0, Gain dB: 0.0, Bit-exact: yes

Meanings: Sync Error = median lateness of the frame being written (+ = late); Net Sync PPM =
the correction being applied now (+ = dropping frames); All Sync PPM = net frames dropped
minus inserted per million played since the stream began; Source Drift PPM = sender clock versus
local clock; Packets/Missing/Late/Resend Reqs = the jitter buffer's counters; Lost = packets never
repaired and Undecodable = packets that could not be decoded, both played as silence of their
length; Dropped = packets discarded otherwise (late, stray, far ahead of real time); Flushed =
packets a sender's FLUSH (or the stream's end) discarded; Refused = datagrams not from the
sender or not parseable; Min DAC Queue = the smallest ALSA
queue (frames) since the previous line; Underruns = DAC xruns and device losses; Underflows =
times audio was due but had not arrived; Resyncs = jumps because the error passed the resync
threshold; Realigned = realignments after an underrun (the gap was heard already, so the next
frame is put back on its time at once instead of being slewed to); Bit-exact = every block
since the previous line carried the sender's samples untouched and no packet was replaced or
dropped in that time;
Corrections = frames inserted/dropped this stream; DAC Drift PPM = the DAC's clock against the
sender's timeline as the corrections imply (+ = the DAC is slow); Band ms = the tolerance band in
use (the setting, or wider for a noisy delay reading); Late Syncs = sync packets stamped later
than the anchor line (ignored), Stamp Spread ms = how late the sender's stamps run, Anchor Resets
= anchor restarts (FLUSH, a jump the sender meant), Timing Rejected = timing replies inconsistent
with the clock estimate (not used), Clock Steps = restarts of the clock estimate on a confirmed
step of the sender's clock.
"""

from __future__ import annotations

import math

from raopd.core.audio_path import AudioStats
from raopd.core.clock import ClockEstimate, ClockStats
from raopd.core.jitter import JitterStats
from raopd.core.session import SessionStats
from raopd.output.player import OutputSnapshot


def _signed(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def format_statistics(
    output: OutputSnapshot | None,
    audio: AudioStats | None = None,
    jitter: JitterStats | None = None,
    estimate: ClockEstimate | None = None,
    clock: ClockStats | None = None,
    *,
    session: SessionStats | None = None,
    replaced_in_interval: int = 0,
) -> str:
    """One statistics line; fields whose source is missing read `n/a`.

    `replaced_in_interval`: packets replaced or dropped since the previous line (see
    `not_as_sent`); any makes the interval not bit-exact.
    """
    fields: list[tuple[str, str]] = []
    playout = output.playout if output is not None else None
    fields.append(("Sync Error ms", _signed(playout.sync_error_ms if playout else None, 2)))
    fields.append(("Net Sync PPM", _signed(playout.correction_ppm if playout else None, 1)))
    fields.append(("All Sync PPM", _signed(playout.all_sync_ppm if playout else None, 1)))
    drift = estimate.drift_ppm if estimate is not None else None
    if drift is None and playout is not None:
        drift = playout.source_drift_ppm
    fields.append(("Source Drift PPM", _signed(drift, 1)))
    if jitter is not None:
        fields += [
            ("Packets", str(jitter.received)),
            ("Missing", str(jitter.missing)),
            ("Late", str(jitter.late)),
            ("Resend Reqs", str(jitter.resend_requests)),
        ]
    if audio is not None:
        fields.append(("Resent", str(audio.resent_packets)))
    if jitter is not None:
        fields.append(("Lost", str(jitter.lost)))
    if audio is not None:
        fields.append(("Undecodable", str(audio.undecodable)))
    if audio is not None and jitter is not None:
        dropped = jitter.late + jitter.stray + audio.paced_packets
        fields.append(("Dropped", str(dropped)))
        fields.append(("Flushed", str(jitter.flushed + audio.flushed_packets)))
    if session is not None:
        fields.append(("Refused", str(session.foreign_datagrams + session.bad_datagrams)))
    if output is not None:
        queue = output.interval_min_dac_queue
        fields.append(("Min DAC Queue", "n/a" if queue is None else str(queue)))
        sink = output.sink
        fields.append(("Underruns", str(sink.underruns) if sink is not None else "0"))
        if sink is not None and (sink.device_errors or not sink.opened):
            fields.append(("Device Errors", str(sink.device_errors)))
            fields.append(("Reopens", f"{sink.reopens}/{sink.reopen_attempts}"))
            fields.append(("Device", "open" if sink.opened else "absent"))
        assert playout is not None
        fields.append(("Underflows", str(playout.underflows)))
        fields.append(("Resyncs", str(playout.resyncs)))
        fields.append(("Realigned", str(playout.realignments)))
        fields.append(("Corrections", f"+{playout.frames_inserted}/-{playout.frames_dropped}"))
        fields.append(("DAC Drift PPM", _signed(playout.drift_ppm, 1)))
        fields.append(("Band ms", f"{playout.band_ms:.2f}"))
        gain_db = 20 * math.log10(output.gain) if output.gain > 0 else -math.inf
        fields.append(("Gain dB", "mute" if gain_db == -math.inf else f"{gain_db:.1f}"))
        exact = output.interval_bit_exact and not replaced_in_interval
        fields.append(("Bit-exact", "yes" if exact else "no"))
    if clock is not None:
        fields += [
            ("Late Syncs", str(clock.syncs_late)),
            ("Stamp Spread ms", f"{clock.stamp_spread_ms:.1f}"),
            ("Anchor Resets", str(clock.anchor_resets)),
            ("Timing Rejected", str(clock.rejected)),
            ("Clock Steps", str(clock.steps)),
        ]
    return ", ".join(f"{name}: {value}" for name, value in fields)


def not_as_sent(audio: AudioStats, jitter: JitterStats) -> int:
    """Packets so far whose audio did not reach the output as sent (for `Bit-exact`)."""
    return jitter.lost + jitter.late + jitter.stray + audio.undecodable + audio.paced_packets
