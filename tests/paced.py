"""A paced audio output for tests: ALSA `pulse` PCMs into one PulseAudio sink, recorded whole.

ALSA's `null` device takes audio as fast as it is written, so timing bugs that only show on a
device that consumes 44.1 kHz in real time (underflows, sync error, late starts) never show on
it. This fixture runs a private PulseAudio daemon whose only real sink is `module-pipe-sink`
with `use_system_clock_for_timing=yes`: a sink that renders on a timer exactly like a DAC
without a clock of its own (the monotonic clock), and writes every rendered frame, silence
included, into a FIFO that a thread here reads. So:

* every output shares **one clock and one recording**: output *k* is a `module-remap-sink`
  onto channels 2k and 2k+1 of the master sink, so two receivers played through `paced0` and
  `paced1` can be compared frame by frame without any alignment guesswork;
* the recording is continuous from the moment the sink loads (no client-side start-up loss,
  which `parec` on a monitor source showed here: it missed 250 ms-1 s at the start);
* at 100 % volume with one stream per output, PulseAudio passes the samples through unchanged
  (checked by `tests/test_paced.py`), so a bit-exact receiver stays bit-exact in the recording.

A process plays to it through ALSA with `ALSA_CONFIG_PATH` set to `PacedOutput.alsa_config`
and device `paced<k>`; the PCMs report underruns (`handle_underrun`), which raopd counts.

Each read from the FIFO is stamped with `time.monotonic()`: `frame_times()` gives the
recording's frame-to-time relation, good to the granularity of the sink's writes, for tests
that need to relate a recorded frame to the clock a receiver schedules against.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

RATE = 44100
T = TypeVar("T")
SAMPLE_BYTES = 2  # s16le
START_TIMEOUT = 20.0  # seconds for the daemon and its FIFO to appear on a loaded machine


MACHINE_PAUSE = 0.15
"""A gap between two of the recorder's reads longer than this (s) means the whole machine
paused: quiet runs, and runs beside six busy processes, read at most 84 ms apart (the sink
writes in blocks of up to ~50 ms when one stream with a long latency plays, and once a
longer gap when a stream starts)."""

STOLEN = 0.04
"""CPU time (s) the hypervisor took from one CPU within one ~20 ms sample that makes a run
disturbed: a thread on that CPU (the output thread, PulseAudio) did not run for that long.
Here, idle and during one paced test: at most 20 ms in any sample; during a whole CI run
(17 min, 50 samples a second): 30 ms 8 times, 40 ms 3 times, 50 ms once."""


@dataclass(frozen=True)
class Disturbances:
    """What the machine did to the recording itself (`PacedOutput.disturbances`)."""

    longest_read_gap_s: float
    longest_read_gap_at_s: float
    """Where the longest gap began, s from the first read."""
    longest_steal_s: float
    """The most CPU time the hypervisor took from one CPU within one sample (`StealWatch`)."""
    sink_steps: int
    """Times the sink's clock moved by more than 1 ms (a stream starting, or PulseAudio not
    scheduled in time); the frame times follow them (`sink_clock`)."""
    sink_steps_s: float
    sink_steps_at_s: list[float]

    @property
    def machine_paused(self) -> bool:
        """The machine did not run the receivers and the sink for a while: no receiver can be
        judged on such a run (a 150 ms pause every 3 s gave 10-25 ms errors against the
        sink's clock in every receiver; 80 ms every 10 s, an underrun for a 250 ms sender)."""
        return self.longest_read_gap_s > MACHINE_PAUSE or self.longest_steal_s >= STOLEN


class StealWatch:
    """Samples each CPU's steal time (/proc/stat) every 20 ms while a paced output runs.

    On a virtual machine the host can take a CPU away: steal time. CI hosts do (2.5 % of
    this machine's CPU time since boot, in ticks of 10 ms); a few tens of ms at once stop
    the output thread or PulseAudio as surely as a pause of the whole machine.
    """

    def __init__(self, path: Path = Path("/proc/stat"), interval: float = 0.02) -> None:
        self.path = path
        self.interval = interval
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steal-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        tick = 1.0 / os.sysconf("SC_CLK_TCK")
        before = per_cpu_steal(self.path.read_text())
        while not self._stop.wait(self.interval):
            now = per_cpu_steal(self.path.read_text())
            self.longest = max(self.longest, most_stolen(before, now) * tick)
            before = now


def per_cpu_steal(stat: str) -> dict[str, int]:
    """Steal ticks per CPU from the text of /proc/stat (the 8th value of each `cpuN` line)."""
    return {
        fields[0]: int(fields[8])
        for fields in (line.split() for line in stat.splitlines())
        if fields and fields[0].startswith("cpu") and fields[0] != "cpu" and len(fields) > 8
    }


def most_stolen(before: dict[str, int], after: dict[str, int]) -> int:
    """The most steal ticks any one CPU gained between two samples."""
    return max((after[cpu] - before.get(cpu, after[cpu]) for cpu in after), default=0)


@dataclass
class PacedOutput:
    """A running paced sink: `outputs` stereo ALSA PCMs, one recording of them all."""

    directory: Path
    outputs: int
    alsa_config: Path
    server: str
    process: subprocess.Popen[bytes]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _data: bytearray = field(default_factory=bytearray)
    _stamps: list[tuple[float, int]] = field(default_factory=list)
    _steal: StealWatch | None = None

    @property
    def channels(self) -> int:
        return 2 * self.outputs

    def device(self, index: int = 0) -> str:
        """The ALSA PCM name of output `index`."""
        if not 0 <= index < self.outputs:
            raise IndexError(f"paced output {index} of {self.outputs}")
        return f"paced{index}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process that plays to the paced outputs through ALSA."""
        return {"ALSA_CONFIG_PATH": str(self.alsa_config)}

    def recorded_frames(self) -> int:
        with self._lock:
            return len(self._data) // (SAMPLE_BYTES * self.channels)

    def recording(self) -> np.ndarray:
        """Everything recorded so far: int16 (frames, 2 * outputs)."""
        with self._lock:
            usable = len(self._data) - len(self._data) % (SAMPLE_BYTES * self.channels)
            data = bytes(self._data[:usable])
        return np.frombuffer(data, dtype="<i2").reshape(-1, self.channels)

    def output(self, index: int = 0) -> np.ndarray:
        """What output `index` played, so far: int16 (frames, 2), on the shared timeline."""
        self.device(index)
        return np.ascontiguousarray(self.recording()[:, 2 * index : 2 * index + 2])

    def frame_times(self) -> tuple[float, float]:
        """(time of frame 0 on the monotonic clock, seconds per frame), fitted to the reads.

        A read returns frames the sink had rendered by then, so each stamp is an upper bound
        of its last frame's time; the lower envelope is the tightest estimate. The slope is
        fitted by least squares and the line then lowered to touch the earliest stamps.
        """
        with self._lock:
            stamps = np.array(self._stamps, dtype=float)
        if len(stamps) < 2:
            raise ValueError("not enough of the recording yet")
        times, ends = stamps[:, 0], stamps[:, 1] / (SAMPLE_BYTES * self.channels)
        slope, _ = np.polyfit(ends, times, 1)
        origin = float(np.min(times - slope * ends))
        return origin, float(slope)

    def sink_clock(self, window: float = 1.0) -> SinkClock:
        """The sink's frame-to-time relation so far; unlike `frame_times()`, it follows a sink
        whose clock steps (`sink_clock`)."""
        times, ends = self._stamp_arrays()
        return sink_clock(times, ends, window)

    def disturbances(self, clock: SinkClock | None = None, step: float = 0.001) -> Disturbances:
        """How far the machine disturbed the recording itself: the longest time between two
        reads (a paused machine: nothing ran, the receivers' output thread included), the
        most CPU time the host took at once (`StealWatch`), and the steps of the sink's clock
        (s) larger than `step`, counted and summed. `clock`: this recording's `sink_clock()`,
        if the caller has it already."""
        times, ends = self._stamp_arrays()
        clock = clock or sink_clock(times, ends)
        # The last window's reads have too few after them for a tight bound, and the sink
        # settles its timing in its first 0.1 s (8 ms steps there in quiet runs): not steps.
        span = clock.window / clock.period
        settled = (ends[1:] >= ends[0] + span) & (ends[1:] <= ends[-1] - span)
        jumps = np.abs(np.diff(clock.tightest))
        at = np.flatnonzero(settled & (jumps > step))
        gaps = np.diff(times)
        return Disturbances(
            longest_read_gap_s=float(gaps.max()),
            longest_read_gap_at_s=round(float(times[gaps.argmax()] - times[0]), 2),
            longest_steal_s=self._steal.longest if self._steal is not None else 0.0,
            sink_steps=len(at),
            sink_steps_s=float(jumps[at].sum()),
            sink_steps_at_s=[round(float(times[i] - times[0]), 2) for i in at],
        )

    def _stamp_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            stamps = np.array(self._stamps, dtype=float)
        if len(stamps) < 2:
            raise ValueError("not enough of the recording yet")
        return stamps[:, 0], stamps[:, 1] / (SAMPLE_BYTES * self.channels)

    def _read(self, fifo: Path) -> None:
        with fifo.open("rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                now = time.monotonic()
                with self._lock:
                    self._data += chunk
                    self._stamps.append((now, len(self._data)))


@dataclass(frozen=True)
class SinkClock:
    """The sink's frame-to-time relation as the recorder's reads bound it."""

    ends: np.ndarray
    """Frames recorded by each read."""
    period: float
    """Seconds per frame."""
    window: float
    """Seconds after a frame whose reads bound its time."""
    tightest: np.ndarray
    """Per read: the tightest bound on the time of frame 0 from the reads within the window
    after it (steps where the sink lost time)."""

    def times(self, frames: np.ndarray) -> np.ndarray:
        """When each frame index was rendered."""
        first = np.clip(np.searchsorted(self.ends, frames, side="right"), 0, len(self.ends) - 1)
        return frames * self.period + self.tightest[first]


def sink_clock(times: np.ndarray, ends: np.ndarray, window: float = 1.0) -> SinkClock:
    """From reads stamped `times` that had recorded `ends` frames, when each frame was rendered.

    A PulseAudio that is not scheduled for a while (a loaded or paused machine) renders less
    than the time that passed, and one line through the whole recording is then wrong by that
    step for every frame after it. A read that ends at frame e, stamped t, bounds every frame
    f <= e: rendered by t - (e - f) * period. Frame f takes the tightest bound among the reads
    that end within `window` s after it, so a step moves only the frames after it (and those
    of the one read that spans it: where in the read it fell is unknowable).
    """
    period = _period(times, ends)
    bounds = times - ends * period  # each read's bound on the time of frame 0
    return SinkClock(ends, period, window, _forward_minimum(ends, bounds, window / period))


def _period(times: np.ndarray, ends: np.ndarray) -> float:
    """Seconds per rendered frame, robust to steps of the sink's clock: the earliest read of
    each second is the tightest point of the line, and the median slope between neighbouring
    seconds' points ignores the few pairs a step falls between."""
    second = np.floor(times - times[0]).astype(np.int64)
    points = []
    for s in np.unique(second):
        inside = np.flatnonzero(second == s)
        best = inside[np.argmin(times[inside] - ends[inside] / RATE)]
        points.append((ends[best], times[best]))
    if len(points) < 3:
        return float(np.polyfit(ends, times, 1)[0])
    e, t = np.array(points).T
    return float(np.median(np.diff(t) / np.diff(e)))


def _forward_minimum(ends: np.ndarray, values: np.ndarray, span: float) -> np.ndarray:
    """For each read j, the minimum of `values` over the reads whose end is within `span`
    frames after read j's end (read j included)."""
    out = np.empty_like(values)
    window: deque[int] = deque()  # newest (smallest index) left; values increase to the left
    for j in range(len(values) - 1, -1, -1):
        while window and values[window[0]] >= values[j]:
            window.popleft()
        window.appendleft(j)
        while ends[window[-1]] > ends[j] + span:
            window.pop()
        out[j] = values[window[-1]]
    return out


def _pulse_script(socket: Path, fifo: Path, outputs: int) -> str:
    """PulseAudio start-up commands: the timed pipe sink and one remap sink per output."""
    channels = 2 * outputs
    master_map = ",".join(f"aux{i}" for i in range(channels))
    lines = [
        f"load-module module-native-protocol-unix socket={socket} auth-anonymous=1",
        f"load-module module-pipe-sink sink_name=paced file={fifo} format=s16le rate={RATE} "
        f"channels={channels} channel_map={master_map} use_system_clock_for_timing=yes",
    ]
    for k in range(outputs):
        lines.append(
            f"load-module module-remap-sink sink_name=paced{k} master=paced channels=2 "
            f"master_channel_map=aux{2 * k},aux{2 * k + 1} channel_map=front-left,front-right "
            "remix=no"
        )
    lines.append("set-default-sink paced0")
    return "\n".join(lines) + "\n"


def _alsa_config(server: str, outputs: int) -> str:
    pcms = []
    for k in range(outputs):
        pcms.append(
            f'pcm.paced{k} {{\n    type pulse\n    server "{server}"\n'
            f'    device "paced{k}"\n    handle_underrun true\n}}\n'
        )
    return "".join(pcms)


@contextmanager
def paced_output(directory: Path, outputs: int = 1) -> Iterator[PacedOutput]:
    """Start the private PulseAudio daemon and the recorder; stop and clean up afterwards.

    Needs Debian's `pulseaudio` and `libasound2-plugins` (the ALSA `pulse` PCM).
    """
    if shutil.which("pulseaudio") is None:
        raise RuntimeError("pulseaudio is not installed (apt-get install pulseaudio)")
    home = directory / "pulse"
    home.mkdir(parents=True, exist_ok=True)
    socket, fifo, script = home / "native", home / "paced.fifo", home / "paced.pa"
    script.write_text(_pulse_script(socket, fifo, outputs))
    server = f"unix:{socket}"
    alsa_config = directory / "asound-paced.conf"
    alsa_config.write_text(_alsa_config(server, outputs))
    env = dict(os.environ)
    # A private daemon: its own home and runtime dir, no D-Bus, no autospawned sibling.
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home),
        XDG_CONFIG_HOME=str(home),
        PULSE_RUNTIME_PATH=str(home),
    )
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    log = (directory / "pulseaudio.log").open("wb")
    process = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--realtime=no",
            "--high-priority=no",
            "--log-target=stderr",
            "--system=no",
            "-F",
            str(script),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    paced = PacedOutput(directory, outputs, alsa_config, server, process)
    reader: threading.Thread | None = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (socket.exists() and fifo.exists()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "paced PulseAudio did not start:\n"
                    + (directory / "pulseaudio.log").read_text(errors="replace")
                )
            time.sleep(0.02)
        reader = threading.Thread(target=paced._read, args=(fifo,), name="paced-recorder")
        reader.start()
        paced._steal = StealWatch()
        paced._steal.start()
        while paced.recorded_frames() == 0:  # the sink renders (silence) from the start
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the paced sink wrote nothing")
            time.sleep(0.02)
        yield paced
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if reader is not None:
            reader.join(timeout=10)
        if paced._steal is not None:
            paced._steal.stop()


def until_undisturbed(
    run: Callable[[Path], tuple[T, Disturbances]], directory: Path, attempts: int = 3
) -> T:
    """`run(attempt_directory)`, repeated (at most `attempts` times) while the machine paused
    under it (`Disturbances.machine_paused`); fails if it never let one through.

    A machine that stops everything for a moment (a shared CI host) stops the paced sink too,
    and the sink loses time; a DAC does not, so such a run says nothing about a receiver.
    `run` returns its result and what the machine did during it; the result of the first
    undisturbed run is returned.
    """
    seen = []
    for attempt in range(attempts):
        result, disturbances = run(directory / f"attempt{attempt}")
        if not disturbances.machine_paused:
            return result
        seen.append(disturbances)
    pytest.fail(f"the machine paused under the recording in all {attempts} attempts: {seen}")


def undisturbed(
    play: Callable[[PacedOutput], T], directory: Path, outputs: int = 1, attempts: int = 3
) -> tuple[T, PacedOutput]:
    """`play(paced)` on a fresh paced output until the machine leaves a run alone
    (`until_undisturbed`): what `play` returned and the paced output (its recording stays
    readable)."""

    def run(attempt_directory: Path) -> tuple[tuple[T, PacedOutput], Disturbances]:
        with paced_output(attempt_directory, outputs) as paced:
            result = play(paced)
        return (result, paced), paced.disturbances()

    return until_undisturbed(run, directory, attempts)
