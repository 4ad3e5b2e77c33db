"""The player state: what the receiver is doing, and the one place session events change it.

`PlayerState` is a frozen snapshot (sender, track, artwork, progress, volume, stream, sync
figures, idle/playing/paused, active). `PlayerTracker.apply(session, event, now)` is the only
code that looks at session events for the house: it returns the `Change`s they make, each
carrying the new snapshot, so a consumer never reads a half-updated state and a new event is
added here once. Only a session the play arbiter let play (ANNOUNCE accepted) changes the
state: a second sender that was refused with 453 cannot rename the track.

Audio events (`AudioReady`, `ClockUpdated`) stay on the daemon's audio path; the daemon tells
the tracker only when audio resumes after a flush (`audio_resumed`), once per pause.

Sans-I/O like the core: `now` is an argument (the daemon's monotonic seconds), nothing here
reads a clock, touches a socket or starts a task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from raopd.core.events import (
    ArtworkReceived,
    AudioReady,
    ClockUpdated,
    Event,
    Flushed,
    MetadataReceived,
    ProgressReceived,
    SessionEnded,
    StreamStarted,
    VolumeChanged,
)
from raopd.core.parameters import VOLUME_MUTE, Progress

if TYPE_CHECKING:
    from raopd.core.arbiter import PlayArbiter
    from raopd.core.sdp import StreamParams

RATE = 44100  # RTP ticks per second of every AirPlay 1 stream raopd plays
# Cover art larger than this is dropped (and counted). The RTSP reader already refuses
# bodies over 4 MiB; this is the same bound, stated where the artwork is kept.
MAX_ARTWORK_BYTES = 4 * 1024 * 1024
MAX_TEXT_CHARS = 1024  # a title longer than this is cut: it is for a display, not a database


class Status(Enum):
    """What the receiver is doing."""

    IDLE = "idle"
    PLAYING = "playing"
    PAUSED = "paused"


class ChangeKind(Enum):
    """What changed. The values name the shairport-sync metadata code closest to each."""

    SENDER = "sender"  # a sender took the receiver (or left without playing: sender None)
    PLAY_BEGIN = "pbeg"  # RECORD: audio starts
    PLAY_END = "pend"  # the playing session ended
    FLUSH = "pfls"  # FLUSH: pause or seek
    RESUME = "prsm"  # audio again after a flush
    METADATA = "mdst"  # track metadata (DMAP)
    ARTWORK = "PICT"  # cover art set or cleared
    PROGRESS = "prgr"  # position and duration
    VOLUME = "pvol"  # the sender's volume
    ACTIVE_BEGIN = "abeg"  # play began with the receiver inactive
    ACTIVE_END = "aend"  # active_state_timeout after play ended, with no new play
    SYNC = "sync"  # a periodic refresh of the sync figures while playing
    ERROR = "error"  # something raopd cannot recover from by itself


class SessionView(Protocol):
    """What the tracker reads from a session (RaopSession has all of it)."""

    @property
    def session_id(self) -> int: ...
    @property
    def peer_ip(self) -> str: ...
    @property
    def local_ip(self) -> str: ...
    @property
    def user_agent(self) -> str: ...
    @property
    def client_name(self) -> str: ...
    @property
    def dacp_id(self) -> str | None: ...
    @property
    def active_remote(self) -> str | None: ...
    @property
    def params(self) -> StreamParams | None: ...
    @property
    def arbiter(self) -> PlayArbiter[Any]: ...
    @property
    def volume(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Sender:
    """Who is playing to us."""

    session_id: int
    name: str  # X-Apple-Client-Name, e.g. "Joe's iPhone" ("" when not sent)
    address: str  # the sender's IP
    server_address: str  # our IP the sender reached
    user_agent: str = ""
    model: str = ""  # no AirPlay 1 sender states its model; kept for the API's shape
    dacp_id: str | None = None
    active_remote: str | None = None

    @property
    def display_name(self) -> str:
        """The client name, else the address."""
        return self.name or self.address


@dataclass(frozen=True, slots=True)
class Track:
    """The current track's text metadata."""

    title: str | None = None
    artist: str | None = None
    album: str | None = None
    album_artist: str | None = None
    genre: str | None = None
    composer: str | None = None
    persistent_id: int | None = None  # DMAP mper
    duration_ms: int | None = None

    @property
    def identity(self) -> tuple[str | None, str | None, str | None]:
        """What makes a new track for the "now playing" line."""
        return (self.title, self.artist, self.album)


@dataclass(frozen=True, slots=True)
class Artwork:
    """Cover art: the bytes as sent, the type they really are, and a tag for HTTP caches."""

    data: bytes
    content_type: str

    @property
    def etag(self) -> str:
        """A strong entity tag of the bytes."""
        return hashlib.sha1(self.data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class TrackProgress:
    """Where the track is, as of `at` (the daemon's monotonic seconds) while playing."""

    position_s: float
    duration_s: float
    at: float
    start: int  # the three RTP timestamps as sent
    current: int
    end: int


@dataclass(frozen=True, slots=True)
class Volume:
    """The sender's slider and what raopd makes of it."""

    airplay: float  # -30.0 .. 0.0, or -144.0 for mute
    db: float  # attenuation in dB; -inf when muted

    @property
    def muted(self) -> bool:
        """True for the AirPlay mute value."""
        return self.airplay <= VOLUME_MUTE

    @property
    def percent(self) -> float:
        """The slider as 0..100 (mute is 0), as Home Assistant shows it."""
        return 0.0 if self.muted else round((self.airplay / 30.0 + 1.0) * 100.0, 1)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """The audio format of the stream playing."""

    codec: str
    encrypted: bool
    sample_rate: int
    latency_frames: int | None = None


@dataclass(frozen=True, slots=True)
class SyncFigures:
    """How well the output keeps time (read from the output thread when refreshed)."""

    sync_error_ms: float
    correction_ppm: float
    drift_ppm: float | None
    frames_inserted: int
    frames_dropped: int
    underruns: int
    bit_exact: bool
    packets_lost: int = 0  # the playing session's packets never repaired (played as silence)
    packets_resent: int = 0  # and those that arrived as resends


@dataclass(frozen=True, slots=True)
class PlayerState:
    """Everything the house may want to know, at one instant."""

    status: Status = Status.IDLE
    active: bool = False
    sender: Sender | None = None
    track: Track = field(default_factory=Track)
    artwork: Artwork | None = None
    progress: TrackProgress | None = None
    volume: Volume | None = None
    stream: StreamInfo | None = None
    sync: SyncFigures | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the player state, with the state after it.

    `rtptime` is the RTP time the sender attached (metadata, artwork, flush); `items` are the
    DMAP items of a METADATA change in the order sent; `reason` says why a session ended or
    what the error was.
    """

    kind: ChangeKind
    state: PlayerState
    at: float
    rtptime: int | None = None
    items: tuple[tuple[str, bytes], ...] = ()
    reason: str = ""


@dataclass(slots=True)
class TrackerCounters:
    """What the tracker refused, for /metrics."""

    artwork_dropped: int = 0  # over MAX_ARTWORK_BYTES
    foreign_events: int = 0  # from a session that does not hold the receiver


def sniff_image(data: bytes, declared: str) -> str:
    """The real type of cover art: senders' Content-Type is not always right."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return declared if declared.startswith("image/") else "application/octet-stream"


def clean_text(value: str | None) -> str | None:
    """Text from the network, safe for a log line or a display: no control characters, bounded."""
    if value is None:
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in value[:MAX_TEXT_CHARS]).strip()
    return text or None


def _was_granted_play(session: SessionView) -> bool:
    # A session gets its stream parameters only when the arbiter let it play (ANNOUNCE);
    # one refused with 453 never has them. Asking the arbiter instead would lose the events
    # of a session that ended in the same read as they arrived (it has released it by then).
    owner: object = session.arbiter.owner
    return owner is session or session.params is not None


class PlayerTracker:
    """Turns session events into `Change`s of one `PlayerState`."""

    def __init__(self, db_of: Callable[[float], float] | None = None) -> None:
        # AirPlay volume -> dB as the output applies it (the daemon's volume settings).
        self._db_of = db_of or (lambda v: -math.inf if v <= VOLUME_MUTE else v)
        self.state = PlayerState()
        self.counters = TrackerCounters()
        self._session: SessionView | None = None  # the session the state describes
        self._volume_seen = False  # the session set a volume before it started playing
        # Audio is awaited after RECORD or a flush: its arrival is a RESUME, as shairport-sync
        # sends `prsm` whenever playback (re)starts.
        self._awaiting_audio = False

    @property
    def session(self) -> SessionView | None:
        """The session that has the receiver now (for remote control: stop ends it)."""
        return self._session

    def apply(self, session: SessionView, event: Event, now: float) -> list[Change]:
        """The changes `event` from `session` makes (often none)."""
        changes: list[Change] = []
        if session is not self._session:
            if isinstance(event, SessionEnded) or not _was_granted_play(session):
                self.counters.foreign_events += 1
                return changes
            changes.append(self._take_over(session, now))
        if isinstance(event, StreamStarted):
            changes += self._play_begin(event, now)
        elif isinstance(event, MetadataReceived):
            md = event.metadata
            mper = md.raw.get("mper")
            track = Track(
                title=clean_text(md.title),
                artist=clean_text(md.artist),
                album=clean_text(md.album),
                album_artist=clean_text(md.album_artist),
                genre=clean_text(md.genre),
                composer=clean_text(md.composer),
                persistent_id=int.from_bytes(mper, "big") if mper and len(mper) <= 8 else None,
                duration_ms=md.duration_ms,
            )
            changes.append(
                self._change(
                    ChangeKind.METADATA, now, track=track, rtptime=event.rtptime, items=md.items
                )
            )
        elif isinstance(event, ArtworkReceived):
            changes += self._artwork(event, now)
        elif isinstance(event, ProgressReceived):
            progress = Progress(event.start, event.current, event.end)
            value = TrackProgress(
                position_s=progress.position_frames() / RATE,
                duration_s=progress.duration_frames() / RATE,
                at=now,
                start=event.start,
                current=event.current,
                end=event.end,
            )
            changes.append(self._change(ChangeKind.PROGRESS, now, progress=value))
        elif isinstance(event, VolumeChanged):
            self._volume_seen = True
            volume = Volume(event.volume, self._db_of(event.volume))
            changes.append(self._change(ChangeKind.VOLUME, now, volume=volume))
        elif isinstance(event, Flushed):
            if self.state.status is Status.PLAYING:
                self._awaiting_audio = True
                changes.append(
                    self._change(
                        ChangeKind.FLUSH, now, status=Status.PAUSED, rtptime=event.until_rtptime
                    )
                )
        elif isinstance(event, ClockUpdated):
            self._note_latency(event.estimate.latency_frames)
        elif isinstance(event, SessionEnded):
            changes += self._session_ended(str(event.reason), now)  # "too large", ...
        elif isinstance(event, AudioReady):
            pass  # the audio path's; resumption comes through audio_resumed()
        return changes

    def audio_resumed(self, now: float) -> list[Change]:
        """Audio arrived after RECORD or a flush: playing (again)."""
        if not self._awaiting_audio or self.state.status is Status.IDLE:
            return []
        self._awaiting_audio = False
        return [self._change(ChangeKind.RESUME, now, status=Status.PLAYING)]

    def active_ended(self, now: float) -> list[Change]:
        """The active state's timeout ran out with nothing playing."""
        if not self.state.active or self.state.status is not Status.IDLE:
            return []
        return [self._change(ChangeKind.ACTIVE_END, now, active=False)]

    def refresh_sync(self, figures: SyncFigures, now: float) -> list[Change]:
        """New sync figures from the output (the daemon polls them while playing)."""
        if self.state.status is Status.IDLE:
            return []
        return [self._change(ChangeKind.SYNC, now, sync=figures)]

    def error(self, message: str, now: float) -> list[Change]:
        """An unrecoverable error (the daemon is about to give up)."""
        return [self._change(ChangeKind.ERROR, now, reason=message)]

    # ------------------------------------------------------------------ internals

    def _change(
        self,
        kind: ChangeKind,
        now: float,
        *,
        rtptime: int | None = None,
        reason: str = "",
        items: tuple[tuple[str, bytes], ...] = (),
        **fields: object,
    ) -> Change:
        if fields:
            self.state = dataclasses.replace(self.state, **fields)  # type: ignore[arg-type]
        return Change(kind, self.state, now, rtptime=rtptime, items=items, reason=reason)

    def _take_over(self, session: SessionView, now: float) -> Change:
        self._session = session
        self._volume_seen = False
        sender = Sender(
            session_id=session.session_id,
            name=clean_text(session.client_name) or "",
            address=session.peer_ip,
            server_address=session.local_ip,
            user_agent=clean_text(session.user_agent) or "",
            dacp_id=session.dacp_id,
            active_remote=session.active_remote,
        )
        # A new sender starts from a clean slate: the last one's track is not this one's.
        return self._change(
            ChangeKind.SENDER,
            now,
            sender=sender,
            status=Status.IDLE,
            track=Track(),
            artwork=None,
            progress=None,
            stream=None,
            sync=None,
        )

    def _play_begin(self, event: StreamStarted, now: float) -> list[Change]:
        changes: list[Change] = []
        session = self._session
        params = event.params
        stream = StreamInfo(
            codec=params.codec.name,
            encrypted=params.encrypted,
            sample_rate=params.sample_rate,
            latency_frames=params.min_latency_frames,
        )
        # RECORD may come after the headers were first seen: pick up what it added.
        sender = self.state.sender
        if sender is not None and session is not None:
            sender = dataclasses.replace(
                sender,
                name=clean_text(event.client_name or session.client_name) or sender.name,
                user_agent=clean_text(event.user_agent or session.user_agent) or "",
                dacp_id=session.dacp_id,
                active_remote=session.active_remote,
            )
        self._awaiting_audio = True
        if not self.state.active:
            changes.append(self._change(ChangeKind.ACTIVE_BEGIN, now, active=True))
        changes.append(
            self._change(
                ChangeKind.PLAY_BEGIN,
                now,
                status=Status.PLAYING,
                stream=stream,
                sender=sender,
                rtptime=event.rtptime,
            )
        )
        if not self._volume_seen and session is not None:
            # Playing at the volume the sender has not set yet (the default): say which, as
            # shairport-sync does with a pvol right after pbeg.
            volume = Volume(session.volume, self._db_of(session.volume))
            changes.append(self._change(ChangeKind.VOLUME, now, volume=volume))
        return changes

    def _artwork(self, event: ArtworkReceived, now: float) -> list[Change]:
        data = event.data
        if len(data) > MAX_ARTWORK_BYTES:
            self.counters.artwork_dropped += 1
            return []
        if not data or event.content_type == "image/none":
            artwork = None
        else:
            artwork = Artwork(bytes(data), sniff_image(data, event.content_type))
        return [self._change(ChangeKind.ARTWORK, now, artwork=artwork, rtptime=event.rtptime)]

    def _note_latency(self, latency_frames: int) -> None:
        stream = self.state.stream
        if stream is not None and stream.latency_frames != latency_frames:
            # No change of its own: the figure rides along with the next one.
            self.state = dataclasses.replace(
                self.state, stream=dataclasses.replace(stream, latency_frames=latency_frames)
            )

    def _session_ended(self, reason: str, now: float) -> list[Change]:
        self._session = None
        if self.state.status is Status.IDLE:
            # It never played (a challenge connection, a refused stream): as if it never came.
            return [self._change(ChangeKind.SENDER, now, reason=reason, sender=None)]
        # The last sender and track stay in the state (what played last); status says idle.
        return [
            self._change(
                ChangeKind.PLAY_END,
                now,
                reason=reason,
                status=Status.IDLE,
                progress=None,
                stream=None,
                sync=None,
            )
        ]
