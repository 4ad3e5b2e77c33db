"""A low-latency sender on a paced output: no underflows, the sender's audio bit-exact.

raopd plays through its real ALSA sink into the paced PulseAudio sink (tests/paced.py), which
consumes 44.1 kHz in real time like a DAC. raopd's own sender streams with a sync latency of
0, as PipeWire does: 11025 frames (250 ms) from sync to playing, where raopd used to read the
audio socket every 250 ms and keep 186 ms in the device, and heard ~15 % of the audio. The
same stream at the usual 2 s must also play clean. Each checks raopd's statistics line
(underflows, underruns, sync error) and that the recording holds the sent audio in one piece.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from raopd.tools.sender import RaopSender, SenderOptions
from tests.e2e.daemon import DEVICE_ID, Daemon, statistics
from tests.paced import PacedOutput, undisturbed

SECONDS = 12.0  # long enough for dozens of batches and statistics lines; CI time is shared


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, size=(int(seconds * 44100), 2)).astype(np.int16)


@pytest.mark.parametrize(("latency_frames", "name"), [(0, "250"), (77175, "2000")])
def test_sender_plays_clean_on_a_paced_output(tmp_path: Path, latency_frames: int, name: str):
    source = noise(SECONDS, seed=latency_frames)

    def play(paced: PacedOutput) -> Daemon:
        daemon = Daemon(
            paced.directory,
            ["--device", paced.device(0), "--statistics"],
            env={**paced.env, "RAOPD_STATISTICS_INTERVAL": "2"},
            to_file=False,
        )

        async def run() -> None:
            await daemon.start()
            try:
                sender = RaopSender(
                    "127.0.0.1",
                    daemon.port,
                    SenderOptions(
                        codec="alac-verbatim",
                        encrypt=False,
                        volume=0.0,
                        latency_frames=latency_frames,
                        hw_addr=bytes.fromhex(DEVICE_ID),
                    ),
                )
                await sender.stream(source)
            finally:
                await daemon.stop()

        asyncio.run(run())
        return daemon

    daemon, paced = undisturbed(play, tmp_path)
    recording = paced.output(0)
    log = daemon.log
    budgets = [line for line in log if "] latency " in line]
    assert budgets and f"latency {name} ms" in budgets[-1], budgets
    stats = statistics(log)
    assert len(stats) >= 3, log
    playing = [s for s in stats if s.get("Packets", "0") != "0"]
    assert playing, log
    for line in playing:
        assert line["Underflows"] == "0", line
        assert line["Underruns"] == "0", line
        assert line["Sync Error ms"] != "n/a", line
    # The sender's audio is heard whole: no dropout, its length within the drift
    # correction's few hundred ppm and the start-up (audio already due when the clock is
    # first known is skipped). Drift correction on the paced sink's clock inserts and drops
    # single frames, so the samples are compared as a whole, not for bit-exactness.
    heard = np.flatnonzero(recording.any(axis=1))
    assert len(heard), "nothing was heard"
    span = recording[heard[0] : heard[-1] + 1]
    silent = ~span.any(axis=1)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([0], silent.astype(np.int8), [0])))))
    longest_silence = int(runs[::2].max()) if silent.any() else 0
    assert longest_silence < 32, f"a dropout of {longest_silence} frames in the middle"
    assert len(source) - 0.5 * 44100 <= len(span) <= len(source) * 1.002
    assert np.isin(span[:4410:7, 0], source[:, 0]).all()  # it is the sender's audio
