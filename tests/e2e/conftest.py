"""End-to-end fixtures: a private two-host LAN, raopd as a real subprocess, stock pyatv senders.

Namespace A holds the receiver (raopd), namespace B the senders; a veth pair joins them on
10.78.0.0/24, which exists nowhere else, so real multicast mDNS flows between them without
touching the host's network. IPv6 is off on the veth ends (a link-local address would appear
late, after DAD) but stays on loopback, so `::1` works inside each namespace. Processes run in
a namespace through `ip netns exec`; sockets the test itself needs are created inside one by
switching the calling thread with setns(2) (`Lan.inside`).

Everything waits by polling for a condition with a generous deadline, never by sleeping a
fixed time, so a loaded machine only makes the tests slower, not flaky.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.daemon import Daemon as LoopbackDaemon
from tests.net.conftest import Lan, two_host_lan
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
TEST30 = REPO / "tests" / "captures" / "test30.wav"
SENDER = Path(__file__).with_name("pyatv_sender.py")
DEVICE_ID = "0A1B2C3D4E5F"
RATE = 44100
DEADLINE = 30.0  # seconds: generous bound for one step (start, scan, stream) on a loaded box


@pytest.fixture(scope="session")
def lan() -> Iterator[Lan]:
    """The private LAN for all end-to-end tests (root and iproute2 needed, as in CI)."""
    with two_host_lan("e", "10.78.0", loopback_ipv6=True) as network:
        yield network


# ----------------------------------------------------------------------------------- audio


def read_wav(path: Path) -> np.ndarray:
    """S16_LE stereo frames of a WAV as an int16 array (frames, 2)."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").reshape(-1, 2)


def write_wav(path: Path, frames: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(frames.astype("<i2").tobytes())
    return path


def test_clip(path: Path, start_s: float, seconds: float) -> tuple[Path, np.ndarray]:
    """A piece of test30.wav written to `path`; returns the path and its frames."""
    frames = read_wav(TEST30)[int(start_s * RATE) : int((start_s + seconds) * RATE)]
    return write_wav(path, frames), frames


test_clip.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def trim_silence(frames: np.ndarray) -> np.ndarray:
    """Frames without leading and trailing digital silence (all-zero frames)."""
    loud = np.flatnonzero(np.any(frames != 0, axis=1))
    if len(loud) == 0:
        return frames[:0]
    return frames[loud[0] : loud[-1] + 1]


# ---------------------------------------------------------------------------------- raopd


@dataclass
class Daemon:
    """raopd as a real subprocess in a namespace, logging to a file the test can poll."""

    ns: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = dict(os.environ)
        env.pop("RAOPD_CONFIG", None)
        env = {k: v for k, v in env.items() if not k.startswith("RAOPD_")}
        env["PYTHONPATH"] = str(REPO)
        env.update(self.env)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "raopd", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = DEADLINE, count: int = 1) -> str:
        """Wait until `pattern` (a regex) matched `count` lines of the log; the log so far."""

        def seen() -> str | None:
            text = self.log
            if len(re.findall(pattern, text, re.MULTILINE)) >= count:
                return text
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"raopd exited ({self.process.returncode}) before {pattern!r}:\n{text}"
                )
            return None

        return str(wait_for(seen, f"{pattern!r} in raopd's log", timeout))

    def wait_ready(self) -> None:
        self.wait_log(r"raopd ready: ")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """Send `signum`; (exit code, seconds from the signal to the process's exit)."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"raopd already exited ({self.process.returncode}):\n{self.log}")
        sent = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout=DEADLINE)
        return code, time.monotonic() - sent

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)


class Launcher:
    """Starts raopd in namespace A: `launcher(*extra_args, env=..., ns=..., network=..., bare=...)`.

    By default it listens on A's veth address and advertises on that interface only, with a
    fixed name and device id, a temporary state dir and no HTTP port; `network=False` leaves
    the address and interface options to the caller, `bare=True` every option. `kill_all()`
    ends whatever is still running.
    """

    def __init__(self, lan: Lan, directory: Path) -> None:
        self.lan = lan
        self.directory = directory
        self.started: list[Daemon] = []

    def __call__(
        self,
        *extra: str,
        env: dict[str, str] | None = None,
        ns: str | None = None,
        network: bool = True,
        bare: bool = False,
    ) -> Daemon:
        lan = self.lan
        args: list[str] = []
        if not bare:
            args += ["--name", "E2E", "--device-id", DEVICE_ID, "--http-port", "0"]
            args += ["--state-dir", str(self.directory / "state")]
            if network:
                args += ["--address", lan.a_ip, "--interface", lan.a_if]
        log_path = self.directory / f"raopd-{len(self.started)}.log"
        daemon = Daemon(ns or lan.a, [*args, *extra], log_path, env=env or {})
        self.started.append(daemon)
        return daemon.start()

    def kill_all(self) -> None:
        for daemon in self.started:
            daemon.kill()


@pytest.fixture
def raopd(lan: Lan, tmp_path: Path) -> Iterator[Launcher]:
    """raopd subprocesses for one test (see Launcher)."""
    launcher = Launcher(lan, tmp_path)
    yield launcher
    launcher.kill_all()


# --------------------------------------------------------------------------------- senders


@dataclass
class Sender:
    """A pyatv sender process in namespace B."""

    process: subprocess.Popen[str]
    log_path: Path

    def result(self, timeout: float = 3 * DEADLINE) -> dict[str, str]:
        """Wait for the sender to finish; its last JSON line."""
        out, _ = self.process.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, f"pyatv sender printed nothing; its log:\n{self.log_path.read_text()}"
        result: dict[str, str] = json.loads(lines[-1])
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)


@pytest.fixture
def pyatv_sender(lan: Lan, tmp_path: Path) -> Iterator[Callable[..., Sender]]:
    """Start a stock pyatv sender in namespace B streaming a file to `identifier`."""
    started: list[Sender] = []

    def start(
        path: Path,
        *,
        password: str | None = None,
        unicast: bool = False,
        identifier: str = DEVICE_ID,
        ns: str | None = None,
        volume: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Sender:
        args = [sys.executable, str(SENDER), str(path), "--identifier", identifier]
        if volume is not None:
            args += ["--volume", str(volume)]
        for key, value in (metadata or {}).items():  # title, artist, album, artwork (a path)
            args += [f"--{key}", value]
        if unicast:
            args += ["--host", lan.a_ip]
        if password is not None:
            args += ["--password", password]
        log_path = tmp_path / f"pyatv-{len(started)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns or lan.b, *args],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
            )
        sender = Sender(process, log_path)
        started.append(sender)
        return sender

    yield start
    for sender in started:
        sender.kill()


# ------------------------------------------------------------------------ raw RTSP client

L16_SDP = (
    "v=0\r\no=iTunes 1 0 IN IP4 {local}\r\ns=iTunes\r\nc=IN IP4 {remote}\r\nt=0 0\r\n"
    "m=audio 0 RTP/AVP 96\r\na=rtpmap:96 L16/44100/2\r\n"
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class RtspClient:
    """A minimal blocking RTSP client for poking raopd over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(DEADLINE)
        self.cseq = 0
        self._buffer = b""

    @classmethod
    def connect(cls, lan: Lan, ns: str, host: str, port: int = 5000) -> RtspClient:
        """Connect from inside namespace `ns` (the socket stays there)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = lan.call_in(ns, lambda: socket.socket(family, socket.SOCK_STREAM))
        sock.settimeout(DEADLINE)
        sock.connect((host, port))
        return cls(sock)

    def request(
        self, method: str, uri: str = "*", headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Reply:
        self.cseq += 1
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self.cseq}", "User-Agent: e2e-raw/1.0"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        reply = self.read_reply()
        assert reply.headers.get("cseq") == str(self.cseq), reply
        return reply

    def read_reply(self) -> Reply:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ")
        assert version == "RTSP/1.0", status_line
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Reply(int(status), headers, body)

    def at_eof(self) -> bool:
        """True when the server closed the connection (after what was already buffered)."""
        data = self.sock.recv(4096)
        self._buffer += data
        return data == b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"connection closed; unparsed: {self._buffer!r}")
        self._buffer += data

    def close(self) -> None:
        self.sock.close()


# Loopback daemons for the sender's loss tests (tests/e2e/daemon.py).


@pytest.fixture
def test30() -> np.ndarray:
    with wave.open(str(TEST30), "rb") as wav:
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, "<i2").astype(np.int16).reshape(-1, 2)


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[LoopbackDaemon]]]:
    """`await start_daemon("--no-resend")` -> a running Daemon; stopped at the end."""
    daemons: list[LoopbackDaemon] = []

    async def start(*extra: str) -> LoopbackDaemon:
        workdir = tmp_path / f"daemon{len(daemons)}"
        workdir.mkdir()
        daemon = LoopbackDaemon(workdir, list(extra))
        daemons.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process is not None and daemon.process.returncode is None:
            await daemon.stop()
