"""How long a sender waits for raopd's first Apple-Response, on a freshly started daemon.

Starts `python -m raopd` on loopback (as the end-to-end tests do), then opens one RTSP
connection at a time and sends `OPTIONS` with an `Apple-Challenge`, timing request to
complete response. The first connection is the one issue 9 was about: the AirPort key used
to be loaded on first use, ~40 ms that PipeWire spends discarding what it rendered. Prints
one JSON object per daemon start (`--runs`): `first_ms`, `next_ms` (median of the following
ones), `verified` (the signature checks against the AirPort public key, challenge, address
and device id). The machine's load shows in single runs: compare medians.

Target: first_ms < 10 on this machine.

    python benchmarks/handshake.py [--runs 3] [--connections 10] [--receiver-root CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raopd.tools.sender import SenderError, verify_apple_response  # noqa: E402
from tests.e2e.daemon import DEVICE_ID, Daemon  # noqa: E402


async def one_options(port: int) -> tuple[float, bool]:
    """(seconds from request to complete response, whether the signature verified)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        challenge = os.urandom(16)
        text = base64.b64encode(challenge).decode().rstrip("=")
        request = (
            f"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nApple-Challenge: {text}\r\n"
            "User-Agent: handshake-benchmark\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        elapsed = time.perf_counter() - started
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
        )
        response = headers.get("Apple-Response", "")
        try:
            verify_apple_response(challenge, response, "127.0.0.1", bytes.fromhex(DEVICE_ID))
        except SenderError:
            return elapsed, False
        return elapsed, True
    finally:
        writer.close()
        await writer.wait_closed()


async def run(connections: int, root: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="raopd-handshake-") as tmp:
        daemon = Daemon(Path(tmp), [], root)
        await daemon.start()
        try:
            results = [await one_options(daemon.port) for _ in range(connections)]
        finally:
            await daemon.stop()
    times = [seconds * 1e3 for seconds, _ in results]
    return {
        "first_ms": round(times[0], 2),
        "next_ms": round(statistics.median(times[1:]), 2) if len(times) > 1 else None,
        "connections": connections,
        "verified": all(ok for _, ok in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument(
        "--receiver-root",
        type=Path,
        default=ROOT,
        help="a checkout whose raopd to measure (default: this one), for before/after",
    )
    args = parser.parse_args()
    for _ in range(max(1, args.runs)):
        print(json.dumps(asyncio.run(run(max(1, args.connections), args.receiver_root))))


if __name__ == "__main__":
    main()
