"""The paced output fixture itself: routing, bit-exactness and pacing through raopd's AlsaSink.

Two processes play different noise through raopd's real ALSA sink (pyalsaaudio, alsa-lib, the
`pulse` PCM) to `paced0` and `paced1` at once; the one recording must hold each exactly, on its
own channel pair, with nothing of it on the other pair, and the audio must have come out at the
sink's pace rather than all at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.paced import RATE, most_stolen, paced_output, per_cpu_steal, sink_clock

REPO = Path(__file__).resolve().parents[1]

PLAYER = """
import sys
import numpy as np
from raopd.output.alsa import AlsaSink
frames = np.load(sys.argv[2])
sink = AlsaSink(sys.argv[1], period_frames=1024, buffer_frames=4096)
sink.open()
for start in range(0, len(frames), 1024):
    sink.write(np.ascontiguousarray(frames[start : start + 1024]))
# stop() drops what is queued: push the clip out of the device's buffer with silence first.
sink.write(np.zeros((2 * sink.buffer_frames, 2), dtype=np.int16))
sink.stop()
sink.close()
print("underruns", sink.counters().underruns)
"""


def find(haystack: np.ndarray, needle: np.ndarray) -> int:
    """Index where `needle` (frames, 2) starts in `haystack`, or -1."""
    candidates = np.flatnonzero((haystack[:, 0] == needle[0, 0]) & (haystack[:, 1] == needle[0, 1]))
    for start in candidates:
        if np.array_equal(haystack[start : start + len(needle)], needle):
            return int(start)
    return -1


def test_two_outputs_are_recorded_bit_exact_on_their_own_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    seconds = 2.0
    clips = [
        rng.integers(-30000, 30000, size=(int(seconds * RATE), 2)).astype(np.int16)
        for _ in range(2)
    ]
    with paced_output(tmp_path, outputs=2) as paced:
        players = []
        for k, clip in enumerate(clips):
            np.save(tmp_path / f"clip{k}.npy", clip)
            env = {**os.environ, **paced.env, "PYTHONPATH": str(REPO)}
            players.append(
                subprocess.Popen(
                    [sys.executable, "-c", PLAYER, paced.device(k), str(tmp_path / f"clip{k}.npy")],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for player in players:
            out, err = player.communicate(timeout=60)
            assert player.returncode == 0, err
            assert "underruns 0" in out
        # The sink keeps rendering; wait until both clips must have come out of it.
        target = paced.recorded_frames() + RATE // 2
        while paced.recorded_frames() < target:
            time.sleep(0.02)
        recording = paced.recording()
        origin, per_frame = paced.frame_times()

    starts = []
    for k, clip in enumerate(clips):
        mine = np.ascontiguousarray(recording[:, 2 * k : 2 * k + 2])
        start = find(mine, clip)
        assert start >= 0, f"output {k} is not in the recording bit-exact"
        starts.append(start)
        # Nothing but silence around it: the other player's audio did not leak in.
        assert not mine[:start].any()
        assert not mine[start + len(clip) :].any()
    # Paced: the frames were recorded over (at least half) their own duration, not at once.
    assert abs(per_frame * RATE - 1.0) < 0.5
    assert origin > 0


def test_sink_clock_follows_a_step_of_the_sink() -> None:
    """Synthetic reads of a sink 40 ppm fast that loses 8 ms at 10 s, each read 0-5 ms after
    its last frame was rendered (the rig's quiet reads: up to 4 ms): frame times within 0.3 ms
    at p99 and 1 ms at worst, before and after the step, but for the frames of the read that
    spans it (one line through all of it is off by ~4 ms on both sides)."""
    rng = np.random.default_rng(7)
    per_frame = 1 / (RATE * (1 + 40e-6))
    ends = np.cumsum(rng.integers(300, 700, size=2000)).astype(float)
    rendered = 100.0 + ends * per_frame + np.where(ends * per_frame > 10.0, 0.008, 0.0)
    times = rendered + rng.uniform(0.0, 0.005, size=len(ends))
    frames = np.arange(0, int(ends[-1] * 0.9), 100)
    frames = frames[np.abs(frames * per_frame - 10.0) > 0.02]
    truth = 100.0 + frames * per_frame + np.where(frames * per_frame > 10.0, 0.008, 0.0)
    clock = sink_clock(times, ends)
    assert clock.period == pytest.approx(per_frame, rel=2e-6)
    error = np.abs(clock.times(frames) - truth)
    assert np.percentile(error, 99) < 3e-4
    assert error.max() < 1e-3
    slope, origin = np.polyfit(ends, times, 1)
    assert np.abs(origin + frames * slope - truth).max() > 3e-3


def test_steal_is_read_per_cpu() -> None:
    """The steal column of each CPU of this machine's /proc/stat, and the most any one CPU
    gained between two samples (the total line is not a CPU)."""
    stat = Path("/proc/stat").read_text()
    steal = per_cpu_steal(stat)
    assert set(steal) == {f"cpu{n}" for n in range(len(steal))} and steal
    assert len(steal) == os.cpu_count()
    sample = "cpu  9 9 9 9 9 9 9 50 0 0\ncpu0 1 2 3 4 5 6 7 20 0 0\ncpu1 1 2 3 4 5 6 7 30 0 0\n"
    later = sample.replace(" 20 0 0", " 26 0 0").replace(" 30 0 0", " 31 0 0")
    assert per_cpu_steal(sample) == {"cpu0": 20, "cpu1": 30}
    assert most_stolen(per_cpu_steal(sample), per_cpu_steal(later)) == 6
