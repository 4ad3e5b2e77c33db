"""Two receivers, one sender, one recording: sync measured on a paced output with real programs.

Shared by tests/test_sync_live.py (CI, short) and benchmarks/sync_live.py (more scenarios).

* The paced output (tests/paced.py) records every output through one clock.
* The receivers (raopd, or Debian's shairport-sync) run in a private network namespace with
  only a loopback interface, each playing through ALSA's `pulse` plugin to its own output.
  shairport-sync cannot run without Avahi, and Avahi not without a system D-Bus: the namespace
  gets its own avahi-daemon (and the host a system bus if it has none), so nothing is announced
  on a real network.
* One sender (raopd's own, `raopd.tools.sender`) streams the same noise to both: one
  `RaopSender` per receiver, started at the same loop time, so both carry the same sender
  timeline; with `burst` it sends in bursts and stamps its sync packets at burst time, as
  node-airtunes2 does.
* The walk: every recorded frame is located in the source (pairs of noise frames are unique),
  which gives, per source frame, the recorded frame it came out at. The recording's clock
  (`frame_times()`, plus one sink chunk: the sink's own latency model, which
  benchmarks/alsa_delay.py showed `snd_pcm_delay` follows within +-0.6 ms) says when it was
  heard; the sender's start says when it was meant to be (latency 88200 frames = 2 s).

Figures per receiver: true sync error (heard - meant) median/p99/max after 2 s, bit-exact
fraction (recorded frames that are the source's, in order, over the played span), and for
raopd its own statistics (sync error median/p99/max, resyncs, corrections, DAC drift). Per pair:
the offset between the two receivers on the same source frames, median and p99.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tests.paced import RATE, Disturbances, PacedOutput, paced_output

REPO = Path(__file__).resolve().parents[1]
LATENCY_S = 88200 / RATE  # the sender's 77175 + the fixed 11025 frames
DEADLINE = 30.0

SENDER = r"""
import asyncio, json, sys
import numpy as np
from raopd.tools.sender import RaopSender, SenderOptions

async def main():
    ports = [int(p) for p in sys.argv[1].split(",")]
    seconds, burst, seed = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(seed)
    pcm = rng.integers(-8000, 8000, size=(int(seconds * 44100), 2)).astype(np.int16)
    options = SenderOptions(codec="alac-verbatim", volume=0.0, burst=burst or None, linger=2.5)
    senders = [RaopSender("127.0.0.1", port, options) for port in ports]
    for sender in senders:
        await sender.connect()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.3
    await asyncio.gather(*(s.play(pcm, start=start) for s in senders))
    for sender in senders:
        await sender.teardown()
        await sender.close()
    print(json.dumps({"start": start, "syncs": [s.report.syncs for s in senders]}))

asyncio.run(main())
"""


def source(seconds: float, seed: int) -> np.ndarray:
    """The noise the sender plays (the same generator as SENDER)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, size=(int(seconds * RATE), 2)).astype(np.int16)


@dataclass
class Receiver:
    kind: str  # "raopd" or "shairport-sync"
    port: int
    output: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """A network namespace with only loopback up."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def wait_for_port(ns: str, port: int, receiver: Receiver) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        listening = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-ltnH", f"sport = :{port}"],
            capture_output=True,
            text=True,
        ).stdout
        if listening.strip():
            return
        if receiver.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{receiver.kind} did not start:\n{receiver.log}")
        time.sleep(0.1)


def start_raopd(
    ns: str, paced: PacedOutput, output: int, port: int, directory: Path, *extra: str
) -> Receiver:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAOPD_")}
    env.update(
        paced.env,
        PYTHONPATH=str(REPO),
        RAOPD_STATISTICS_INTERVAL="0.5",
        RAOPD_UDP_PORT_BASE=str(port + 100),
    )
    log_path = directory / f"raopd{output}.log"
    args = [
        "--device",
        paced.device(output),
        "--port",
        str(port),
        "--http-port",
        "0",
        "--name",
        f"raopd-{output}",
        "--state-dir",
        str(directory / f"state{output}"),
        "--statistics",
        *extra,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "raopd", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
        )
    receiver = Receiver("raopd", port, output, log_path, process)
    wait_for_port(ns, port, receiver)
    return receiver


@contextmanager
def avahi(ns: str, directory: Path) -> Iterator[None]:
    """An avahi-daemon in the namespace (and a system D-Bus on the host if there is none)."""
    for tool in ("avahi-daemon", "dbus-daemon", "shairport-sync"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"needs {tool} (apt-get install shairport-sync avahi-daemon dbus)")
    dbus_pid = None
    pid_file = Path("/run/dbus/pid")
    alive = pid_file.exists() and Path(f"/proc/{pid_file.read_text().strip()}").exists()
    if not alive:
        Path("/run/dbus").mkdir(parents=True, exist_ok=True)
        for stale in (pid_file, Path("/run/dbus/system_bus_socket")):
            stale.unlink(missing_ok=True)
        out = subprocess.run(
            ["dbus-daemon", "--system", "--fork", "--print-pid"],
            capture_output=True,
            text=True,
            check=True,
        )
        dbus_pid = int(out.stdout.split()[0])
    Path("/run/avahi-daemon").mkdir(parents=True, exist_ok=True)
    log_path = directory / "avahi.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "avahi-daemon", "--no-drop-root", "--no-chroot"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + DEADLINE
        while "Server startup complete" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("avahi-daemon did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)
        if dbus_pid is not None:
            os.kill(dbus_pid, signal.SIGTERM)


def start_shairport(
    ns: str,
    paced: PacedOutput,
    output: int,
    port: int,
    directory: Path,
    tolerance: float | None = None,
) -> Receiver:
    """Debian's shairport-sync on ALSA output `output`: volume ignored (bit-exact), "basic"
    interpolation (single-frame stuffing, like raopd; its default soxr resamples all the time),
    its drift tolerance `tolerance` s (None: its default, 2 ms)."""
    conf = directory / "sps.conf"
    conf.write_text(
        "general = {\n"
        f'  name = "sps-{output}";\n'
        f"  port = {port};\n"
        '  mdns_backend = "avahi";\n'
        '  ignore_volume_control = "yes";\n'
        '  interpolation = "basic";\n'
        f"  udp_port_base = {port + 100};\n"
        + (f"  drift_tolerance_in_seconds = {tolerance};\n" if tolerance is not None else "")
        + "};\n"
        "alsa = {\n"
        f'  output_device = "{paced.device(output)}";\n'
        "};\n"
        "diagnostics = {\n"
        '  statistics = "yes";\n'
        "};\n"
    )
    env = dict(os.environ)
    env.update(paced.env)
    log_path = directory / f"sps{output}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "shairport-sync", "-c", str(conf), "-o", "alsa"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    receiver = Receiver("shairport-sync", port, output, log_path, process)
    wait_for_port(ns, port, receiver)
    return receiver


def run_sender(
    ns: str, ports: list[int], seconds: float, burst: float, seed: int
) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-c",
            SENDER,
            ",".join(map(str, ports)),
            str(seconds),
            str(burst),
            str(seed),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sender failed:\n{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@dataclass
class Walk:
    """Where each source frame came out in one output's recording (-1: not found)."""

    position: np.ndarray
    exact_fraction: float
    audio_frames: int


def _keys(frames: np.ndarray) -> np.ndarray:
    """One 64-bit key per frame and its successor (noise: unique pairs)."""
    words = np.ascontiguousarray(frames).view(np.uint32).ravel().astype(np.uint64)
    return (words[:-1] << np.uint64(32)) | words[1:]


def walk(src: np.ndarray, recorded: np.ndarray) -> Walk:
    keys = _keys(src)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    rec_keys = _keys(recorded)
    slot = np.clip(np.searchsorted(sorted_keys, rec_keys), 0, len(sorted_keys) - 1)
    matched = sorted_keys[slot] == rec_keys
    silent = (recorded[:-1] == 0).all(axis=1)
    matched &= ~silent
    position = np.full(len(src), -1, dtype=np.int64)
    rec_index = np.flatnonzero(matched)
    position[order[slot[matched]]] = rec_index
    if len(rec_index) == 0:
        return Walk(position, 0.0, 0)
    span = rec_index[-1] - rec_index[0] + 1
    return Walk(position, len(rec_index) / span, int(span))


STAT = re.compile(
    r"Sync Error ms: ([+-][\d.]+).*?Resyncs: (\d+), .*?Corrections: \+(\d+)/-(\d+), "
    r"DAC Drift PPM: ([+-][\d.]+)"
)


def raopd_statistics(log: str) -> list[tuple[float, int, int, int, float]]:
    """(sync error ms, resyncs, inserted, dropped, DAC drift ppm) per statistics line."""
    rows = []
    for match in STAT.finditer(log):
        error, resyncs, inserted, dropped, drift = match.groups()
        rows.append((float(error), int(resyncs), int(inserted), int(dropped), float(drift)))
    return rows


def _percentiles(values: np.ndarray) -> dict[str, float]:
    a = np.abs(values)
    if len(a) == 0:
        return {"median": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {
        "median": round(float(np.median(a)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
    }


@dataclass
class Run:
    """One scenario's figures."""

    scenario: str
    receivers: list[dict[str, object]] = field(default_factory=list)
    offset_ms: dict[str, float | int] = field(default_factory=dict)
    disturbances: Disturbances | None = None
    """What the machine did to the recording itself (`PacedOutput.disturbances`)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "receivers": self.receivers,
            "offset_ms": self.offset_ms,
            "disturbances": asdict(self.disturbances) if self.disturbances else None,
        }


def scenario(
    directory: Path,
    kinds: tuple[str, str],
    *,
    seconds: float = 30.0,
    burst: float = 0.0,
    seed: int = 1,
    sps_tolerance: float | None = None,
) -> Run:
    """Play `seconds` of noise from one sender to two receivers of `kinds`; the figures."""
    name = f"{kinds[0]}+{kinds[1]} {'burst %g ms' % (burst * 1e3) if burst else 'accurate'}"
    if sps_tolerance is not None and "shairport-sync" in kinds:
        name += f" (shairport-sync tolerance {sps_tolerance * 1e3:g} ms)"
    src = source(seconds, seed)
    ns = f"raopd-sync-{os.getpid()}"
    ports = [5100, 5200]
    with ExitStack() as stack:
        paced = stack.enter_context(paced_output(directory, outputs=2))
        stack.enter_context(namespace(ns))
        if "shairport-sync" in kinds:
            stack.enter_context(avahi(ns, directory))
        receivers = []
        for index, kind in enumerate(kinds):
            if kind == "raopd":
                receiver = start_raopd(ns, paced, index, ports[index], directory)
            else:
                receiver = start_shairport(ns, paced, index, ports[index], directory, sps_tolerance)
            stack.callback(receiver.stop)
            receivers.append(receiver)
        sent = run_sender(ns, ports, seconds, burst, seed)
        start = float(sent["start"])  # type: ignore[arg-type]
        # The last frame is heard LATENCY_S after it was sent; then a margin.
        until = start + seconds + LATENCY_S + 1.0
        while time.monotonic() < until:
            time.sleep(0.1)
        chunk = _chunk_frames(paced)
        clock = paced.sink_clock()
        disturbances = paced.disturbances(clock)
        np.save(directory / "recorder_stamps.npy", np.array(paced._stamps, dtype=float))
        outputs = [paced.output(index) for index in range(2)]
        logs = []
        for receiver in receivers:
            receiver.stop()
            logs.append(receiver.log)
    run = Run(name, disturbances=disturbances)
    meant = start + np.arange(len(src)) / RATE + LATENCY_S
    heard_at = []
    for receiver, recorded, log in zip(receivers, outputs, logs, strict=True):
        # Kept beside the error series for a look at a run afterwards.
        (directory / f"receiver{receiver.output}.log").write_text(log)
        walked = walk(src, recorded)
        found = walked.position >= 0
        heard = np.full(len(src), np.nan)
        heard[found] = clock.times(walked.position[found]) + chunk / RATE
        heard_at.append(heard)
        settled = found & (meant >= meant[0] + 2.0)
        np.save(directory / f"error{receiver.output}.npy", (heard - meant)[:: RATE // 10])
        per_second = (heard - meant)[: len(src) // RATE * RATE].reshape(-1, RATE)
        figures: dict[str, object] = {
            "kind": receiver.kind,
            "true_error_ms": _percentiles((heard[settled] - meant[settled]) * 1e3),
            "true_error_signed_median_ms": round(
                float(np.median((heard[settled] - meant[settled]) * 1e3)), 3
            )
            if settled.any()
            else None,
            "bit_exact_fraction": round(walked.exact_fraction, 5),
            "source_frames_found": round(float(found.mean()), 5),
            "true_error_per_second_ms": [
                None if np.isnan(second).all() else round(float(np.nanmedian(second)) * 1e3, 2)
                for second in per_second
            ],
        }
        if receiver.kind == "raopd":
            rows = raopd_statistics(log)
            # Statistics lines every 0.5 s: leave out the first 2 s of audio (4 lines).
            playing = [r for r in rows[4:]]
            errors = np.array([r[0] for r in playing])
            last = rows[-1] if rows else (0.0, 0, 0, 0, 0.0)
            figures.update(
                {
                    "own_sync_error_ms": _percentiles(errors),
                    "resyncs": last[1],
                    "corrections": {"inserted": last[2], "dropped": last[3]},
                    "dac_drift_ppm": last[4],
                    "statistics_lines": len(rows),
                }
            )
        run.receivers.append(figures)
    both = ~np.isnan(heard_at[0]) & ~np.isnan(heard_at[1]) & (meant >= meant[0] + 2.0)
    diff = (heard_at[0][both] - heard_at[1][both]) * 1e3
    if len(diff):
        run.offset_ms = {
            "median": round(float(np.median(diff)), 3),
            "p99_abs": round(float(np.percentile(np.abs(diff), 99)), 3),
            "frames_compared": len(diff),
        }
    return run


def _chunk_frames(paced: PacedOutput) -> float:
    stamps = np.array(paced._stamps, dtype=float)
    return float(np.median(np.diff(stamps[:, 1]))) / (2 * paced.channels)
