"""A stock pyatv sender, run as its own process (inside the sender's network namespace).

Finds the receiver over mDNS with pyatv's public `scan` (multicast, or unicast mDNS to
`--host`), connects with `pyatv.connect`, sets the RAOP service's password when given, and
streams a file with `atv.stream.stream_file` (after `atv.audio.set_volume` if `--volume`
is given; with --title/--artist/--album/--artwork as its metadata when given; --volume-at S:P
sets the volume to P percent S seconds in). The last line on stdout is one JSON object:
{"result": "ok"} or {"result": "error", "type": <exception class>, "message": ...}, and
"scanned" is printed (flushed) before streaming starts so a test can tell the phases apart.
pyatv's own log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import pyatv
from pyatv.const import Protocol
from pyatv.interface import MediaMetadata


async def stream(args: argparse.Namespace) -> dict[str, str]:
    loop = asyncio.get_running_loop()
    hosts = [args.host] if args.host else None
    found = await pyatv.scan(
        loop, identifier=args.identifier, protocol=Protocol.RAOP, hosts=hosts, timeout=args.timeout
    )
    if not found:
        return {"result": "not found"}
    config = found[0]
    service = config.get_service(Protocol.RAOP)
    assert service is not None
    if args.password is not None:
        service.password = args.password
    print(
        json.dumps({"scanned": config.name, "address": str(config.address), "port": service.port}),
        flush=True,
    )
    metadata = None
    if args.title or args.artist or args.album or args.artwork:
        artwork = open(args.artwork, "rb").read() if args.artwork else None  # noqa: SIM115
        metadata = MediaMetadata(
            title=args.title, artist=args.artist, album=args.album, artwork=artwork
        )
    atv = await pyatv.connect(config, loop)
    try:
        if args.volume is not None:
            await atv.audio.set_volume(args.volume)
        streaming = asyncio.ensure_future(atv.stream.stream_file(args.file, metadata=metadata))
        if args.volume_at:
            # pyatv's own volume call while it streams: a SET_PARAMETER on the session.
            delay, percent = (float(x) for x in args.volume_at.split(":"))
            await asyncio.sleep(delay)
            await atv.audio.set_volume(percent)
            print(json.dumps({"volume_set": percent}), flush=True)
        await streaming
    finally:
        atv.close()
    return {"result": "ok"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--identifier", required=True)
    parser.add_argument("--host")
    parser.add_argument("--password")
    parser.add_argument("--volume", type=float, help="0-100, set before streaming")
    parser.add_argument("--timeout", type=int, default=20)
    # Metadata pyatv sends with the stream (before RECORD): text as DMAP, the cover as JPEG.
    parser.add_argument("--title")
    parser.add_argument("--artist")
    parser.add_argument("--album")
    parser.add_argument("--artwork", help="a JPEG file")
    parser.add_argument("--volume-at", help="SECONDS:PERCENT: set the volume while streaming")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(relativeCreated)6.0f %(name)s: %(message)s",
    )
    try:
        outcome = asyncio.run(stream(args))
    except Exception as exc:
        outcome = {"result": "error", "type": type(exc).__name__, "message": str(exc)}
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
