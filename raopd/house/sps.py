"""shairport-sync's metadata items: which `core`/`ssnc` items a change makes, and their bytes.

Programs written for shairport-sync's metadata pipe (shairport-sync-metadata-reader, the
Home Assistant and display projects, rAudio, moOde …) and its MQTT client read a stream of
items, each a *type* and a *code* (four ASCII characters each) and a value:

- `core` items are the sender's DMAP items, one per item inside `mlit`, value as sent, between
  `ssnc mdst` and `ssnc mden` whose value is the RTP time of the SET_PARAMETER (decimal text);
- `ssnc` items are the receiver's own: `snam` client name, `snua` user agent, `acre`
  Active-Remote, `daid` DACP-ID, `clip` sender IP, `svip` our IP, `abeg`/`aend` active state,
  `pbeg`/`pend` play begins/ends, `pfls` flush (value: its RTP time), `prsm` resume, `pvol`
  volume ("airplay,dB,lowest dB,highest dB", two decimals), `prgr` progress
  ("start/current/end"), and the cover as `pcst`, `PICT` (the image bytes), `pcen`.

On the pipe each item is
`<item><type>HEX</type><code>HEX</code><length>N</length>` then, when N > 0,
`\\n<data encoding="base64">\\n` + base64 of the value on one line + `</data>`, then
`</item>\\n`; HEX is the four characters as a big-endian 32-bit number in lower-case hex.
Over UDP an item is one datagram, type + code + value; one that does not fit the configured
message length goes as `ssnc chnk` chunks: chunk index, chunk count, type and code, then a
slice of the value (each count a big-endian u32). These are shairport-sync's formats as its
documentation and its readers define them.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass

from raopd.house.state import Change, ChangeKind

MIN_MSGLENGTH = 500  # shairport-sync's bounds for socket_msglength
MAX_MSGLENGTH = 65000
CHUNK_HEADER = 24  # "ssnc" "chnk" index count type code


@dataclass(frozen=True, slots=True)
class Item:
    """One metadata item: type and code are four ASCII characters each."""

    type: str
    code: str
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class VolumeRange:
    """What `pvol` reports besides the slider: the attenuation range in dB (hundredths are
    lost to the two-decimal format), or zeros when raopd ignores the sender's volume."""

    lowest_db: float = -60.0
    highest_db: float = 0.0
    ignored: bool = False


def _text(value: object) -> bytes:
    return str(value).encode("utf-8", "replace")


def _rtptime(value: int | None) -> bytes:
    return b"" if value is None else _text(value)


def pvol_text(airplay: float, db: float, volume_range: VolumeRange) -> str:
    """The `pvol` value: airplay volume, then attenuation, lowest and highest in dB."""
    if volume_range.ignored:
        return f"{airplay:.2f},0.00,0.00,0.00"
    shown_db = volume_range.lowest_db if math.isinf(db) else db  # mute: the bottom of the range
    return (
        f"{airplay:.2f},{shown_db:.2f},{volume_range.lowest_db:.2f},{volume_range.highest_db:.2f}"
    )


def items_for(
    change: Change, *, cover_art: bool = True, volume_range: VolumeRange | None = None
) -> list[Item]:
    """The items shairport-sync would send for `change`, in its order."""
    kind, state = change.kind, change.state
    if kind is ChangeKind.SENDER:
        sender = state.sender
        if sender is None:
            return []
        items = []
        if sender.name:
            items.append(Item("ssnc", "snam", _text(sender.name)))
        if sender.user_agent:
            items.append(Item("ssnc", "snua", _text(sender.user_agent)))
        if sender.active_remote:
            items.append(Item("ssnc", "acre", _text(sender.active_remote)))
        if sender.dacp_id:
            items.append(Item("ssnc", "daid", _text(sender.dacp_id)))
        items.append(Item("ssnc", "clip", _text(sender.address)))
        items.append(Item("ssnc", "svip", _text(sender.server_address)))
        return items
    if kind is ChangeKind.METADATA:
        stamp = _rtptime(change.rtptime)
        return [
            Item("ssnc", "mdst", stamp),
            *(Item("core", tag, value) for tag, value in change.items),
            Item("ssnc", "mden", stamp),
        ]
    if kind is ChangeKind.ARTWORK:
        if not cover_art:
            return []
        stamp = _rtptime(change.rtptime)
        data = state.artwork.data if state.artwork is not None else b""
        return [
            Item("ssnc", "pcst", stamp),
            Item("ssnc", "PICT", data),
            Item("ssnc", "pcen", stamp),
        ]
    if kind is ChangeKind.VOLUME:
        volume = state.volume
        if volume is None:
            return []
        text = pvol_text(volume.airplay, volume.db, volume_range or VolumeRange())
        return [Item("ssnc", "pvol", text.encode())]
    if kind is ChangeKind.PROGRESS:
        progress = state.progress
        if progress is None:
            return []
        return [Item("ssnc", "prgr", _text(f"{progress.start}/{progress.current}/{progress.end}"))]
    if kind is ChangeKind.FLUSH:
        return [Item("ssnc", "pfls", _rtptime(change.rtptime))]
    simple = {
        ChangeKind.PLAY_BEGIN: "pbeg",
        ChangeKind.PLAY_END: "pend",
        ChangeKind.RESUME: "prsm",
        ChangeKind.ACTIVE_BEGIN: "abeg",
        ChangeKind.ACTIVE_END: "aend",
    }
    if kind in simple:
        return [Item("ssnc", simple[kind])]
    return []  # SYNC, ERROR: nothing in shairport-sync's vocabulary


def code_number(code: str) -> int:
    """Four ASCII characters as the big-endian u32 shairport-sync prints in hex."""
    raw = code.encode("ascii")
    if len(raw) != 4:
        raise ValueError(f"metadata type/code must be 4 ASCII characters, got {code!r}")
    return int.from_bytes(raw, "big")


def encode_pipe(item: Item) -> bytes:
    """The item as it appears on shairport-sync's metadata pipe."""
    head = (
        f"<item><type>{code_number(item.type):x}</type><code>{code_number(item.code):x}</code>"
        f"<length>{len(item.data)}</length>"
    ).encode("ascii")
    if not item.data:
        return head + b"</item>\n"
    return b"".join(
        (head, b'\n<data encoding="base64">\n', base64.b64encode(item.data), b"</data></item>\n")
    )


def encode_datagrams(item: Item, msglength: int) -> list[bytes]:
    """The item as UDP payloads of at most `msglength` bytes (chunked when it must be)."""
    header = item.type.encode("ascii") + item.code.encode("ascii")
    if len(item.data) < msglength - 8:
        return [header + item.data]
    room = msglength - CHUNK_HEADER
    total = max(1, -(-len(item.data) // room))
    return [
        b"ssncchnk"
        + struct.pack(">II", index, total)
        + header
        + item.data[index * room : (index + 1) * room]
        for index in range(total)
    ]
