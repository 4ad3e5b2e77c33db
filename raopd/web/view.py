"""The player state as the API shows it: one JSON document, the same for GET and the events.

`state_document` is the one definition of that document (docs/api.md and openapi.yaml
describe it). Times a client needs are wall-clock Unix seconds: `server_time` when the
document was made and `progress.at` when `progress.position_s` was true, so a page can move
its progress bar between updates without asking again. The daemon's own clock is monotonic;
`Clock` converts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from raopd.house.state import PlayerState, Status

RATE = 44100


@dataclass(frozen=True, slots=True)
class Clock:
    """The monotonic clock the state's times use, and the wall clock, read together."""

    monotonic: Callable[[], float]
    wall: Callable[[], float] = time.time

    def now(self) -> tuple[float, float]:
        """(monotonic, wall) now."""
        return self.monotonic(), self.wall()


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """Where the audio goes, for the health panel."""

    device: str  # the ALSA PCM, or the file raopd writes
    open: bool


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def remote_status(state: PlayerState) -> dict[str, object]:
    """Whether the transport buttons can work, and why not."""
    playing = state.status is not Status.IDLE and state.sender is not None
    if not playing or state.sender is None:
        return {"available": False, "stop": False, "reason": "nothing is playing"}
    sender = state.sender
    if not sender.dacp_id or not sender.active_remote:
        reason = f"{sender.display_name} offers no remote control (it sent no DACP-ID)"
        return {"available": False, "stop": True, "reason": reason}
    return {"available": True, "stop": True, "reason": None}


def state_document(
    state: PlayerState,
    *,
    monotonic_now: float,
    wall_now: float,
    output: OutputInfo,
    change: str | None = None,
    speaker: str = "raopd",
) -> dict[str, object]:
    """The API's view of `state` at (`monotonic_now`, `wall_now`)."""

    def wall(at: float) -> float:
        return round(wall_now - (monotonic_now - at), 3)

    sender = state.sender
    track = state.track
    progress = state.progress
    progress_doc: dict[str, object] | None = None
    if progress is not None:
        moving = state.status is Status.PLAYING
        elapsed = max(monotonic_now - progress.at, 0.0) if moving else 0.0
        position_now = min(progress.position_s + elapsed, progress.duration_s)
        progress_doc = {
            "position_s": round(progress.position_s, 3),
            "duration_s": round(progress.duration_s, 3),
            "at": wall(progress.at),
            "position_now_s": round(position_now, 3),
            "moving": moving,
        }
    volume = state.volume
    stream = state.stream
    sync = state.sync
    return {
        "server_time": round(wall_now, 3),
        "speaker": speaker,
        "change": change,
        "status": state.status.value,
        "active": state.active,
        "sender": None
        if sender is None
        else {
            "name": sender.display_name,
            "address": sender.address,
            "user_agent": sender.user_agent,
            "has_dacp": bool(sender.dacp_id and sender.active_remote),
        },
        "track": {
            "title": track.title,
            "artist": track.artist,
            "album": track.album,
            "album_artist": track.album_artist,
            "genre": track.genre,
            "composer": track.composer,
        },
        "artwork": None
        if state.artwork is None
        else {
            "url": f"api/v1/artwork?v={state.artwork.etag[:16]}",
            "content_type": state.artwork.content_type,
            "etag": state.artwork.etag,
            "bytes": len(state.artwork.data),
        },
        "progress": progress_doc,
        "volume": None
        if volume is None
        else {
            "airplay": volume.airplay,
            "db": _finite(round(volume.db, 2)),
            "percent": volume.percent,
            "muted": volume.muted,
        },
        "stream": None
        if stream is None
        else {
            "codec": stream.codec,
            "encrypted": stream.encrypted,
            "sample_rate": stream.sample_rate,
            "latency_ms": None
            if stream.latency_frames is None
            else round(stream.latency_frames * 1000.0 / RATE, 1),
        },
        "sync": None
        if sync is None
        else {
            "sync_error_ms": round(sync.sync_error_ms, 3),
            "correction_ppm": round(sync.correction_ppm, 1),
            "drift_ppm": None if sync.drift_ppm is None else round(sync.drift_ppm, 1),
            "frames_inserted": sync.frames_inserted,
            "frames_dropped": sync.frames_dropped,
            "underruns": sync.underruns,
            "packets_lost": sync.packets_lost,
            "packets_resent": sync.packets_resent,
            "bit_exact": sync.bit_exact,
        },
        "output": {"device": output.device, "open": output.open},
        "remote": remote_status(state),
    }
