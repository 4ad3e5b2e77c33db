"""A real raopd process on loopback, for end-to-end tests with raopd's own sender.

The daemon runs as `python -m raopd --output OUT.wav` bound to 127.0.0.1 with mDNS on the
loopback interface only, so no test traffic reaches a real network. Its RTSP port is picked
free beforehand and its UDP ports come from a random base with room to skip busy ones.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TEST30 = ROOT / "tests" / "captures" / "test30.wav"
DEVICE_ID = "0A1B2C3D4E5F"
START_TIMEOUT = 60.0  # generous: imports on a busy 2-core machine
STOP_TIMEOUT = 20.0


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getsampwidth(), wav.getframerate(), wav.getnchannels()) == (2, 44100, 2)
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, "<i2").astype(np.int16).reshape(-1, 2)


def udp_drops(ports: Iterable[int]) -> int:
    """Datagrams the kernel dropped (receive buffer full) on 127.0.0.1 sockets at `ports`.

    A loaded machine can make the daemon fall behind; those drops look like network loss
    to it, and the tests account for them rather than blame raopd.
    """
    wanted = {f"0100007F:{port:04X}" for port in ports}
    total = 0
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] in wanted:
                total += int(fields[-1])
    return total


def statistics(log: list[str]) -> list[dict[str, str]]:
    """raopd's statistics lines (`--statistics`) in `log`, each as {field: value}."""
    lines = [line[line.index("Sync Error ms:") :] for line in log if "Sync Error ms:" in line]
    return [dict(field.split(": ", 1) for field in line.split(", ")) for line in lines]


class Daemon:
    """One raopd process writing to `output`."""

    def __init__(
        self,
        workdir: Path,
        extra: list[str],
        root: Path = ROOT,
        *,
        env: dict[str, str] | None = None,
        to_file: bool = True,
    ) -> None:
        self.root = root  # the checkout whose raopd runs (benchmarks compare two)
        self.env = env or {}  # added to the environment (e.g. ALSA_CONFIG_PATH)
        self.to_file = to_file  # False: play to the ALSA device given in `extra`
        self.workdir = workdir
        self.output = workdir / "out.wav"
        self.port = free_tcp_port()
        self.extra = extra
        self.process: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["RAOPD_UDP_PORT_BASE"] = str(random.randrange(20000, 60000))
        env["RAOPD_UDP_PORT_RANGE"] = "60"
        env.pop("RAOPD_CONFIG", None)
        env.update(self.env)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "raopd",
            *(["--output", str(self.output)] if self.to_file else []),
            "--port",
            str(self.port),
            "--address",
            "127.0.0.1",
            "--interface",
            "127.0.0.1",
            "--http-port",
            "0",
            "--state-dir",
            str(self.workdir / "state"),
            "--device-id",
            DEVICE_ID,
            "--name",
            "e2e",
            *self.extra,
            cwd=self.root,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stderr is not None
        ready = asyncio.get_running_loop().create_future()
        self._drain = asyncio.create_task(self._read_log(self.process.stderr, ready))
        try:
            await asyncio.wait_for(ready, START_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise AssertionError("raopd did not start:\n" + "\n".join(self.log)) from None

    async def _read_log(self, stream: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if "RTSP listening on" in line and not ready.done():
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(AssertionError("raopd exited:\n" + "\n".join(self.log)))

    async def stop(self) -> int:
        """SIGTERM, then wait: the WAV header is complete only after a clean exit."""
        process = self.process
        assert process is not None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            await self._drain
        return int(process.returncode or 0)
