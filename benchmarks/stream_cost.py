"""What a stream costs raopd: CPU seconds per minute of audio and peak memory.

Streams 60 s of compressed ALAC with RSA/AES (test30.wav looped and cut) from raopd's own
sender to a raopd process over loopback, in real time, with `--output` to a WAV file, and
prints one JSON object:

- `cpu_s_per_audio_min`: raopd's user+sys CPU (from /proc/<pid>/stat) from the first audio
  packet to the end of the stream, per minute of audio;
- `startup_cpu_s`: raopd's CPU before the first audio (imports, mDNS, handshake);
- `peak_rss_mb`: VmHWM from /proc/<pid>/status at the end (the process's lifetime peak),
  and the resident set at the end split into anonymous and file-backed pages. The file-backed
  part (shared libraries) is not stable from one hour to the next on the same machine and
  files: `import raopd.daemon` alone measured 88 MB early in one session and 73 MB later,
  34 MB of it anonymous both times, and this benchmark 94 and 75 MB. The page cache's state
  is the likely cause (the kernel maps cached neighbours of a faulting page); not pinned down;
- `bit_exact`: the WAV equals the input, sample for sample.

`--sample-rss N` also reads raopd's VmRSS and RssAnon every N seconds while the audio plays
and adds `rss_trend`: the median of each and its least-squares slope (MB per 10 minutes) over
the first and over the last `--rss-window` seconds (default 300) of the stream, and the slope
over the whole stream, to show whether a long stream's memory stays flat
(`--seconds 1200 --sample-rss 10`: twenty minutes).

Every run sends what an iPhone sends for a track (DMAP, a JPEG cover, progress); `--house`
also turns on the metadata pipe (read by a thread here), MQTT (to a Mosquitto started here,
loopback only) and play start/end hooks, to measure what the house integration costs.
`--page` opens the web page's event stream (/api/v1/events, read by a client here, as an open
page would) for the whole stream, then times 100 requests each of /metrics, /api/v1/state and
/healthz on loopback (client-side, connection included: `http_ms` gives median, p95, max).

The daemon issue set targets of 1.0 s CPU per audio minute and 64 MB peak RSS; neither is met
here: 1.2-1.5 s (Debian's shairport-sync needs 3.0-3.3 s for the same stream on this machine,
benchmarks/shairport_reference.sh) and 75-94 MB (numpy, av, cryptography and zeroconf alone
import to ~77 MB, aiohttp for /healthz and /metrics ~11 MB more). The benchmark reports what it
measures and judges nothing.

    python benchmarks/stream_cost.py [--seconds 60] [--speed 1.0] [--codec alac-verbatim]
        [--receiver-root CHECKOUT] [--house] [--page] [--sample-rss 10 [--rss-window 300]]

`--codec alac-verbatim-noend` sends verbatim frames as PipeWire and PulseAudio do (no END
element); `--receiver-root` measures another checkout's raopd (e.g. an export of main) with
the same sender, for a before/after on the same machine.

The same stream can be measured against another receiver that is already running, for a
ratio taken on the same machine at the same time (absolute CPU times here vary by +-15 %
from run to run): `--against HOST:PORT --pid PID [--raw-output FILE]`. For shairport-sync,
benchmarks/shairport_reference.sh does the set-up and alternates the two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raopd.tools.sender import (  # noqa: E402
    CODECS,
    DEFAULT_LATENCY_FRAMES,
    CodecName,
    RaopSender,
    SenderOptions,
    load_wav,
)
from tests.e2e.daemon import DEVICE_ID, Daemon, free_tcp_port, read_wav  # noqa: E402
from tests.house.broker import Broker  # noqa: E402

COVER = ROOT / "tests" / "captures" / "art.jpg"

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


class RssSampler:
    """Reads a process's VmRSS and RssAnon every `interval` seconds in a thread.

    A thread rather than a task so that a sample is taken on time whatever the sender's
    event loop is doing, and the sender's pacing does not wait for /proc.
    """

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (monotonic s, VmRSS kB, RssAnon kB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the end of the stream is always in the last window

    def _sample(self) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.samples.append(
                (time.monotonic(), status_kb(self.pid, "VmRSS"), status_kb(self.pid, "RssAnon"))
            )

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def trend(self, window: float) -> dict[str, object]:
        """First vs last `window` seconds: median MB and slope in MB per 10 minutes."""
        if len(self.samples) < 2:
            return {"samples": len(self.samples)}
        t0 = self.samples[0][0]
        t = np.array([s[0] - t0 for s in self.samples])
        series = {
            "rss": np.array([s[1] for s in self.samples]) / 1024,
            "anon": np.array([s[2] for s in self.samples]) / 1024,
        }
        # Half an interval of slack: a sample due at `window` s may come a moment late.
        first = t <= window + self.interval / 2
        last = t >= t[-1] - window - self.interval / 2

        def summary(mask: npt.NDArray[np.bool_]) -> dict[str, object]:
            line: dict[str, object] = {
                "from_s": round(float(t[mask][0]), 1),
                "to_s": round(float(t[mask][-1]), 1),
                "samples": int(mask.sum()),
            }
            for name, mb in series.items():
                line[f"median_{name}_mb"] = round(float(np.median(mb[mask])), 2)
                line[f"slope_{name}_mb_per_10min"] = slope(t[mask], mb[mask])
            return line

        return {
            "interval_s": self.interval,
            "window_s": window,
            "samples": len(self.samples),
            "first": summary(first),
            "last": summary(last),
            "whole": {f"slope_{name}_mb_per_10min": slope(t, mb) for name, mb in series.items()},
            "min_rss_mb": round(float(series["rss"].min()), 2),
            "max_rss_mb": round(float(series["rss"].max()), 2),
        }


def slope(t: npt.NDArray[np.float64], mb: npt.NDArray[np.float64]) -> float | None:
    """Least-squares slope of `mb` over `t` (seconds), in MB per 10 minutes."""
    if len(t) < 2 or t[-1] == t[0]:
        return None
    return round(float(np.polyfit(t, mb, 1)[0]) * 600, 3)


def looped(pcm: np.ndarray, frames: int) -> np.ndarray:
    reps = -(-frames // len(pcm))
    return np.ascontiguousarray(np.concatenate([pcm] * reps)[:frames])


def test_audio(seconds: float) -> np.ndarray:
    """test30.wav looped and cut to `seconds`."""
    return looped(load_wav(ROOT / "tests" / "captures" / "test30.wav"), int(seconds * 44100))


def sender_for(
    host: str,
    port: int,
    speed: float,
    hw_addr: bytes | None,
    codec: CodecName = "alac",
    latency_frames: int = DEFAULT_LATENCY_FRAMES,
) -> RaopSender:
    return RaopSender(
        host,
        port,
        SenderOptions(
            codec=codec,
            encrypt=True,
            speed=speed,
            hw_addr=hw_addr,
            verify=hw_addr is not None,
            latency_frames=latency_frames,
        ),
    )


async def measure(
    sender: RaopSender,
    pid: int,
    source: np.ndarray,
    metadata: bool = False,
    sample_rss: float | None = None,
    rss_window: float = 300.0,
) -> dict[str, object]:
    """Stream `source` and read the receiver's CPU and memory around it (and with
    `sample_rss`, its resident set every that many seconds while the audio plays)."""
    sampler = RssSampler(pid, sample_rss) if sample_rss else None
    try:
        await sender.connect()
        cpu_start = cpu_seconds(pid)
        if metadata:  # what an iPhone sends for a track: DMAP, a cover, progress
            start = sender.report.first_rtptime
            await sender.set_metadata(
                [("minm", b"Title"), ("asar", b"Artist"), ("asal", b"Album")], start
            )
            await sender.set_artwork(COVER.read_bytes(), "image/jpeg", start)
            await sender.set_progress(start, start, start + len(source))
        if sampler is not None:
            sampler.start()
        try:
            await sender.play(source)
        finally:
            if sampler is not None:
                sampler.stop()
        await sender.teardown()
        cpu_end = cpu_seconds(pid)
        peak_kb = status_kb(pid, "VmHWM")
        rss_kb = status_kb(pid, "VmRSS")
        anon_kb = status_kb(pid, "RssAnon")
        file_kb = status_kb(pid, "RssFile")
    finally:
        await sender.close()
    audio_min = len(source) / 44100 / 60
    trend = {} if sampler is None else {"rss_trend": sampler.trend(rss_window)}
    return {
        "audio_s": round(len(source) / 44100, 3),
        "cpu_s_per_audio_min": round((cpu_end - cpu_start) / audio_min, 3),
        "startup_cpu_s": round(cpu_start, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "rss_end_mb": round(rss_kb / 1024, 1),
        "rss_end_anon_mb": round(anon_kb / 1024, 1),
        "rss_end_file_mb": round(file_kb / 1024, 1),
        "packets": sender.report.packets,
        "resend_requests": sender.report.resend_requests,
        **trend,
    }


def contains(out: np.ndarray, source: np.ndarray) -> bool:
    """`source` appears in `out` sample for sample, after whatever silence came first."""
    nonzero = np.flatnonzero(out.any(axis=1))
    if not len(nonzero):
        return False
    start = int(nonzero[0]) - int(np.flatnonzero(source.any(axis=1))[0])
    return start >= 0 and np.array_equal(out[start : start + len(source)], source)


def drain_fifo(path: Path) -> None:
    """Read a FIFO to its end in a thread, as a metadata reader would."""

    def read() -> None:
        with open(path, "rb", buffering=0) as fifo:
            while fifo.read(65536):
                pass

    threading.Thread(target=read, daemon=True).start()


class Page:
    """What an open page does: read the event stream for as long as it is open."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()
        self.events = 0
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        opened = asyncio.Event()

        async def read() -> None:
            async with self.session.get(self.base + "/api/v1/events") as reply:
                assert reply.status == 200, reply.status
                opened.set()
                async for line in reply.content:
                    self.events += line.startswith(b"event: ")

        self.task = asyncio.create_task(read())
        await asyncio.wait_for(opened.wait(), 30)

    async def timings(self, path: str, count: int = 100) -> dict[str, float]:
        """Milliseconds for `count` GETs of `path`, one after the other."""
        times = []
        for _ in range(count):
            started = time.perf_counter()
            async with self.session.get(self.base + path) as reply:
                await reply.read()
                assert reply.status == 200, (path, reply.status)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return {
            "median": round(times[len(times) // 2], 2),
            "p95": round(times[int(len(times) * 0.95)], 2),
            "max": round(times[-1], 2),
        }

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.session.close()


async def run(
    seconds: float,
    speed: float,
    codec: CodecName = "alac",
    root: Path = ROOT,
    latency_frames: int = DEFAULT_LATENCY_FRAMES,
    house: bool = False,
    page: bool = False,
    sample_rss: float | None = None,
    rss_window: float = 300.0,
) -> dict[str, object]:
    """raopd (of the checkout `root`), started here with --output to a WAV file (and with
    `house`: the metadata pipe with a reader, MQTT to a Mosquitto started here, and hooks for
    play start/end; with `page`: the web page's event stream open)."""
    source = test_audio(seconds)
    with tempfile.TemporaryDirectory(prefix="raopd-bench-") as tmp:
        extra: list[str] = []
        broker = None
        if house:
            broker = Broker(Path(tmp)).start()
            fifo = Path(tmp) / "metadata"
            os.mkfifo(fifo)
            drain_fifo(fifo)
            extra = [
                "--metadata-pipe", str(fifo),
                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                "--run-before-play-begins", "true", "--run-after-play-ends", "true",
            ]  # fmt: skip
        viewer = None
        if page:
            http_port = free_tcp_port()
            extra += ["--http-port", str(http_port)]
            viewer = Page(http_port)
        daemon = Daemon(Path(tmp), extra, root)
        await daemon.start()
        assert daemon.process is not None
        sender = sender_for(
            "127.0.0.1", daemon.port, speed, bytes.fromhex(DEVICE_ID), codec, latency_frames
        )
        try:
            if viewer is not None:
                await viewer.open()
            result = await measure(
                sender,
                daemon.process.pid,
                source,
                metadata=True,
                sample_rss=sample_rss,
                rss_window=rss_window,
            )
            if viewer is not None:
                result["page_events"] = viewer.events
                result["http_ms"] = {
                    "metrics": await viewer.timings("/metrics"),
                    "state": await viewer.timings("/api/v1/state"),
                    "healthz": await viewer.timings("/healthz"),
                }
        finally:
            if viewer is not None:
                await viewer.close()
            code = await daemon.stop()
            if broker is not None:
                broker.stop()
        out = read_wav(daemon.output)
    return {
        "receiver": "raopd" if root == ROOT else f"raopd ({root})",
        "codec": codec,
        "sync_latency_frames": latency_frames,
        "house": house,
        "page": page,
        **result,
        "speed": speed,
        "bit_exact": bool(out.shape == source.shape and np.array_equal(out, source)),
        "sender_max_lateness_s": round(sender.report.max_lateness, 4),
        "daemon_exit": code,
    }


async def run_against(
    address: str,
    pid: int,
    raw_output: Path | None,
    seconds: float,
    speed: float,
    sample_rss: float | None = None,
    rss_window: float = 300.0,
) -> dict[str, object]:
    """Another receiver, already running (benchmarks/shairport_reference.sh starts one)."""
    source = test_audio(seconds)
    host, _, port = address.rpartition(":")
    result = await measure(
        sender_for(host, int(port), speed, None),
        pid,
        source,
        sample_rss=sample_rss,
        rss_window=rss_window,
    )
    line: dict[str, object] = {"receiver": Path(f"/proc/{pid}/exe").resolve().name, **result}
    line["speed"] = speed
    if raw_output is not None:
        await asyncio.sleep(3.0)  # a timed receiver still has its latency's worth to write
        out = np.fromfile(raw_output, "<i2")
        line["bit_exact"] = contains(out[: len(out) // 2 * 2].reshape(-1, 2), source)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument(
        "--codec",
        choices=CODECS,
        default="alac",
        help="what the sender sends: compressed ALAC (default), verbatim ALAC frames with "
        "END, verbatim frames without END as PipeWire and PulseAudio send them, or L16",
    )
    parser.add_argument(
        "--latency-frames",
        type=int,
        default=DEFAULT_LATENCY_FRAMES,
        help="the latency in the sender's sync packets (0: PipeWire's 250 ms in all)",
    )
    parser.add_argument(
        "--receiver-root",
        type=Path,
        default=ROOT,
        help="a checkout whose raopd to measure (default: this one), for before/after",
    )
    parser.add_argument(
        "--against", metavar="HOST:PORT", help="measure this running receiver instead of raopd"
    )
    parser.add_argument("--pid", type=int, help="its process id (with --against)")
    parser.add_argument(
        "--raw-output", type=Path, help="its raw S16_LE stereo output, to check (with --against)"
    )
    parser.add_argument(
        "--house",
        action="store_true",
        help="with the metadata pipe (and a reader), MQTT (a local Mosquitto) and hooks on",
    )
    parser.add_argument(
        "--page",
        action="store_true",
        help="with the web page's event stream open, then time /metrics and /api/v1/state",
    )
    parser.add_argument(
        "--sample-rss",
        type=float,
        metavar="N",
        help="read raopd's VmRSS/RssAnon every N seconds while the audio plays and compare "
        "the first and last --rss-window seconds (median, slope in MB per 10 min)",
    )
    parser.add_argument(
        "--rss-window",
        type=float,
        default=300.0,
        metavar="S",
        help="the length of the first and last windows compared (default 300 s)",
    )
    args = parser.parse_args()
    if args.sample_rss is not None and not args.sample_rss > 0:
        parser.error("--sample-rss must be a positive number of seconds")
    if args.against:
        if args.pid is None:
            parser.error("--against needs --pid")
        line = asyncio.run(
            run_against(
                args.against,
                args.pid,
                args.raw_output,
                args.seconds,
                args.speed,
                args.sample_rss,
                args.rss_window,
            )
        )
    else:
        line = asyncio.run(
            run(
                args.seconds,
                args.speed,
                args.codec,
                args.receiver_root,
                args.latency_frames,
                args.house,
                args.page,
                args.sample_rss,
                args.rss_window,
            )
        )
    print(json.dumps(line))


if __name__ == "__main__":
    main()
