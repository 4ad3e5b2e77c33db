"""AlsaSink and OutputThread through the real pyalsaaudio / alsa-lib path (file plugin)."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from raopd.core.clock import ClockEstimate
from raopd.core.playout import PlayoutSettings
from raopd.core.volume import MUTE, volume_to_gain
from raopd.errors import OutputError
from raopd.output.alsa import AlsaSink
from raopd.output.player import OutputThread, Push, SetGain, UseClock
from tests.polling import wait_for

RATE = 44100
RTP0 = 4_294_000_000  # close to the 32-bit wrap on purpose
WAIT = 30.0  # generous upper bound for conditions; never a timing assertion


def music(frames: int, seed: int = 1) -> np.ndarray:
    """Loud, non-trivial stereo: two tones plus noise; the first frame is not silence."""
    t = np.arange(frames) / RATE
    rng = np.random.default_rng(seed)
    left = 12000 * np.sin(2 * np.pi * 441 * t) + rng.normal(0, 2000, frames)
    right = 9000 * np.sin(2 * np.pi * 1234 * t + 1) + rng.normal(0, 2000, frames)
    pcm = np.clip(np.rint(np.stack([left, right], axis=1)), -32768, 32767).astype(np.int16)
    pcm[0] = (1000, -1000)
    return pcm


def read_raw(path: Path) -> np.ndarray:
    data = path.read_bytes()
    data = data[: len(data) // 4 * 4]
    return np.frombuffer(data, "<i2").reshape(-1, 2)


def due_soon(delay: float = 0.5) -> ClockEstimate:
    """A timeline where RTP0 is heard `delay` s from now, no drift."""
    now = time.monotonic()
    return ClockEstimate(
        anchor_rtp=RTP0,
        anchor_local=now + delay,
        reference=now,
        drift=0.0,
        rate=RATE,
        latency_frames=0,
        offset_ns=0,
        samples=1,
        filter="test",
    )


# No correction, no resync: the thread's scheduling jitter on a shared CI box must not edit
# frames, so the test sees the volume stage alone.
UNCORRECTED = PlayoutSettings(tolerance=10.0, resync_threshold=0.0, dither_seed=7)


def audio_region(out: np.ndarray, floor: int = 0) -> np.ndarray:
    """The written stream from the first frame louder than `floor` (dither is +-1) on."""
    nonzero = np.flatnonzero(np.any(np.abs(out.astype(np.int32)) > floor, axis=1))
    assert len(nonzero), "no audio was written"
    return out[nonzero[0] :]


def play_through_thread(alsa_config, volume: float | None, frames: int) -> tuple[np.ndarray, dict]:
    out_path = alsa_config.directory / "out.raw"
    alsa_config.write({"raopdtest": str(out_path)})
    sink = AlsaSink("raopdtest", period_frames=1024, buffer_frames=4096)
    sink.open()
    thread = OutputThread(sink, UNCORRECTED, period_frames=1024)
    source = music(frames)
    thread.start()
    try:
        thread.submit(UseClock(due_soon()))
        if volume is not None:
            thread.submit(SetGain(volume_to_gain(volume)))
        thread.submit(Push(RTP0, source))
        wait_for(
            lambda: (
                thread.snapshot().playout.queue_frames == 0
                and thread.snapshot().frames_written > frames + 8192
            ),
            "the audio to be written",
        )
        snap = thread.snapshot()
    finally:
        thread.stop(5.0)
        sink.close()
    return read_raw(out_path), {"snapshot": snap, "source": source}


def test_written_audio_is_bit_exact_at_0_db(alsa_config) -> None:
    out, info = play_through_thread(alsa_config, 0.0, 3 * 4096 + 123)
    source = info["source"]
    played = audio_region(out)
    assert len(played) >= len(source)
    assert np.array_equal(played[: len(source)], source)
    assert not played[len(source) :].any()  # then silence: the stream ran out
    snap = info["snapshot"]
    assert snap.gain == 1.0
    assert snap.interval_bit_exact
    assert snap.sink is not None and snap.sink.opened
    assert snap.interval_min_dac_queue is not None


def test_written_audio_follows_the_curve_at_minus_15(alsa_config) -> None:
    gain = volume_to_gain(-15.0)
    assert 0.0 < gain < 0.5
    out, info = play_through_thread(alsa_config, -15.0, 3 * 4096)
    source = info["source"].astype(np.float64)
    played = audio_region(out, floor=2)[: len(source)].astype(np.float64)
    # The first frame (1000, -1000) scaled is far from silence, so alignment is exact.
    assert len(played) == len(source)
    # Each sample within TPDF dither (1 LSB) + rounding (0.5 LSB) of the exact product.
    assert np.max(np.abs(played - source * gain)) <= 1.5
    ratio = np.sqrt(np.mean(played**2)) / np.sqrt(np.mean(source**2))
    assert ratio == pytest.approx(gain, rel=1e-3)
    assert not info["snapshot"].interval_bit_exact


def test_written_audio_is_silent_at_mute(alsa_config) -> None:
    assert volume_to_gain(MUTE) == 0.0
    out_path = alsa_config.directory / "out.raw"
    frames = 3 * 4096
    out, _ = play_through_thread(alsa_config, MUTE, frames)
    assert len(out) >= frames  # the audio's worth of frames went through the device
    assert not out.any()
    assert out_path.stat().st_size == len(out) * 4


def test_direct_writes_reach_the_file_unchanged(alsa_config) -> None:
    out_path = alsa_config.directory / "direct.raw"
    alsa_config.write({"raopdtest": str(out_path)})
    sink = AlsaSink("raopdtest", period_frames=512, buffer_frames=2048)
    sink.open()
    assert sink.opened
    assert (sink.period_frames, sink.buffer_frames) == (512, 2048)  # from the settings
    source = music(5000)
    for start in range(0, len(source), 700):
        sink.write(source[start : start + 700])
    now, delay = sink.measure()
    assert delay >= 0 and abs(now - time.monotonic()) < 5.0
    sink.stop()  # drop(): the PCM goes to SETUP ...
    sink.write(source[:100])  # ... and the next write prepares it again
    sink.close()
    assert not sink.opened
    out = read_raw(out_path)
    assert np.array_equal(out, np.concatenate([source, source[:100]]))
    counters = sink.counters()
    assert counters.device_errors == 0 and counters.underruns == 0


def test_missing_device_is_an_output_error(alsa_config) -> None:
    sink = AlsaSink("raopd_no_such_pcm")
    with pytest.raises(OutputError, match="raopd_no_such_pcm"):
        sink.open()
    assert not sink.opened


def test_clockless_device_is_paced_and_reports_a_queue(alsa_config) -> None:
    alsa_config.write({"raopdtest": str(alsa_config.directory / "paced.raw")})
    slept: list[float] = []
    sink = AlsaSink("raopdtest", period_frames=1024, buffer_frames=4096, sleep=slept.append)
    sink.open()
    block = music(1024)
    for _ in range(20):
        sink.write(block)
    sink_counters = sink.counters()
    _, delay = sink.measure()
    sink.close()
    assert sink_counters.clockless
    assert slept and all(s > 0 for s in slept)  # it held the writer back instead of spinning
    # 20 periods written at once against a 4096-frame virtual buffer: the reported queue is
    # what a real DAC would hold, not the null plugin's 0.
    assert delay > 4096


def test_unplugged_device_is_reopened_and_playback_resumes(alsa_config) -> None:
    """A real device loss: the file plugin's pipe reader dies (write -> EIO from alsa-lib) and
    the PCM's definition vanishes from the ALSA configuration (reopen -> unknown PCM) until the
    test puts it back, like a USB DAC pulled and plugged in again."""
    directory = alsa_config.directory
    pid_file = directory / "reader.pid"
    first = directory / "before.raw"
    second = directory / "after.raw"

    def plug(out: Path) -> None:
        pid_file.unlink(missing_ok=True)
        alsa_config.write({"raopdtest": f"| echo $$ > {pid_file}; exec cat >> {out}"})

    plug(first)
    sink = AlsaSink("raopdtest", period_frames=1024, buffer_frames=4096, retry_interval=0.02)
    sink.open()
    thread = OutputThread(sink, UNCORRECTED, period_frames=1024)
    source = music(RATE * 20)
    thread.start()
    try:
        thread.submit(UseClock(due_soon()))
        thread.submit(Push(RTP0, source))
        wait_for(
            lambda: first.exists() and np.count_nonzero(read_raw(first)[:, 0]) > 8192,
            "audio before the unplug",
        )
        wait_for(pid_file.exists, "the reader's pid")
        reader = int(pid_file.read_text())
        # Pull the plug: the PCM is gone from the configuration, then its reader dies.
        alsa_config.write({})
        os.kill(reader, signal.SIGTERM)
        wait_for(lambda: sink.counters().reopen_attempts >= 3, "failed reopen attempts")
        lost = sink.counters()
        assert not lost.opened and not thread.snapshot().opened
        assert lost.device_errors == 1
        beat = thread.heartbeat
        wait_for(lambda: thread.heartbeat > beat, "the heartbeat while unplugged")
        assert thread.alive
        # Plug it back in.
        plug(second)
        wait_for(
            lambda: second.exists() and np.count_nonzero(read_raw(second)[:, 0]) > 16384,
            "audio after the replug",
        )
        back = sink.counters()
    finally:
        thread.stop(5.0)
        sink.close()
    assert back.opened and back.reopens == 1 and back.device_errors == 1
    assert back.underruns >= 1  # the loss mid-stream is counted as the DAC running dry
    before, after = read_raw(first), read_raw(second)
    # Both files hold stretches of the stream, bit-exact; the second starts later in it.
    start = audio_region(before)
    assert np.array_equal(start[:4096], source[:4096])
    resumed = audio_region(after)[:8192]
    matches = np.flatnonzero(np.all(source[:, None, 0] == resumed[None, :1, 0], axis=1))
    offsets = [m for m in matches if np.array_equal(source[m : m + len(resumed)], resumed)]
    assert offsets and offsets[0] > 4096
