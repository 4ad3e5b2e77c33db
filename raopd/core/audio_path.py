"""AudioPath: one stream's audio from RTP packets to contiguous PCM blocks.

Sans-I/O like the session that owns it (one per ANNOUNCE, so nothing outlives its stream):
packets go in with `receive(packet, now)`, `release(now)` returns `AudioReady` events,
`resend_requests(now)` says what to ask for again, `next_deadline()` when to call again.

    RTP packet -> flush filter -> JitterBuffer (reorder, dedupe, resends, restarts)
      -> pacing (drop what is far ahead of real time) -> AES-CBC decrypt -> decode
      -> AudioReady, contiguous in RTP time

The timeline keeps its length: wherever audio is missing (a gap never repaired, an
undecodable packet, a confirmed jump of the sender's stream) a silent `AudioReady(lost=True)`
of exactly the missing length stands in, up to `MAX_FILL_FRAMES` (a bigger gap is a new
timeline, which the playout aligns on its own). An undecodable packet is silence of its
nominal length at once, so a stream of nothing but undecodable packets still keeps time.

Nothing is dropped silently: every discarded packet or frame is counted in `AudioStats` (or
the jitter buffer's `JitterStats`) by reason, and undecodable packets are reported by a
WARNING at most every `WARN_INTERVAL` seconds that names the sender and the reasons.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from raopd.core.audio_format import OUTPUT_CHANNELS, SAMPLE_DTYPE, SAMPLE_RATE
from raopd.core.clock import ClockEstimate
from raopd.core.events import AudioReady
from raopd.core.jitter import JitterBuffer, JitterSettings, JitterStats, Lost
from raopd.core.latency import LatencyBudget
from raopd.core.packets import AudioPacket
from raopd.core.seq import rtp_add, rtp_diff
from raopd.errors import ProtocolError
from raopd.media.crypto import PacketCipher
from raopd.media.decoder import DecodeError, Decoder, FrameFault

__all__ = ["MAX_AHEAD", "MAX_FILL_FRAMES", "WARN_INTERVAL", "AudioPath", "AudioStats"]

logger = logging.getLogger(__name__)

MAX_FILL_FRAMES = 5 * SAMPLE_RATE
"""A gap in RTP time larger than this is a new timeline, not missing audio to fill."""

MAX_AHEAD = 10.0
"""Seconds ahead of its due time beyond which audio is dropped (a sender far ahead of real
time): the playout would otherwise queue it without bound."""

# What the operator can do about a reason, where we know.
_HINTS = {
    "all-zero": "; PulseAudio's RAOP sink sends these in its PCM mode: set codec=ALAC",
}

WARN_INTERVAL = 10.0
"""Seconds between two warnings about undecodable packets from one stream."""


@dataclass(slots=True)
class AudioStats:
    """One stream's audio counters (the jitter buffer keeps its own, `JitterStats`)."""

    audio_packets: int = 0  # every audio datagram, resent or not
    resent_packets: int = 0
    flushed_packets: int = 0  # from before a flush point
    undecodable: int = 0  # packets replaced by silence of their nominal length
    undecodable_by_reason: Counter[str] = field(default_factory=Counter)
    paced_packets: int = 0  # dropped: due more than MAX_AHEAD from now
    frames_out: int = 0  # audio frames released (decoded)
    silent_frames_out: int = 0  # frames of silence standing in for missing audio
    overlap_frames: int = 0  # frames dropped as overlapping audio already released

    @property
    def replaced_packets(self) -> int:
        """Packets whose audio was not played as sent (undecodable or paced)."""
        return self.undecodable + self.paced_packets


class AudioPath:
    """One stream's jitter buffer, decryption, decoding and silence fill."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        frames_per_packet: int,
        cipher: PacketCipher | None = None,
        jitter: JitterSettings | None = None,
        label: str = "",
        max_ahead: float | None = MAX_AHEAD,
    ) -> None:
        self.decoder = decoder
        self.cipher = cipher
        self.frames_per_packet = frames_per_packet
        self.label = label  # "[session N] sender" for log lines
        # None: never pace (a file output writes as fast as audio comes, nothing queues).
        self.max_ahead = max_ahead
        self.stats = AudioStats()
        self.jitter: JitterBuffer[AudioPacket] = JitterBuffer(jitter)
        self.estimate: ClockEstimate | None = None
        self._flush_until: int | None = None
        self._next_rtptime: int | None = None
        # Set when audio went missing: the next block is preceded by silence up to its time.
        self._fill_pending = False
        self._out: list[AudioReady] = []
        self._warned_at: float | None = None
        self._unwarned: Counter[str] = Counter()

    @property
    def jitter_stats(self) -> JitterStats:
        return self.jitter.stats

    # ------------------------------------------------------------------ input

    def receive(self, packet: AudioPacket, now: float, *, resent: bool = False) -> None:
        """One audio packet (original or resent)."""
        self.stats.audio_packets += 1
        if resent:
            self.stats.resent_packets += 1
        if self._flush_until is not None and rtp_diff(packet.rtptime, self._flush_until) < 0:
            self.stats.flushed_packets += 1  # in flight from before the flush
            return
        self.jitter.insert(packet, now)

    def start_at(self, seq: int | None, rtptime: int) -> None:
        """Audio starts at (seq, rtptime) (RECORD or FLUSH): earlier audio is dropped."""
        self._flush_until = rtptime
        self._next_rtptime = rtptime
        self._fill_pending = False
        self.jitter.reset(start_seq=seq)

    def flush(self) -> None:
        """Forget everything buffered (FLUSH without a position)."""
        self.jitter.reset()
        self._next_rtptime = None
        self._fill_pending = False

    def use_budget(self, budget: LatencyBudget) -> None:
        """Repair window and resend timing from the stream's latency budget."""
        self.jitter.set_timing(
            repair_window=budget.repair_window,
            resend_first_delay=budget.resend_first_delay,
            resend_interval=budget.resend_interval,
            resend_last_margin=budget.resend_last_margin,
        )

    # ----------------------------------------------------------------- output

    def release(self, now: float) -> list[AudioReady]:
        """The audio that is ready, in order and contiguous."""
        for item in self.jitter.pop_ready(now):
            self._released(item, now)
        return self._take()

    def drain(self, now: float) -> list[AudioReady]:
        """Everything buffered, gaps given up (end of stream, end of a replay)."""
        for item in self.jitter.drain():
            self._released(item, now)
        self._warn(now, force=True)
        return self._take()

    def resend_requests(self, now: float) -> list[tuple[int, int]]:
        return self.jitter.resend_requests(now)

    def next_deadline(self) -> float | None:
        deadline = self.jitter.next_deadline()
        if self._unwarned and self._warned_at is not None:
            due = self._warned_at + WARN_INTERVAL
            deadline = due if deadline is None else min(deadline, due)
        return deadline

    def tick(self, now: float) -> None:
        """Timer work that is not a release: the rate-limited warning."""
        self._warn(now)

    def close(self, now: float) -> None:
        """The stream ended: report what the rate limit held back, forget the keys."""
        self._warn(now, force=True)
        self.cipher = None
        self.flush()

    # -------------------------------------------------------------- internals

    def _take(self) -> list[AudioReady]:
        out, self._out = self._out, []
        return out

    def _released(self, item: AudioPacket | Lost, now: float) -> None:
        if isinstance(item, Lost):
            self._fill_pending = True  # the next packet's timestamp says how much is missing
            return
        estimate, max_ahead = self.estimate, self.max_ahead
        if (
            estimate is not None
            and max_ahead is not None
            and estimate.local_time(item.rtptime) - now > max_ahead
        ):
            # Far ahead of real time: drop rather than queue without bound. The timeline
            # is not filled: the sender will get there, and what plays next is its audio.
            self.stats.paced_packets += 1
            return
        payload = item.payload
        try:
            if self.cipher is not None:
                try:
                    payload = self.cipher.decrypt(payload)
                except (ProtocolError, ValueError) as exc:
                    raise DecodeError(FrameFault.DECRYPT, f"cannot decrypt: {exc}") from exc
            pcm = self.decoder.decode(payload)
        except DecodeError as exc:
            self._undecodable(item, exc, now)
            return
        except ProtocolError as exc:
            self._undecodable(item, DecodeError(FrameFault.REJECTED, str(exc)), now)
            return
        self._emit(item.rtptime, pcm)

    def _undecodable(self, item: AudioPacket, exc: DecodeError, now: float) -> None:
        reason = exc.fault.value
        self.stats.undecodable += 1
        self.stats.undecodable_by_reason[reason] += 1
        self._unwarned[reason] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s undecodable packet %d: %s", self.label, item.seq, exc)
        # Silence of the packet's nominal length in its place, as for a lost packet.
        self._fill_pending = True
        self._emit(item.rtptime, _silence(self.frames_per_packet), lost=True)
        self._warn(now)

    def _warn(self, now: float, *, force: bool = False) -> None:
        if not self._unwarned:
            return
        if not force and self._warned_at is not None and now - self._warned_at < WARN_INTERVAL:
            return
        count = sum(self._unwarned.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._unwarned.items()))
        since = "" if self._warned_at is None else f" in the last {now - self._warned_at:.0f} s"
        hint = "".join(_HINTS[reason] for reason in sorted(self._unwarned) if reason in _HINTS)
        logger.warning(
            "%s sent %d undecodable audio packet%s%s (%s), played as silence%s",
            self.label,
            count,
            "" if count == 1 else "s",
            since,
            reasons,
            hint,
        )
        self._unwarned.clear()
        self._warned_at = now

    def _emit(self, rtptime: int, pcm: npt.NDArray[np.int16], *, lost: bool = False) -> None:
        expected = self._next_rtptime
        if expected is not None:
            ahead = rtp_diff(rtptime, expected)
            if self._fill_pending and 0 < ahead <= MAX_FILL_FRAMES:
                self.stats.silent_frames_out += ahead
                self._out.append(AudioReady(expected, _silence(ahead), lost=True))
            elif -MAX_FILL_FRAMES <= ahead < 0:
                # Overlaps audio already out: keep only the new part.
                self.stats.overlap_frames += min(len(pcm), -ahead)
                pcm = pcm[-ahead:]
                rtptime = expected
                if len(pcm) == 0:
                    return
        self._fill_pending = lost
        frames = len(pcm)
        if lost:
            self.stats.silent_frames_out += frames
        else:
            self.stats.frames_out += frames
        self._next_rtptime = rtp_add(rtptime, frames)
        self._out.append(AudioReady(rtptime, pcm, lost=lost))


def _silence(frames: int) -> npt.NDArray[np.int16]:
    return np.zeros((frames, OUTPUT_CHANNELS), SAMPLE_DTYPE)
