"""A real Mosquitto broker (Debian's `mosquitto`) on loopback, with a private config and port.

`Broker(directory)` picks a free port; `start()` runs `mosquitto -c <private.conf>` (listener on
127.0.0.1 only, anonymous access, no persistence, log to a file) and waits until it accepts
connections; `stop()` ends it (SIGTERM, then SIGKILL); `start()` again reuses the same port, so
a client sees the broker vanish and come back.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.net.conftest import Lan

DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """`lan` and `ns`: run it inside that network namespace (on its loopback)."""

    def __init__(self, directory: Path, lan: Lan | None = None, ns: str | None = None) -> None:
        self.directory = directory
        self.lan, self.ns = lan, ns
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type all\n"
        )

    def start(self) -> Broker:
        prefix = ["ip", "netns", "exec", self.ns] if self.ns else []
        self.process = subprocess.Popen(
            [*prefix, "mosquitto", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                self._probe()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError(f"mosquitto exited: {self.log.read_text()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError("mosquitto did not start") from None
                time.sleep(0.05)

    def _probe(self) -> None:
        if self.lan is not None and self.ns is not None:
            sock = self.lan.call_in(self.ns, socket.socket)
        else:
            sock = socket.socket()
        with sock:
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", self.port))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=DEADLINE)
        self.process = None
