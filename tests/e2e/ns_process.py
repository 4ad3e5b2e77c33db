"""Long-running helper programs (sound servers, buses, tcpdump) inside a network namespace.

Each runs through `ip netns exec`, logs stdout and stderr to its own file and is ended by its
own process id (SIGTERM, then SIGKILL after a deadline): never by name, so programs of the
same name that others run on the machine are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.polling import wait_for

DEADLINE = 30.0  # seconds: generous bound for a program to start or stop on a loaded box


@dataclass
class NsProcess:
    """One program in namespace `ns`; `log` is what it printed so far."""

    name: str
    ns: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    private_run: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> NsProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "PULSE_"))}
        env.update(self.env)
        argv = list(self.argv)
        if self.private_run:
            # A private, empty /run (a tmpfs in a mount namespace of its own) holding only
            # the directories named, for programs with fixed paths there (avahi-daemon's pid
            # file and socket): two copies never share them and the host's /run is untouched.
            dirs = " ".join(f"/run/{name}" for name in self.private_run)
            script = f'mount -t tmpfs tmpfs /run && mkdir -p {dirs} && exec "$@"'
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                    *argv]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_log(self, pattern: str, timeout: float = DEADLINE) -> str:
        """Wait until `pattern` (a regex) appears in the log; fail if the program exits first."""

        def seen() -> bool:
            if re.search(pattern, self.log, re.MULTILINE):
                return True
            if not self.running:
                raise AssertionError(f"{self.name} exited before {pattern!r}:\n{self.log}")
            return False

        wait_for(seen, f"{pattern!r} in {self.name}'s log", timeout)
        return self.log

    def stop(self, signum: int = signal.SIGTERM) -> int | None:
        """End the program (its whole process group); its exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            try:
                process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=DEADLINE)
        return process.returncode


def run_in(
    ns: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run a short command in `ns` to completion; its output (fails on a non-zero exit)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "PULSE_"))}
    full_env.update(env or {})
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result
