"""What a stream costs raopd: CPU seconds per minute of audio and peak memory.

Streams 60 s of compressed ALAC with RSA/AES (test30.wav looped and cut) from raopd's own
sender to a raopd process over loopback, in real time, with `--output` to a WAV file, and
prints one JSON object:

- `cpu_s_per_audio_min`: raopd's user+sys CPU (from /proc/<pid>/stat) from the first audio
  packet to the end of the stream, per minute of audio;
- `startup_cpu_s`: raopd's CPU before the first audio (imports, mDNS, handshake);
- `peak_rss_mb`: VmHWM from /proc/<pid>/status at the end (the process's lifetime peak);
- `bit_exact`: the WAV equals the input, sample for sample.

Targets: at most 1.0 s CPU per audio minute and 64 MB peak RSS.

    python benchmarks/stream_cost.py [--seconds 60] [--speed 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raopd.tools.sender import RaopSender, SenderOptions, load_wav  # noqa: E402
from tests.e2e.daemon import DEVICE_ID, Daemon, read_wav  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + sys CPU of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces: split after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def looped(pcm: np.ndarray, frames: int) -> np.ndarray:
    reps = -(-frames // len(pcm))
    return np.ascontiguousarray(np.concatenate([pcm] * reps)[:frames])


async def run(seconds: float, speed: float) -> dict[str, object]:
    source = looped(load_wav(ROOT / "tests" / "captures" / "test30.wav"), int(seconds * 44100))
    with tempfile.TemporaryDirectory(prefix="raopd-bench-") as tmp:
        daemon = Daemon(Path(tmp), [])
        await daemon.start()
        assert daemon.process is not None
        pid = daemon.process.pid
        sender = RaopSender(
            "127.0.0.1",
            daemon.port,
            SenderOptions(
                codec="alac", encrypt=True, speed=speed, hw_addr=bytes.fromhex(DEVICE_ID)
            ),
        )
        try:
            await sender.connect()
            cpu_start = cpu_seconds(pid)
            await sender.play(source)
            await sender.teardown()
            cpu_end = cpu_seconds(pid)
            peak_kb = status_kb(pid, "VmHWM")
            rss_kb = status_kb(pid, "VmRSS")
        finally:
            await sender.close()
            code = await daemon.stop()
        out = read_wav(daemon.output)
    report = sender.report
    audio_min = len(source) / 44100 / 60
    return {
        "audio_s": round(len(source) / 44100, 3),
        "speed": speed,
        "cpu_s_per_audio_min": round((cpu_end - cpu_start) / audio_min, 3),
        "startup_cpu_s": round(cpu_start, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "rss_end_mb": round(rss_kb / 1024, 1),
        "bit_exact": bool(out.shape == source.shape and np.array_equal(out, source)),
        "packets": report.packets,
        "resend_requests": report.resend_requests,
        "sender_max_lateness_s": round(report.max_lateness, 4),
        "daemon_exit": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.speed))))


if __name__ == "__main__":
    main()
