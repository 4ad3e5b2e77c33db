"""Issue 10, case 5: forged timing replies do not move the clock (real daemon, paced output).

A sender answers three of raopd's timing requests with its clock set 30 minutes off, as
anyone on the path who can see the request's origin timestamp could; the real daemon playing
to the paced output rejects and counts them ("Timing Rejected" in its statistics line), does
not restart its clock, and plays the stream without a resync or a dropout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from raopd.tools.sender import RaopSender, SenderOptions
from tests.e2e.daemon import DEVICE_ID, Daemon, statistics
from tests.paced import PacedOutput, undisturbed

SECONDS = 8.0
FORGED = (230, 260, 290)  # timing requests answered forged: while the audio plays
SHIFT = 1800.0  # seconds the forged answers' clock is off


class ForgingSender(RaopSender):
    """Answers some timing requests with its clock `SHIFT` s ahead."""

    requests = 0

    def _datagram_received(self, channel: str, data: bytes, addr: tuple[str, int]) -> None:
        if channel == "timing" and len(data) == 32 and data[1] == 0xD2:
            self.requests += 1
            if self.requests in FORGED:
                self._clock_offset += SHIFT
                try:
                    super()._datagram_received(channel, data, addr)
                finally:
                    self._clock_offset -= SHIFT
                return
        super()._datagram_received(channel, data, addr)


def test_forged_timing_replies_are_rejected_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    source = rng.integers(-20000, 20000, size=(int(SECONDS * 44100), 2)).astype(np.int16)

    def play(paced: PacedOutput) -> tuple[Daemon, ForgingSender]:
        daemon = Daemon(
            paced.directory,
            ["--device", paced.device(0), "--statistics"],
            env={**paced.env, "RAOPD_STATISTICS_INTERVAL": "1"},
            to_file=False,
        )
        sender = ForgingSender(
            "127.0.0.1",
            0,
            SenderOptions(
                codec="alac-verbatim",
                encrypt=False,
                volume=0.0,
                hw_addr=bytes.fromhex(DEVICE_ID),
            ),
        )

        async def run() -> None:
            await daemon.start()
            try:
                sender.port = daemon.port
                await sender.stream(source)
            finally:
                await daemon.stop()

        asyncio.run(run())
        return daemon, sender

    (daemon, sender), paced = undisturbed(play, tmp_path)
    recording = paced.output(0)
    assert sender.requests > max(FORGED)
    stats = [s for s in statistics(daemon.log) if s.get("Packets", "0") != "0"]
    assert stats, daemon.log
    last = stats[-1]
    assert last["Timing Rejected"] == str(len(FORGED)), last
    assert last["Clock Steps"] == "0", last
    assert all(s["Resyncs"] == "0" and s["Underflows"] == "0" for s in stats), stats
    heard = np.flatnonzero(recording.any(axis=1))
    assert len(heard), "nothing was heard"
    span = recording[heard[0] : heard[-1] + 1]
    assert (~span.any(axis=1)).sum() < 32, "a dropout in the middle"
    assert len(source) - 0.5 * 44100 <= len(span) <= len(source) * 1.002
