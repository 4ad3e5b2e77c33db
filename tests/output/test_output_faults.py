"""Output faults are counted and survived: bad blocks, a full disk, a dead pipe (issue 10,
cases 9 and 10). The full disk is a real 64 KiB tmpfs the test mounts and removes itself."""

from __future__ import annotations

import os
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from raopd.output.player import OutputThread, Push
from raopd.output.sinks import FileSink
from tests.polling import wait_for


def stereo(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32767, size=(frames, 2), dtype=np.int16)


def test_blocks_of_the_wrong_shape_are_counted_and_the_thread_lives(tmp_path):
    sink = FileSink(str(tmp_path / "out.wav"))
    sink.open()
    output = OutputThread(sink)
    output.start()
    try:
        good = stereo(352)
        output.submit(Push(0, np.zeros((352, 1), np.int16)))  # mono
        output.submit(Push(352, np.zeros(704, np.int16)))  # flat
        output.submit(Push(0, good))
        wait_for(lambda: output.snapshot().frames_written == 352, "the good block")
        snap = output.snapshot()
        assert output.alive and snap.rejected_frames == 352 + 704 and snap.errors == 0
    finally:
        output.stop()
        sink.close()
    with wave.open(str(tmp_path / "out.wav")) as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    assert np.array_equal(data, good)


def test_a_broken_sink_never_kills_the_thread(tmp_path):
    class Exploding(FileSink):
        def write(self, pcm):
            raise RuntimeError("boom")

    sink = Exploding(str(tmp_path / "out.raw"))
    sink.open()
    output = OutputThread(sink)
    output.start()
    try:
        for i in range(3):
            output.submit(Push(i * 352, stereo(352)))
        wait_for(lambda: output.snapshot().errors >= 1, "the error to be counted")
        assert output.alive
    finally:
        output.stop()
        sink.close()


def test_dev_full_is_a_fault_not_an_exception():
    sink = FileSink("/dev/full")
    sink.open()
    sink.write(stereo(100))
    assert sink.fault is not None and "No space left" in sink.fault
    assert sink.frames_dropped == 100 and sink.write_errors == 1
    sink.write(stereo(50))  # within the retry interval: dropped and counted, no syscall
    assert sink.frames_dropped == 150
    sink.close()


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_keeps_a_valid_wav_and_recovers_when_space_is_freed(small_disk):
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 16384)
    path = small_disk / "out.wav"
    sink = FileSink(str(path))
    sink.retry_interval = 0.0  # retry at every write: the test controls time by its writes
    sink.open()
    written = []
    for i in range(40):  # 40 x 1408 bytes: more than the disk holds
        block = stereo(352, seed=i)
        sink.write(block)
        if sink.fault is None:
            written.append(block)
    assert sink.fault is not None and sink.frames_dropped > 0
    # The header always matches whole frames on disk, whatever ends the process now.
    with wave.open(str(path)) as wav:
        frames = wav.getnframes()
        data = np.frombuffer(wav.readframes(frames), "<i2").reshape(-1, 2)
    assert os.path.getsize(path) == 44 + frames * 4
    ours = np.concatenate(written)
    assert len(data) >= len(ours) and np.array_equal(data[: len(ours)], ours)

    ballast.unlink()  # space again: the next write succeeds and clears the fault
    sink.write(stereo(352, seed=99))
    assert sink.fault is None
    sink.close()
    with wave.open(str(path)) as wav:
        assert wav.getnframes() == (os.path.getsize(path) - 44) // 4


def test_the_thread_says_when_the_outputs_health_changes_and_only_then(tmp_path):
    """What the daemon's readiness log hangs on instead of polling."""
    calls: list[tuple[bool, str | None]] = []
    good = FileSink(str(tmp_path / "out.wav"))
    good.open()
    output = OutputThread(good)
    output.on_health_change = lambda: calls.append((output.sink.opened, good.fault))
    output.start()
    try:
        for i in range(5):
            output.submit(Push(i * 352, stereo(352, seed=i)))
        wait_for(lambda: output.snapshot().frames_written == 5 * 352, "five blocks")
        assert calls == []  # a healthy output: nothing to say
    finally:
        output.stop()
        good.close()
    assert len(calls) == 1  # the thread ended

    full = FileSink("/dev/full")
    full.open()
    output = OutputThread(full)
    seen: list[str | None] = []
    output.on_health_change = lambda: seen.append(full.fault)
    output.start()
    try:
        for i in range(3):
            output.submit(Push(i * 352, stereo(352, seed=i)))
        wait_for(lambda: output.snapshot().sink_dropped_frames == 3 * 352, "three dropped blocks")
        assert len(seen) == 1 and seen[0] is not None and "No space left" in seen[0]
    finally:
        output.stop()
        full.close()
    assert len(seen) == 2 and not output.alive
