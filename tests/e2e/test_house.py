"""The house end to end: a real raopd, a real sender, and the programs that listen to it.

The metadata pipe is read the way shairport-sync's readers read it (tests/house/sps_reader.py);
every value is checked against what the sender sent.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import numpy as np

from raopd.tools.sender import RaopSender, SenderOptions
from tests.e2e.daemon import DEVICE_ID, Daemon, read_wav
from tests.house.sps_reader import PipeItem, parse_stream

ROOT = Path(__file__).resolve().parents[2]
JPEG = (ROOT / "tests" / "captures" / "art.jpg").read_bytes()
DEADLINE = 30.0


class PipeReader:
    """Reads a FIFO in a thread until end of file (the writer closes it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray()
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.path.exists():
            threading.Event().wait(0.02)
        with open(self.path, "rb", buffering=0) as pipe:
            self.opened.set()
            while chunk := pipe.read(65536):
                self.data += chunk

    def items(self) -> list[PipeItem]:
        items, _ = parse_stream(bytes(self.data))
        return items


async def wait_until(condition, what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def sender_options(**extra: object) -> SenderOptions:
    return SenderOptions(
        codec="alac",
        encrypt=True,
        hw_addr=bytes.fromhex(DEVICE_ID),
        client_name="Joe's iPhone",
        dacp_id="14413BE4996FEA4D",
        active_remote="1986535575",
        user_agent="AirPlay/381.13",
        linger=0.5,
        **extra,  # type: ignore[arg-type]
    )


async def test_metadata_pipe_sees_what_the_sender_sent(start_daemon, test30, tmp_path):
    fifo = tmp_path / "metadata"
    daemon: Daemon = await start_daemon(
        "--metadata-pipe", str(fifo), "--active-state-timeout", "0.5"
    )
    reader = PipeReader(fifo)
    pcm = np.ascontiguousarray(test30[: 2 * 44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    await sender.connect()
    rtptime = sender.report.first_rtptime
    title = "Été indien".encode()
    dmap = [("minm", title), ("asar", b"Joe Dassin"), ("asal", b"L'Album"), ("mper", b"\1" * 8)]
    await sender.set_metadata(dmap, rtptime)
    await sender.set_artwork(JPEG, "image/jpeg", rtptime)
    await sender.set_progress(rtptime, rtptime, rtptime + len(pcm))
    await sender.set_volume(-12.0)
    await sender.play(pcm)
    await sender.teardown()
    await sender.close()

    await wait_until(lambda: any(i.code == "aend" for i in reader.items()), "aend on the pipe")
    assert await daemon.stop() == 0
    await asyncio.to_thread(reader.thread.join, DEADLINE)
    items, rest = parse_stream(bytes(reader.data))
    assert rest == b""  # nothing malformed, nothing cut
    codes = [(i.type, i.code) for i in items]
    values = {i.code: i.data for i in items}

    # Who is playing: shairport-sync's ssnc items, once each, with the right values.
    assert values["snam"] == b"Joe's iPhone"
    assert values["snua"] == b"AirPlay/381.13"
    assert values["daid"] == b"14413BE4996FEA4D"
    assert values["acre"] == b"1986535575"
    assert values["clip"] == b"127.0.0.1" and values["svip"] == b"127.0.0.1"
    # The DMAP items exactly as sent, in order, between mdst and mden carrying the RTP time.
    start = codes.index(("ssnc", "mdst"))
    assert items[start].data == str(rtptime).encode()
    assert [(i.type, i.code, i.data) for i in items[start + 1 : start + 5]] == [
        ("core", tag, value) for tag, value in dmap
    ]
    assert (items[start + 5].code, items[start + 5].data) == ("mden", str(rtptime).encode())
    # The cover: the JPEG's bytes exactly, between pcst and pcen.
    pict = codes.index(("ssnc", "PICT"))
    assert items[pict].data == JPEG
    assert codes[pict - 1] == ("ssnc", "pcst") and codes[pict + 1] == ("ssnc", "pcen")
    assert values["prgr"] == f"{rtptime}/{rtptime}/{rtptime + len(pcm)}".encode()
    assert values["pvol"].startswith(b"-12.00,")
    # The session's life in order: active, play begins, play ends, then active ends.
    order = [c for _, c in codes if c in ("abeg", "pbeg", "pend", "aend")]
    assert order == ["abeg", "pbeg", "pend", "aend"]
    # The log says once what played, and from whom.
    log = "\n".join(daemon.log)
    line = "now playing: Joe Dassin \u2013 Été indien (L'Album) from Joe's iPhone"
    assert log.count(line) == 1
    # And the audio is untouched by all of this.
    out = read_wav(daemon.output)
    assert np.array_equal(out, pcm)


async def test_no_pipe_reader_never_blocks_the_stream(start_daemon, test30, tmp_path):
    fifo = tmp_path / "metadata"
    os.mkfifo(fifo)  # nobody ever opens it for reading
    daemon = await start_daemon("--metadata-pipe", str(fifo))
    pcm = np.ascontiguousarray(test30[:44100])
    sender = RaopSender("127.0.0.1", daemon.port, sender_options())
    await sender.connect()
    await sender.set_artwork(JPEG, "image/jpeg", sender.report.first_rtptime)
    await sender.play(pcm)
    await sender.teardown()
    await sender.close()
    assert await daemon.stop() == 0
    assert np.array_equal(read_wav(daemon.output), pcm)
