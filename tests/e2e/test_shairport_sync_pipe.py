"""raopd's metadata pipe against shairport-sync's own, for the same stream from the same sender.

Debian's shairport-sync (the program whose pipe format every metadata reader was written for)
and raopd each receive the same session from raopd's sender: the DACP headers and client name,
a track's DMAP, a JPEG cover, progress, two volume settings, two seconds of audio, TEARDOWN.
Both pipes are read with the strict reader (tests/house/sps_reader.py); shairport-sync's output
passing it checks the reader, and raopd's items must then equal shairport-sync's, byte for
byte, in the same order, for every code raopd writes.

shairport-sync needs Avahi, and Avahi a system D-Bus: both run inside a private network
namespace (loopback only) with private tmpfs mounts on /run/dbus and /run/avahi-daemon, so
nothing is announced on a real network and nothing is shared with the host's or another
test's D-Bus and Avahi.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from raopd.tools.sender import RaopSender, SenderOptions
from tests.house.nsloop import NsLoop
from tests.house.sps_reader import PipeItem, parse_stream
from tests.net.conftest import Lan

ROOT = Path(__file__).resolve().parents[2]
JPEG = (ROOT / "tests" / "captures" / "art.jpg").read_bytes()
DEADLINE = 30.0

SPS_CONF = """
general = {{
  name = "sps-compat";
  port = 5000;
  mdns_backend = "avahi";
  ignore_volume_control = "yes";
  interpolation = "basic";
}};
sessioncontrol = {{
  active_state_timeout = 1.0;
}};
metadata = {{
  enabled = "yes";
  include_cover_art = "yes";
  pipe_name = "{fifo}";
  pipe_timeout = 5000;
}};
"""

# Runs inside `ip netns exec`, which gives it a mount namespace of its own.
SPS_SCRIPT = """
set -e
mount -t tmpfs tmpfs /run/dbus
mkdir -p /run/avahi-daemon
mount -t tmpfs tmpfs /run/avahi-daemon
dbus-daemon --system --nofork --nopidfile &
i=0
until [ -S /run/dbus/system_bus_socket ]; do sleep 0.05; i=$((i+1)); [ $i -lt 400 ]; done
avahi-daemon --no-drop-root --no-chroot --no-rlimits >"$WORK/avahi.log" 2>&1 &
i=0
until grep -q "Server startup complete" "$WORK/avahi.log"; do
    sleep 0.05; i=$((i+1)); [ $i -lt 400 ]
done
exec shairport-sync -c "$WORK/sps.conf" -o stdout >/dev/null 2>"$WORK/sps.log"
"""


class FifoReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(self.path, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                self.data += chunk

    def items(self) -> list[PipeItem]:
        items, _ = parse_stream(bytes(self.data))
        return items


def wait_port(ns: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while (
        b":%d " % port
        not in subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-ltn"], capture_output=True, check=True
        ).stdout
    ):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"receiver on port {port} did not start:\n{log.read_text()}")
        time.sleep(0.1)


async def session(ns_loop: NsLoop, port: int, pcm: np.ndarray) -> None:
    options = SenderOptions(
        codec="alac",
        encrypt=True,
        verify=False,
        client_name="Joe's iPhone",
        dacp_id="14413BE4996FEA4D",
        active_remote="1986535575",
        user_agent="AirPlay/381.13",
        first_seq=1000,
        first_rtptime=123456,
        linger=0.5,
        volume=-15.0,
    )

    async def run() -> None:
        sender = RaopSender("127.0.0.1", port, options)
        await sender.connect()
        dmap = [
            ("minm", "Été indien".encode()),
            ("asar", b"Joe Dassin"),
            ("asal", b"Le Jardin du Luxembourg"),
            ("asgn", b"Chanson"),
            ("mper", bytes.fromhex("0123456789abcdef")),
            ("astm", (228000).to_bytes(4, "big")),
        ]
        await sender.set_metadata(dmap, 123456)
        await sender.set_artwork(JPEG, "image/jpeg", 123456)
        await sender.set_progress(123456, 123456, 123456 + 228 * 44100)
        await sender.set_volume(-12.5)
        await sender.play(pcm)
        await sender.teardown()
        await sender.close()

    await ns_loop.run(run())


@pytest.mark.skipif(shutil.which("shairport-sync") is None, reason="needs shairport-sync")
async def test_raopd_pipe_items_equal_shairport_syncs(tmp_path, test30):
    ns = f"raopd-spsc{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    ns_loop: NsLoop | None = None
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        lan = Lan(a=ns, b=ns, a_if="lo", b_if="lo", a_ip="127.0.0.1", b_ip="127.0.0.1")
        ns_loop = NsLoop(lan, ns)
        pcm = np.ascontiguousarray(test30[: 2 * 44100])

        sps_fifo = tmp_path / "sps-metadata"
        (tmp_path / "sps.conf").write_text(SPS_CONF.format(fifo=sps_fifo))
        sps = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", "-c", SPS_SCRIPT],
            env={**os.environ, "WORK": str(tmp_path)},
            start_new_session=True,
        )
        processes.append(sps)
        wait_port(ns, 5000, sps, tmp_path / "sps.log")
        sps_reader = FifoReader(sps_fifo)
        await session(ns_loop, 5000, pcm)

        raopd_fifo = tmp_path / "raopd-metadata"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAOPD_")}
        # shairport-sync 3.3's default volume is -18 (5.x: -24, raopd's default).
        env.update(PYTHONPATH=str(ROOT), RAOPD_IGNORE_VOLUME="yes", RAOPD_DEFAULT_VOLUME="-18")
        log = tmp_path / "raopd.log"
        with log.open("wb") as out:
            raopd = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    sys.executable,
                    "-m",
                    "raopd",
                    "--port",
                    "5001",
                    "--http-port",
                    "0",
                    "--name",
                    "compat",
                    "--state-dir",
                    str(tmp_path / "state"),
                    "--output",
                    str(tmp_path / "o.wav"),
                    "--metadata-pipe",
                    str(raopd_fifo),
                    "--active-state-timeout",
                    "1",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(raopd)
        wait_port(ns, 5001, raopd, log)
        raopd_reader = FifoReader(raopd_fifo)
        await session(ns_loop, 5001, pcm)
        # Both have had the whole session (TEARDOWN answered); wait for the active state's end.
        deadline = time.monotonic() + DEADLINE
        while not any(i.code == "aend" for i in sps_reader.items()) or not any(
            i.code == "aend" for i in raopd_reader.items()
        ):
            assert time.monotonic() < deadline, "no aend on both pipes"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        if ns_loop is not None:
            ns_loop.close()
        for process in processes:
            with_group_killed(process)
        subprocess.run(["ip", "netns", "del", ns], check=False)

    sps_items = sps_reader.items()  # passes the strict reader: shairport-sync's format
    ours = raopd_reader.items()
    codes = {i.code for i in ours}
    theirs = [i for i in sps_items if i.code in codes]
    # Right after pbeg both report the volume play starts at. In shairport-sync that races
    # with the sender's first SET_PARAMETER volume (another thread), so its value is either
    # the default or the sender's: compare that one item's position, not its value.
    for items in (ours, theirs):
        begin = [i.code for i in items].index("pbeg")
        assert items[begin + 1].code == "pvol"
        del items[begin + 1]
    pairs = zip(ours, theirs, strict=False)
    side_by_side = "\n".join(
        f"{a.code} {a.data[:40]!r} | {b.code} {b.data[:40]!r}" for a, b in pairs
    )
    assert [(i.type, i.code, i.data) for i in ours] == [(i.type, i.code, i.data) for i in theirs], (
        side_by_side
    )
    # And byte for byte on the wire, for the items both wrote.
    sps_bytes = bytes(sps_reader.data)
    for item in ours:
        assert item_bytes(item) in sps_bytes, item.code
    # What shairport-sync wrote that raopd does not (for the report; none of the documented
    # core/ssnc codes of a session should be missing).
    missing = sorted({i.code for i in sps_items} - codes)
    print("shairport-sync codes raopd does not write:", missing)


def item_bytes(item: PipeItem) -> bytes:
    from raopd.house.sps import Item, encode_pipe

    return encode_pipe(Item(item.type, item.code, item.data))


def with_group_killed(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
