"""What an operator sees, over real raopd processes: logs, readiness, exit codes, pipes.

Each daemon runs in a throw-away network namespace of its own (loopback plus a veth pair with
no address), so its mDNS never reaches a real network; alsa-lib is the real one, pointed by
ALSA_CONFIG_PATH at a configuration whose `dac` PCM names a card that does not exist.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.daemon import DEVICE_ID, TEST30
from tests.net.conftest import _disable_ipv6, _setns

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ROOT / "tests" / "captures" / "pyatv-l16.pcap"
DEADLINE = 60.0
_names = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def namespace(loopback_ipv6: bool = False) -> Iterator[str]:
    """A namespace with loopback up and a veth pair (v0, v1) up but without an address;
    IPv6 off except (with `loopback_ipv6`) `::1`, as on a host with an IPv4-only LAN."""
    ns = f"raopd-op-{os.getpid()}-{next(_names)}"
    _ip("netns", "add", ns)
    try:
        if not loopback_ipv6:
            _disable_ipv6(ns, "all", "default")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _disable_ipv6(ns, "v0", "v1")  # no link-local address appearing by itself
        _ip("-n", ns, "link", "set", "v0", "up")
        _ip("-n", ns, "link", "set", "v1", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@contextmanager
def inside(ns: str) -> Iterator[None]:
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def probe(ns: str, port: int, path: str = "/readyz") -> tuple[int, str]:
    """(status, body) of an HTTP GET to raopd inside `ns`; (0, error) when it does not answer."""
    with inside(ns):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Raopd:
    """`python -m raopd` inside a namespace, its stderr collected in a file."""

    def __init__(self, ns: str, workdir: Path, *args: str, env: dict[str, str] | None = None):
        self.log_path = workdir / "raopd.log"
        self.http_port = 9798
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RAOPD_")}
        environ.update(env or {})
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "raopd",
             "--http-port", str(self.http_port), "--state-dir", str(workdir / "state"),
             "--name", "Op", "--udp-port-base", "30000", *args],
            cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("wb"),
        )  # fmt: skip

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def missing_card(tmp_path: Path) -> dict[str, str]:
    """An alsa-lib configuration whose `dac` PCM is a hw device on a card named DAC, absent."""
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.nulldev {\n type null\n}\npcm.dac {\n type hw\n card "DAC"\n}\n')
    return {"ALSA_CONFIG_PATH": str(conf)}


def test_missing_dac_for_30_s_is_a_handful_of_log_lines(tmp_path, missing_card):
    with namespace() as ns:
        daemon = Raopd(ns, tmp_path, "--device", "dac", "--interface", "lo", env=missing_card)
        try:
            wait_for(lambda: "raopd not ready" in daemon.log or not daemon.alive(), "not ready")
            started = time.monotonic()
            # The card stays missing for 30 s; the daemon must keep running all along.
            while time.monotonic() - started < 30.0:
                assert daemon.alive(), daemon.log
                time.sleep(0.5)
            status, body = probe(ns, daemon.http_port)
            _, metrics = probe(ns, daemon.http_port, "/metrics")
        finally:
            daemon.stop()
    log = daemon.log
    lines = log.splitlines()
    # alsa-lib's own line comes through raopd's log, with a timestamp, never raw.
    assert not [line for line in lines if line.startswith("ALSA lib")], log
    alsa_lib = [line for line in lines if "raopd.alsa_lib" in line]
    assert len(alsa_lib) == 1, log
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d WARNING raopd.alsa_lib: confmisc", alsa_lib[0])
    assert "Cannot get card index for DAC" in alsa_lib[0]
    about_alsa = [line for line in lines if "ALSA" in line or "alsa" in line]
    assert len(about_alsa) <= 3, log
    assert len(lines) <= 10, log
    assert log.count("raopd not ready: audio device not open") == 1, log
    assert "raopd ready" not in log
    assert (status, body.strip()) == (503, "audio device not open")
    # Backoff 1, 2, 4, 8, 16 s: five attempts in the first 31 s, not thirty.
    attempts = re.search(r"^raopd_audio_device_reopen_attempts_total (\S+)$", metrics, re.M)
    assert attempts is not None, metrics
    assert 3 <= float(attempts.group(1)) <= 6


def test_an_interface_that_does_not_exist_is_a_config_error(tmp_path):
    with namespace() as ns:
        result = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "raopd", "--interface", "nosuch0",
             "--output", str(tmp_path / "out.raw"), "--state-dir", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("raopd: interface: no network interface named 'nosuch0' on this host")
    assert "lo" in line  # it names the interfaces there are


def test_no_address_is_not_ready_until_one_is_added(tmp_path):
    with namespace() as ns:
        daemon = Raopd(ns, tmp_path, "--output", str(tmp_path / "out.raw"), "--interface", "v0")
        try:
            _, body = wait_for(
                lambda: (r := probe(ns, daemon.http_port))[0] == 503 and "address" in r[1] and r,
                "/readyz 503 for the missing address",
            )  # type: ignore[misc]
            assert body.strip() == "no network address to advertise on v0"
            wait_for(lambda: "raopd not ready" in daemon.log, "the not-ready line")
            _ip("-n", ns, "addr", "add", "10.79.0.1/24", "dev", "v0")
            wait_for(lambda: probe(ns, daemon.http_port)[0] == 200, "/readyz 200")
            wait_for(lambda: "raopd ready" in daemon.log, "the ready line")
        finally:
            assert daemon.stop() == 0
    log = daemon.log
    assert log.count("raopd not ready: no network address to advertise on v0") == 1, log
    assert re.search(r"raopd ready: \w+@Op on port 5000, 10\.79\.0\.1 ", log), log
    assert "Traceback" not in log


def test_no_route_for_mdns_on_ipv6_loopback_is_no_warning(tmp_path):
    """zeroconf cannot send to ff02::fb on `::1`: on a normal host that is no fault."""
    with namespace(loopback_ipv6=True) as ns:
        _ip("-n", ns, "addr", "add", "10.79.0.1/24", "dev", "v0")
        daemon = Raopd(ns, tmp_path, "--output", str(tmp_path / "out.raw"))
        try:
            wait_for(lambda: "raopd ready" in daemon.log or not daemon.alive(), "ready")
            wait_for(lambda: "Network is unreachable" in daemon.log, "zeroconf's send error")
        finally:
            assert daemon.stop() == 0
    log = daemon.log
    assert "Traceback" not in log and " WARNING " not in log, log
    assert re.search(r" INFO zeroconf: Error with socket .*Network is unreachable$", log, re.M)


def _run_pipe(args: list[str], head: list[str]) -> tuple[int, str, bytes]:
    """`raopd ARGS | HEAD`: raopd's exit status, its stderr, and what head printed."""
    raopd = subprocess.Popen(
        [sys.executable, "-m", "raopd", *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert raopd.stdout is not None and raopd.stderr is not None
    reader = subprocess.run(head, stdin=raopd.stdout, capture_output=True, timeout=DEADLINE)
    raopd.stdout.close()
    err = raopd.stderr.read().decode()
    return raopd.wait(DEADLINE), err, reader.stdout


def test_replay_to_a_closed_pipe_ends_quietly():
    status, err, out = _run_pipe(["replay", str(CAPTURE), "--output", "-"], ["head", "-c", "1"])
    assert len(out) == 1
    assert status in (0, 141), err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_replay_summary_goes_to_stderr_when_audio_goes_to_stdout():
    result = subprocess.run(
        [sys.executable, "-m", "raopd", "replay", str(CAPTURE), "--output", "-"],
        cwd=ROOT, capture_output=True, timeout=DEADLINE,
    )  # fmt: skip
    assert result.returncode == 0
    assert b"capture        pyatv-l16.pcap" in result.stderr
    assert b"capture " not in result.stdout[:4096]
    assert len(result.stdout) == 1389344 * 4  # the audio, and nothing else


def test_print_config_to_a_closed_pipe_ends_quietly():
    status, err, out = _run_pipe(["--print-config"], ["head", "-n", "1"])
    assert out.startswith(b"name = ")
    assert status in (0, 141) and "Traceback" not in err, err


# -- damaged captures ---------------------------------------------------------------------


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(file offset, whole record) of each record of a little-endian classic pcap."""
    offset = 24
    while offset + 16 <= len(data):
        captured = struct.unpack_from("<I", data, offset + 8)[0]
        yield offset, data[offset : offset + 16 + captured]
        offset += 16 + captured


def _replay(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raopd", "replay", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip


def test_truncated_capture_exits_non_zero_with_the_byte_offset(tmp_path):
    data = CAPTURE.read_bytes()
    offsets = [offset for offset, _ in _records(data)]
    cut_record = offsets[len(offsets) // 2]
    path = tmp_path / "truncated.pcap"
    path.write_bytes(data[: cut_record + 100])  # inside that record
    result = _replay(path)
    assert result.returncode == 3, result.stderr
    assert f"truncated at byte {cut_record} of {cut_record + 100}" in result.stderr
    assert "Traceback" not in result.stderr


def test_short_snapshot_length_is_named(tmp_path):
    data = CAPTURE.read_bytes()
    header = bytearray(data[:24])
    struct.pack_into("<I", header, 16, 200)
    out = [bytes(header)]
    for _, record in _records(data):
        seconds, fraction, captured, original = struct.unpack_from("<IIII", record)
        kept = min(captured, 200)
        out.append(struct.pack("<IIII", seconds, fraction, kept, original) + record[16 : 16 + kept])
    path = tmp_path / "snap.pcap"
    path.write_bytes(b"".join(out))
    result = _replay(path)
    assert result.returncode != 0
    assert "the snapshot length 200 cut" in result.stderr and "tcpdump -s 0" in result.stderr


def _without(data: bytes, drop: Callable[[bytes], bool]) -> bytes:
    return data[:24] + b"".join(r for _, r in _records(data) if not drop(r))


def test_capture_without_rtsp_says_so(tmp_path):
    data = CAPTURE.read_bytes()
    # Ethernet (14 bytes) + IPv4: the protocol is byte 9 of the IP header.
    path = tmp_path / "udp-only.pcap"
    path.write_bytes(_without(data, lambda r: r[16 + 14 + 9] == socket.IPPROTO_TCP))
    result = _replay(path)
    assert result.returncode == 1
    assert "no RTSP stream in the capture" in result.stderr, result.stderr


def test_capture_without_announce_says_so(tmp_path):
    data = CAPTURE.read_bytes()
    path = tmp_path / "no-announce.pcap"
    path.write_bytes(_without(data, lambda r: b"ANNOUNCE rtsp" in r))
    result = _replay(path)
    assert result.returncode == 3
    assert "audio packets but no ANNOUNCE" in result.stderr, result.stderr


# -- authentication -----------------------------------------------------------------------


async def _send(daemon, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raopd", "send", str(TEST30), "--host", "127.0.0.1",
        "--port", str(daemon.port), "--device-id", DEVICE_ID, *extra,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    return int(process.returncode or 0), err.decode()


async def test_auth_failures_are_logged_once_per_peer_with_the_right_reason(start_daemon, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("right\n")
    daemon = await start_daemon("--password-file", str(secret))
    for _ in range(3):
        status, err = await _send(daemon, "--password", "wrong")
        assert status == 1
        assert "401 Unauthorized (wrong password)" in err and "password needed" not in err
    status, err = await _send(daemon)
    assert status == 1 and "401 Unauthorized (password needed)" in err, err
    await daemon.stop()
    failures = [line for line in daemon.log if "authentication failed" in line]
    # Three failures in a few seconds from one peer: one INFO line naming peer and method.
    assert len(failures) == 1, daemon.log
    assert re.search(r" INFO raopd\.core\.session: authentication failed from 127\.0\.0\.1: "
                     r"[A-Z_]+, wrong password$", failures[0]), failures[0]  # fmt: skip
