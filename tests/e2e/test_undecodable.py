"""500 undecodable packets inside a good stream, against the real daemon over loopback.

raopd's own sender streams encrypted verbatim ALAC and replaces 500 consecutive payloads by
bytes no decoder accepts. The output must hold silence of exactly their length in their
place and the sender's audio everywhere else; the warnings name the sender and the reason,
at most one per interval, and add up to 500; /metrics says 500.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import numpy as np

from raopd.core.audio_path import WARN_INTERVAL
from raopd.tools.sender import RaopSender, SenderOptions
from tests.e2e.daemon import DEVICE_ID, Daemon, free_tcp_port, read_wav

FRAMES = 352
PACKETS = 1600  # 12.8 s
BAD_FIRST, BAD_COUNT = 600, 500


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def test_500_undecodable_packets_are_silence_of_their_length(tmp_path: Path) -> None:
    rng = np.random.default_rng(500)
    source = rng.integers(-20000, 20000, size=(PACKETS * FRAMES, 2)).astype(np.int16)
    http_port = free_tcp_port()
    daemon = Daemon(tmp_path, ["--http-port", str(http_port)])
    metrics = ""

    async def run() -> None:
        nonlocal metrics
        await daemon.start()
        try:
            sender = RaopSender(
                "127.0.0.1",
                daemon.port,
                SenderOptions(
                    codec="alac-verbatim",
                    volume=0.0,
                    garbage=(BAD_FIRST, BAD_COUNT),
                    hw_addr=bytes.fromhex(DEVICE_ID),
                    linger=0.5,
                ),
            )
            await sender.stream(source)
            metrics = await asyncio.to_thread(scrape, http_port)
        finally:
            await daemon.stop()

    asyncio.run(run())
    expected = source.copy()
    expected[BAD_FIRST * FRAMES : (BAD_FIRST + BAD_COUNT) * FRAMES] = 0
    out = read_wav(daemon.output)
    assert out.shape == expected.shape
    assert np.array_equal(out, expected)

    counted = re.search(r'raopd_packets_undecodable_total\{reason="truncated"\} (\S+)', metrics)
    assert counted and float(counted.group(1)) == BAD_COUNT, metrics
    warnings = [line for line in daemon.log if "undecodable audio packet" in line]
    assert sum(int(re.search(r" sent (\d+) ", w).group(1)) for w in warnings) == BAD_COUNT  # type: ignore[union-attr]
    assert all("raopd-sender" in w and "truncated" in w for w in warnings), warnings
    span = BAD_COUNT * FRAMES / 44100  # 4 s of bad packets: the first warns, then per interval
    assert len(warnings) <= 2 + int(span // WARN_INTERVAL), warnings
