"""The output thread never dies of a badly shaped block: it is counted and dropped."""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np

from raopd.output.player import EndStream, OutputThread, Push
from raopd.output.sinks import FileSink


def test_wrong_shapes_are_counted_and_the_thread_goes_on(tmp_path: Path) -> None:
    # Issue 10: half-length mono written as stereo, then np.concatenate raised in the
    # output thread, which died: every later stream was accepted and discarded.
    path = tmp_path / "out.wav"
    sink = FileSink(str(path))
    sink.open()
    output = OutputThread(sink)
    output.start()
    good = np.arange(352 * 2, dtype=np.int16).reshape(352, 2)
    output.submit(Push(0, np.zeros((352, 1), np.int16)))  # mono
    output.submit(Push(352, np.zeros((352, 3), np.int16)))  # three channels
    output.submit(Push(704, np.zeros((352, 2), np.float32)))  # not int16
    output.submit(Push(1056, good))
    output.submit(EndStream())
    deadline = time.monotonic() + 10
    while output.frames_written < 352 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert output.alive
    assert output.snapshot().rejected_frames == 3 * 352
    output.stop(5.0)
    sink.close()
    with wave.open(str(path), "rb") as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    assert np.array_equal(data, good)
