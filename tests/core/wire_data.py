"""Loaders for the capture fixtures in tests/core/data (see data/README.md)."""

from __future__ import annotations

import struct
from pathlib import Path

DATA = Path(__file__).parent / "data"
CAPTURES = ("node-alac-rsa", "cliraop-alac-plain", "pyatv-l16", "pyatv-stock-l16-fmtp-crash")


def rtsp_stream(name: str) -> bytes:
    """The raw client->server RTSP bytes of one capture."""
    return (DATA / f"{name}.rtsp.bin").read_bytes()


def datagrams(name: str) -> list[bytes]:
    """The selected UDP datagrams of one capture, in capture order."""
    data = (DATA / f"{name}.udp.bin").read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from(">H", data, pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out
