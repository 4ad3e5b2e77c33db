"""The jitter buffer: RTP audio packets in, the same packets out in sequence order.

Theory of operation
-------------------
Packets are keyed by their 16-bit sequence number. `next_seq` is the next one to release.
Whenever it is present it is released at once, so a clean stream adds no delay here; timing
is the playout's job, downstream.

A packet that arrives beyond the highest one seen opens a *gap*: every sequence number in
between is missing. Each missing number is asked for again (a resend request) after
`resend_first_delay`, then every `resend_interval`, until `repair_window` after it was noticed
(minus `resend_last_margin`). Output stalls at a gap until it is repaired or its repair window
has passed; then the gap is released as a `Lost` run that tells the caller how many frames of
silence stand in for it (the RTP timestamps on both sides of the gap say exactly), so the
timeline keeps its length.

Anything at or behind `next_seq` is late (or a duplicate, if it was already released); a
packet already buffered is a duplicate. Resent packets count as duplicates when the original
came after all.

A packet more than `capacity` away from everything seen may mean the sender jumped (a restart
without FLUSH), or be a stray (forged or misrouted): it is held as a candidate, and the buffer
restarts only when a second packet follows it within `CONFIRM_SPAN`; a candidate that nothing
confirms is dropped and counted as `stray`. On a restart nothing is discarded: what is
buffered is released in order (its gaps as losses), then a `Lost` run marks the jump, so the
caller can give the gap up as silence where the timeline allows. A buffer stalled at a gap
with `capacity` packets behind it is *overfull*: the gap is given up at once (counted in
`lost` and `overfull`), never the buffered audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from enum import Enum
from typing import Generic, Protocol, TypeVar

from raopd.core.seq import seq_add, seq_diff


class Sequenced(Protocol):
    """What the buffer needs of a packet."""

    @property
    def seq(self) -> int: ...

    @property
    def rtptime(self) -> int: ...


P = TypeVar("P", bound=Sequenced)


class Insert(Enum):
    """What happened to an inserted packet."""

    NEW = "new"
    DUPLICATE = "duplicate"
    LATE = "late"
    STRAY = "stray"  # far from the stream: held until a second packet confirms a jump
    RESTART = "restart"


CONFIRM_SPAN = 64
"""A jump is confirmed by a packet at most this many sequence numbers after the candidate."""


@dataclass(frozen=True, slots=True)
class Lost:
    """A run of packets that were never repaired, between two known neighbours.

    `until_rtptime` is the RTP timestamp of the first packet after the run; the frames of
    silence that stand in for the run are from the end of the packet before it up to there.
    """

    first_seq: int
    count: int
    until_rtptime: int


@dataclass(slots=True)
class _Gap:
    detected: float
    next_request: float


@dataclass(slots=True)
class JitterStats:
    """Counters since the buffer was made (never reset by flushes)."""

    received: int = 0
    duplicates: int = 0
    late: int = 0
    missing: int = 0  # sequence numbers that were ever missing
    lost: int = 0  # missing ones released as silence
    overfull: int = 0  # of those, given up early because the buffer was full
    resend_requests: int = 0  # sequence numbers asked for again (counted per request)
    restarts: int = 0
    stray: int = 0  # packets far from the stream that nothing followed: dropped
    flushed: int = 0  # packets still buffered when the buffer was reset (FLUSH, end)


@dataclass(frozen=True, slots=True)
class JitterSettings:
    """Tunables; the defaults follow shairport-sync's resend timing."""

    capacity: int = 1024  # packets: about 8 s of audio at 352 frames each
    repair_window: float = 1.0  # seconds a gap may wait for repair before it is given up
    resend: bool = True
    resend_first_delay: float = 0.1  # reordering usually heals a gap sooner than this
    resend_interval: float = 0.25
    resend_last_margin: float = 0.1  # no request this close to giving up: it could not arrive


class JitterBuffer(Generic[P]):
    """Reorders packets by sequence number; see the module docstring."""

    def __init__(self, settings: JitterSettings | None = None) -> None:
        self.settings = settings or JitterSettings()
        self.stats = JitterStats()
        self._slots: dict[int, P] = {}
        self._gaps: dict[int, _Gap] = {}
        self._next_seq: int | None = None
        self._highest: int | None = None
        self._hint: tuple[int, int] | None = None
        # Recently given-up sequence numbers: a packet behind `next_seq` is late if it is one
        # of these, else a duplicate of a released one. Losses are rare, so this stays small.
        self._lost: set[int] = set()
        self._lost_order: deque[int] = deque()
        self._candidate: P | None = None  # a possible jump, until confirmed
        self._candidate_age = 0  # packets of the old stream since the candidate came
        self._pending: list[P | Lost] = []  # released by a restart, handed out first

    @property
    def next_seq(self) -> int | None:
        """The sequence number released next, or None before the first packet."""
        return self._next_seq

    def __len__(self) -> int:
        return len(self._slots)

    def set_repair_window(self, seconds: float) -> None:
        """Change how long gaps wait (the session ties it to the stream's latency)."""
        self.settings = replace(self.settings, repair_window=seconds)

    def set_timing(
        self,
        *,
        repair_window: float,
        resend_first_delay: float,
        resend_interval: float,
        resend_last_margin: float,
    ) -> None:
        """Repair window and resend timing (from the stream's latency budget)."""
        self.settings = replace(
            self.settings,
            repair_window=repair_window,
            resend_first_delay=resend_first_delay,
            resend_interval=resend_interval,
            resend_last_margin=resend_last_margin,
        )

    def reset(self, start_seq: int | None = None) -> None:
        """Forget everything (FLUSH). `start_seq` hints where the next stream begins."""
        self._drop_candidate()
        self.stats.flushed += len(self._slots) + sum(
            1 for item in self._pending if not isinstance(item, Lost)
        )
        self._pending.clear()
        self._slots.clear()
        self._gaps.clear()
        self._next_seq = None
        self._highest = None
        self._hint = None if start_seq is None else (start_seq, 0)
        self._lost.clear()
        self._lost_order.clear()

    def insert(self, packet: P, now: float) -> Insert:
        """Take one packet (original or resent)."""
        seq = packet.seq
        if self._next_seq is None:
            self._start(seq)
        assert self._next_seq is not None and self._highest is not None
        capacity = self.settings.capacity
        ahead = seq_diff(seq, self._next_seq)
        result = Insert.NEW
        if ahead < -capacity or seq_diff(seq, self._highest) >= capacity:
            # Far from everything seen: a jump, or a stray.
            candidate = self._candidate
            if candidate is None or not 0 < seq_diff(seq, candidate.seq) <= CONFIRM_SPAN:
                self._drop_candidate()
                self._candidate = packet
                return Insert.STRAY
            self._candidate = None
            self._restart(candidate)
            result = Insert.RESTART
            ahead = seq_diff(seq, self._next_seq)
        elif self._candidate is not None:
            self._candidate_age += 1
            if self._candidate_age > CONFIRM_SPAN:
                self._drop_candidate()  # the old stream went on: it was a stray
        if ahead < 0:
            if seq in self._lost:
                self.stats.late += 1
                return Insert.LATE
            self.stats.duplicates += 1
            return Insert.DUPLICATE
        if seq in self._slots:
            self.stats.duplicates += 1
            return Insert.DUPLICATE
        self.stats.received += 1
        self._slots[seq] = packet
        self._gaps.pop(seq, None)
        beyond = seq_diff(seq, self._highest)
        if beyond > 0:
            first_request = now + self.settings.resend_first_delay
            for offset in range(1, beyond):
                self._gaps[seq_add(self._highest, offset)] = _Gap(now, first_request)
            self.stats.missing += beyond - 1
            self._highest = seq
        return result

    def pop_ready(self, now: float) -> list[P | Lost]:
        """Release, in order, every packet that is due: present ones, and gaps given up on."""
        out: list[P | Lost] = self._pending
        self._pending = []
        if self._next_seq is None:
            return out
        while self._slots:
            seq = self._next_seq
            packet = self._slots.pop(seq, None)
            if packet is not None:
                out.append(packet)
                self._next_seq = (seq + 1) & 0xFFFF
                continue
            gap = self._gaps.get(seq)
            overfull = seq_diff(self._highest_or(seq), seq) >= self.settings.capacity
            if (
                gap is not None
                and now < gap.detected + self.settings.repair_window
                and not overfull
            ):
                break
            lost = self._give_up(seq)
            if overfull:
                self.stats.overfull += lost.count
            out.append(lost)
        return out

    def drain(self) -> list[P | Lost]:
        """Release everything buffered now, gaps as losses (end of stream)."""
        self._drop_candidate()
        return self.pop_ready(float("inf"))

    def resend_requests(self, now: float) -> list[tuple[int, int]]:
        """(first_seq, count) runs of missing packets to ask for again now."""
        settings = self.settings
        if not settings.resend or not self._gaps or self._next_seq is None:
            return []
        runs: list[tuple[int, int]] = []
        for seq in sorted(self._gaps, key=lambda s: seq_diff(s, self._next_seq or 0)):
            gap = self._gaps[seq]
            last_useful = gap.detected + settings.repair_window - settings.resend_last_margin
            if gap.next_request > now or now > last_useful:
                continue
            gap.next_request = now + settings.resend_interval
            self.stats.resend_requests += 1
            if runs and seq_add(runs[-1][0], runs[-1][1]) == seq:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((seq, 1))
        return runs

    def next_deadline(self) -> float | None:
        """When pop_ready or resend_requests next has something to do, if ever."""
        if not self._gaps or self._next_seq is None:
            return None
        settings = self.settings
        # The earliest give-up among all gaps: waking early costs nothing.
        deadlines = [min(g.detected for g in self._gaps.values()) + settings.repair_window]
        if settings.resend:
            for gap in self._gaps.values():
                last_useful = gap.detected + settings.repair_window - settings.resend_last_margin
                if gap.next_request <= last_useful:
                    deadlines.append(gap.next_request)
        return min(deadlines) if deadlines else None

    def _start(self, seq: int) -> None:
        start = seq
        if self._hint is not None and 0 < seq_diff(seq, self._hint[0]) < 64:
            # The first packets of the stream were lost: RECORD/FLUSH said where it starts.
            start = self._hint[0]
        self._hint = None
        self._next_seq = start
        self._highest = seq_add(start, -1)

    def _restart(self, first: P) -> None:
        """Continue at the confirmed jump `first`: release what is buffered, then mark the jump."""
        self.stats.restarts += 1
        released = self.pop_ready(float("inf"))  # gaps before the jump cannot be repaired now
        end = self._next_seq if self._next_seq is not None else first.seq
        skipped = seq_diff(first.seq, end)
        released.append(Lost(end, max(0, skipped), first.rtptime))
        self._pending = released
        self._slots.clear()
        self._gaps.clear()
        self._lost.clear()
        self._lost_order.clear()
        self._next_seq = first.seq
        self._highest = first.seq
        self._slots[first.seq] = first
        self.stats.received += 1

    def _drop_candidate(self) -> None:
        if self._candidate is not None:
            self.stats.stray += 1
            self._candidate = None
        self._candidate_age = 0

    def _highest_or(self, seq: int) -> int:
        return self._highest if self._highest is not None else seq

    def _give_up(self, seq: int) -> Lost:
        """Release the run of missing packets starting at `seq` as a loss."""
        count = 0
        cursor = seq
        while cursor not in self._slots:
            self._gaps.pop(cursor, None)
            self._mark_lost(cursor)
            cursor = seq_add(cursor, 1)
            count += 1
        self.stats.lost += count
        self._next_seq = cursor
        return Lost(seq, count, self._slots[cursor].rtptime)

    def _mark_lost(self, seq: int) -> None:
        self._lost.add(seq)
        self._lost_order.append(seq)
        if len(self._lost_order) > self.settings.capacity:
            self._lost.discard(self._lost_order.popleft())
