"""A strict reader of shairport-sync's metadata pipe format, written from its documentation.

It accepts exactly what shairport-sync writes and what its readers (shairport-sync-metadata-
reader and the line-based scripts built on it) rely on, and raises on anything else:

    <item><type>HEX8</type><code>HEX8</code><length>N</length></item>\\n            (N = 0)
    <item><type>HEX8</type><code>HEX8</code><length>N</length>\\n
    <data encoding="base64">\\n
    BASE64-ON-ONE-LINE</data></item>\\n                                               (N > 0)

where HEX8 is the type or code as a 32-bit big-endian number in lower-case hex, and the base64
decodes to exactly N bytes. A line-based reader (read the header line, then the `<data`
line, then `(N + 2) // 3 * 4` characters, then `</data></item>\\n`) must work as well, so the
test also checks that the base64 has no line breaks of its own.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

_EMPTY = re.compile(
    rb"<item><type>([0-9a-f]{8})</type><code>([0-9a-f]{8})</code><length>(0)</length></item>\n"
)
_HEAD = re.compile(
    rb"<item><type>([0-9a-f]{8})</type><code>([0-9a-f]{8})</code><length>([1-9][0-9]*)</length>\n"
    rb'<data encoding="base64">\n'
)
_TAIL = b"</data></item>\n"


@dataclass(frozen=True)
class PipeItem:
    type: str
    code: str
    data: bytes


def _name(hex8: bytes) -> str:
    return bytes.fromhex(hex8.decode()).decode("ascii")


def parse_stream(stream: bytes) -> tuple[list[PipeItem], bytes]:
    """(whole items, the unparsed rest); raises ValueError on anything malformed."""
    items: list[PipeItem] = []
    pos = 0
    while pos < len(stream):
        empty = _EMPTY.match(stream, pos)
        if empty:
            items.append(PipeItem(_name(empty[1]), _name(empty[2]), b""))
            pos = empty.end()
            continue
        head = _HEAD.match(stream, pos)
        if head is None:
            if len(stream) - pos < 200 and b"\n<data" not in stream[pos:]:
                break  # maybe an item not yet complete
            raise ValueError(f"malformed item at {pos}: {stream[pos : pos + 120]!r}")
        length = int(head[3])
        chars = (length + 2) // 3 * 4
        start = head.end()
        if len(stream) < start + chars + len(_TAIL):
            break
        text = stream[start : start + chars]
        if b"\n" in text or stream[start + chars : start + chars + len(_TAIL)] != _TAIL:
            raise ValueError(f"item at {pos}: base64 not on one line or bad tail")
        data = base64.b64decode(text, validate=True)
        if len(data) != length:
            raise ValueError(f"item at {pos}: length {length} but {len(data)} bytes of data")
        items.append(PipeItem(_name(head[1]), _name(head[2]), data))
        pos = start + chars + len(_TAIL)
    return items, stream[pos:]
