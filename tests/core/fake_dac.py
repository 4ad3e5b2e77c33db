"""Virtual-time simulation of a sender, a network and a DAC around the real ClockSync + Playout.

Shared by tests/core/test_playout.py (60 s scenarios) and benchmarks/sync.py (10 min). It lives
under tests/ because it is a fake: nothing in raopd/ imports it.

Model (the local monotonic clock is the reference, `t` in seconds):

* `FakeSender`: its clock reads S(t) = epoch + t * (1 + ppm * 1e-6) (integer ns, NTP-era values so
  the 64-bit maths is exercised). It starts a stream at local `start` with RTP time `rtp0` (near
  the 2**32 wrap), produces frames at `rate` per second of *its* clock, sends a sync packet every
  second of its clock and answers timing requests. Frame R is meant to be heard at sender time
  S0 + (R - rtp0 + L) / rate (L = its 77175-frame latency + 11025). With `burst` set it imitates
  node-airtunes2: it sends in bursts `burst` seconds apart (each timer fires 0..2 ms late, so the
  burst phase wanders) and stamps a sync packet with the time of the burst that carries it, so
  every stamp is 0..`burst` s later than the frame it names.
* `FakeNetwork`: each direction adds `base` plus an independent uniform 0..jitter delay (seeded),
  so the two legs of an exchange are not symmetric.
* `FakeDac`: a FIFO drained at rate * (1 + ppm * 1e-6) of local time. `delay(now)` reports the
  queued frames as an integer, like ALSA; `write(now, pcm)` computes the true time every frame
  leaves. Audio frames carry their own index (left = low 16 bits, right = high 16 bits of
  rtptime - rtp0 + 1; silence = 0), so the DAC knows which frame it is playing.
* The output thread: wakes when the DAC queue is about to fall below `target` frames (plus a
  seeded wake-up lateness of up to 1 ms), pulls `period` frames and writes them.
"""

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from raopd.core.clock import ClockSync
from raopd.core.ntp import ns_to_ntp
from raopd.core.packets import SyncPacket, TimingPacket
from raopd.core.playout import Playout, PlayoutSettings
from raopd.core.seq import rtp_add, rtp_diff

RATE = 44100
SENDER_LATENCY = 77175
NS = 1_000_000_000


class FakeSender:
    """The sender's clock, stream and timing responder."""

    def __init__(
        self,
        ppm: float,
        start: float = 0.3,
        rtp0: int = (1 << 32) - 3 * RATE * 60,
        *,
        burst: float | None = None,
        seed: int = 0,
    ) -> None:
        self.ppm = ppm
        self.burst = burst
        self._burst_rng = np.random.default_rng(seed + 2000)
        # Sender seconds since the stream start of the latest burst: the bursts' phase against
        # the stream is arbitrary, so even the first stamp is late.
        self._burst_at = -float(self._burst_rng.uniform(0.0, burst or 0.0))
        self.lateness: list[float] = []
        """Seconds each sync packet's stamp is late (0 without bursts)."""
        self.epoch_ns = 3_900_000_000 * NS + 123_456_789
        self.start = start
        self.rtp0 = rtp0
        self.start_ns = self.clock_ns(start)
        self.latency = SENDER_LATENCY + 11025

    def clock_ns(self, t: float) -> int:
        return self.epoch_ns + round(t * NS * (1.0 + self.ppm * 1e-6))

    def local_of(self, sender_ns: float) -> float:
        """Local time at which the sender clock reads `sender_ns`."""
        return (sender_ns - self.epoch_ns) / NS / (1.0 + self.ppm * 1e-6)

    def intended_local(self, index: np.ndarray) -> np.ndarray:
        """True local time at which frame rtp0 + index should be heard."""
        sender_ns = self.start_ns + (index + self.latency) * (NS / RATE)
        return ((sender_ns - self.epoch_ns) / NS) / (1.0 + self.ppm * 1e-6)

    def sync(self, k: int) -> tuple[float, SyncPacket]:
        """The k-th sync packet (k = 0 at stream start) and the local time it is sent."""
        sender_ns = self.start_ns + k * NS
        late = 0.0
        if self.burst is not None:
            # The first burst at or after the frame's time carries the sync, stamped then.
            while self._burst_at < k:
                self._burst_at += self.burst + float(self._burst_rng.uniform(0.0, 0.002))
            late = self._burst_at - k
            sender_ns += round(late * NS)
        self.lateness.append(late)
        rtp_now = rtp_add(self.rtp0, k * RATE)
        packet = SyncPacket(
            rtp_add(rtp_now, -SENDER_LATENCY), ns_to_ntp(sender_ns), rtp_now, first=k == 0
        )
        return self.local_of(sender_ns), packet

    def frames_sent_by(self, t: float) -> int:
        """How many frames of the stream the sender has produced by local time t."""
        if t < self.start:
            return 0
        return int((self.clock_ns(t) - self.start_ns) * RATE // NS)

    def answer(self, request: bytes, arrive: float) -> tuple[float, TimingPacket]:
        """Reply to a timing request arriving at local `arrive`: (local send time, packet)."""
        origin = TimingPacket.parse(request).transmit
        receive = self.clock_ns(arrive)
        send = arrive + 20e-6
        return send, TimingPacket(True, origin, ns_to_ntp(receive), ns_to_ntp(self.clock_ns(send)))


class FakeNetwork:
    """Independent per-direction delays: base + uniform(0, jitter)."""

    def __init__(self, jitter: float, seed: int, base: float = 0.0002) -> None:
        self.jitter = jitter
        self.base = base
        self.rng = np.random.default_rng(seed)

    def delay(self) -> float:
        return self.base + float(self.rng.uniform(0.0, self.jitter))


class FakeDac:
    """A DAC FIFO drained at rate * (1 + ppm * 1e-6) in virtual time."""

    def __init__(self, ppm: float, rate: int = RATE) -> None:
        self.drain = rate * (1.0 + ppm * 1e-6)
        self.empty_at = 0.0  # local time the last queued frame leaves
        self.xruns = 0
        self.dry = 0.0  # seconds the DAC had nothing to play, between xruns and the next write

    def delay(self, now: float) -> int:
        """Queued frames, as ALSA reports them (an integer)."""
        return max(0, math.floor((self.empty_at - now) * self.drain + 1e-9))

    def write(self, now: float, pcm: np.ndarray) -> np.ndarray:
        """Queue `pcm`; returns the true leave time of each of its frames."""
        if self.empty_at < now:
            if self.empty_at > 0.0:
                self.xruns += 1
                self.dry += now - self.empty_at
            self.empty_at = now
        leave = self.empty_at + np.arange(len(pcm)) / self.drain
        self.empty_at += len(pcm) / self.drain
        return leave

    def step(self, seconds: float) -> None:
        """The DAC position jumps: every queued and future frame leaves `seconds` later."""
        self.empty_at += seconds


def encode(index: np.ndarray) -> np.ndarray:
    """Frames that carry their own 1-based index (0 would read as silence)."""
    value = (index + 1).astype(np.uint32)
    out = np.empty((len(index), 2), dtype=np.int16)
    out[:, 0] = (value & 0xFFFF).astype(np.uint16).view(np.int16)
    out[:, 1] = (value >> 16).astype(np.uint16).view(np.int16)
    return out


def decode(pcm: np.ndarray) -> np.ndarray:
    """Index of each frame (-1 for silence)."""
    low = pcm[:, 0].view(np.uint16).astype(np.int64)
    high = pcm[:, 1].view(np.uint16).astype(np.int64)
    return (high << 16 | low) - 1


@dataclass
class Scenario:
    sender_ppm: float = 0.0
    dac_ppm: float = 0.0
    jitter: float = 0.0
    seconds: float = 60.0
    seed: int = 1
    period: int = 1024
    target: int = 3 * 1024
    step_at: float | None = None
    step: float = 0.060
    flush_at: float | None = None
    filter: str | None = None
    delay_noise: float = 0.0
    """Seconds by which each DAC delay reading is off, uniform +-: a noisy device reading."""
    sync_burst: float | None = None
    """Seconds between the sender's bursts: its sync stamps are that late at most."""
    stall_at: float | None = None
    stall: float = 0.100
    """The output thread is not scheduled from `stall_at` for `stall` s (a loaded or paused
    machine): the DAC runs dry once its queue is out, and the player is told, as ALSA's EPIPE
    tells it."""
    settings: PlayoutSettings = field(default_factory=PlayoutSettings)
    lock_in: float = 5.0
    # Audio produced before this local time reaches the playout only then, all at once: the
    # daemon holding a stream's audio while play-start hooks run (hook_wait_for_completion).
    hold_until: float | None = None


@dataclass
class Result:
    errors: np.ndarray
    """Per written block after lock-in: true leave - intended time of its first audio frame (s)."""
    max_abs: float
    """Worst |error| over every audio frame after lock-in (s)."""
    first_frame_error: float
    first_audio_leave: float
    """Local time the first audio frame (of any index) left the DAC."""
    clock_errors: np.ndarray
    """Estimate offset minus true offset (s), sampled at every pull after lock-in."""
    own_errors: np.ndarray
    """(time, error, slewing) of every pull while playing: the filtered sync error raopd itself
    reports (stats.sync_error_ms, in s), against its own estimate rather than the truth, and
    the part of it that moves of the estimate explain (stats.slewing_ms, in s)."""
    playout: Playout
    clock: ClockSync
    dac: FakeDac
    clock_sender_lateness: list[float]
    """How late each sync packet's stamp was (s), in the order sent."""
    played: np.ndarray
    """Indices of every audio frame written, in order (for flush checks)."""

    def summary(self) -> dict[str, float]:
        a = np.abs(self.errors) * 1e3
        stats = self.playout.stats
        return {
            "p50_ms": round(float(np.percentile(a, 50)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4),
            "max_ms": round(self.max_abs * 1e3, 4),
            "clock_p99_ms": round(float(np.percentile(np.abs(self.clock_errors) * 1e3, 99)), 4),
            "correction_ppm": round(stats.all_sync_ppm, 1),
            "inserted": stats.frames_inserted,
            "dropped": stats.frames_dropped,
            "resyncs": stats.resyncs,
        }


def simulate(s: Scenario) -> Result:
    """Run the real ClockSync + Playout against the fakes; deterministic for a seed."""
    sender = FakeSender(s.sender_ppm, burst=s.sync_burst, seed=s.seed)
    net = FakeNetwork(s.jitter, s.seed)
    wake = np.random.default_rng(s.seed + 1000)
    reading = np.random.default_rng(s.seed + 3000)
    dac = FakeDac(s.dac_ppm)
    clock = ClockSync(RATE) if s.filter is None else ClockSync(RATE, filter=s.filter)
    playout = Playout(s.settings)
    events: list[tuple[float, int, str, object]] = []
    order = 0

    def at(t: float, kind: str, payload: object = None) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, payload))

    at(0.05, "request")
    at(0.0, "pull")
    sync_k = 0
    t_sync, packet = sender.sync(0)
    at(t_sync + net.delay(), "sync", packet)
    if s.step_at is not None:
        at(s.step_at, "step")
    if s.flush_at is not None:
        at(s.flush_at, "flush")
    pushed = 0
    errors: list[float] = []
    clock_errors: list[float] = []
    own_errors: list[tuple[float, float]] = []
    played: list[np.ndarray] = []
    max_abs = 0.0
    first_frame_error = math.nan
    first_audio_leave = math.nan
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if now > s.seconds:
            break
        if kind == "request":
            request = clock.make_request(now)
            arrive = now + net.delay()
            send, reply = sender.answer(request, arrive)
            at(send + net.delay(), "reply", reply)
            due = clock.next_request_time()
            assert due is not None
            at(due, "request")
        elif kind == "reply":
            assert isinstance(payload, TimingPacket)
            clock.reply_received(payload, now)
            playout.use_clock(clock.estimate())
        elif kind == "sync":
            assert isinstance(payload, SyncPacket)
            clock.sync_received(payload, now)
            playout.use_clock(clock.estimate())
            sync_k += 1
            t_sync, packet = sender.sync(sync_k)
            at(t_sync + net.delay(), "sync", packet)
        elif kind == "step":
            dac.step(s.step)
        elif kind == "flush":
            # Flush everything produced so far plus one second ahead.
            until = rtp_add(sender.rtp0, sender.frames_sent_by(now) + RATE)
            playout.flush(until)
            payload = until
        elif kind == "pull":
            produced = sender.frames_sent_by(now)
            if s.hold_until is not None and now < s.hold_until:
                produced = 0
            while pushed + 352 <= produced:
                index = np.arange(pushed, pushed + 352)
                playout.push(rtp_add(sender.rtp0, pushed), encode(index))
                pushed += 352
            delay = dac.delay(now)
            if s.delay_noise:
                # A reading that is off by up to +-delay_noise (the real queue is unchanged).
                noise = float(reading.uniform(-s.delay_noise, s.delay_noise))
                delay = max(0, delay + round(noise * RATE))
            pcm = playout.pull(now, delay, s.period)
            xruns = dac.xruns
            leave = dac.write(now, pcm)
            if dac.xruns != xruns:
                playout.output_ran_dry()
            index = decode(pcm)
            audio = index >= 0
            # A frame a correction made (the mean of two neighbours) carries no index of its own
            # when the low halves wrap between them: leave such frames out of the error.
            if len(index) > 2:
                step_before = np.abs(np.diff(index, prepend=index[0]))
                step_after = np.abs(np.diff(index, append=index[-1]))
                audio &= (step_before <= 2) | (step_after <= 2)
            if audio.any():
                if math.isnan(first_audio_leave):
                    first_audio_leave = float(leave[audio][0])
                played.append(index[audio])
                err = leave[audio] - sender.intended_local(index[audio])
                if math.isnan(first_frame_error) and index[audio][0] == 0:
                    first_frame_error = float(err[0])
                late = leave[audio] >= s.lock_in
                if late.any():
                    errors.append(float(err[late][0]))
                    max_abs = max(max_abs, float(np.abs(err[late]).max()))
            if playout.stats.frames_played > playout.stats.silence_frames:
                stats = playout.stats
                own_errors.append((now, stats.sync_error_ms / 1e3, stats.slewing_ms / 1e3))
            estimate = clock.estimate()
            if estimate is not None and now >= s.lock_in:
                true_offset = (sender.clock_ns(now) - sender.epoch_ns) / NS - now
                est_offset = (estimate.offset_ns - sender.epoch_ns) / NS + estimate.drift * (
                    now - estimate.reference
                )
                clock_errors.append(est_offset - true_offset)
            # Sleep until the queue falls to the target, then wake a little late.
            queued = dac.delay(now)
            sleep = max(0.0, (queued - s.target) / dac.drain)
            wake_at = now + sleep + float(wake.uniform(0.0, 0.001))
            if s.stall_at is not None and s.stall_at <= wake_at < s.stall_at + s.stall:
                wake_at = s.stall_at + s.stall
            at(wake_at, "pull")
    return Result(
        errors=np.array(errors),
        max_abs=max_abs,
        first_frame_error=first_frame_error,
        first_audio_leave=first_audio_leave,
        clock_errors=np.array(clock_errors),
        own_errors=np.array(own_errors).reshape(-1, 3),
        playout=playout,
        clock=clock,
        dac=dac,
        clock_sender_lateness=sender.lateness,
        played=np.concatenate(played) if played else np.zeros(0, dtype=np.int64),
    )


def rtp_index(sender: FakeSender, rtptime: int) -> int:
    return rtp_diff(rtptime, sender.rtp0)
