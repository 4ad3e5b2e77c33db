"""Events that leave the core: facts, named in the past tense, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from raopd.core.clock import ClockEstimate
    from raopd.core.dmap import TrackMetadata
    from raopd.core.sdp import StreamParams


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """RECORD was accepted: audio for `params` starts at `rtptime` (when the sender said)."""

    params: StreamParams
    rtptime: int | None
    user_agent: str
    client_name: str


@dataclass(frozen=True, slots=True)
class AudioReady:
    """Decoded audio, in RTP order, one block per packet; `lost` blocks are silence."""

    rtptime: int
    pcm: npt.NDArray[np.int16]
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Flushed:
    """Audio before `until_rtptime` is to be dropped (None: everything queued)."""

    until_rtptime: int | None


@dataclass(frozen=True, slots=True)
class ClockUpdated:
    """A new estimate of when each RTP frame should be heard."""

    estimate: ClockEstimate


@dataclass(frozen=True, slots=True)
class VolumeChanged:
    """The sender's volume slider: -30.0 (quietest) to 0.0, or -144.0 for mute."""

    volume: float


@dataclass(frozen=True, slots=True)
class MetadataReceived:
    """Track metadata (DMAP), applying from `rtptime` when the sender said."""

    metadata: TrackMetadata
    rtptime: int | None


@dataclass(frozen=True, slots=True)
class ArtworkReceived:
    """Cover art; `content_type` image/none with empty data clears it."""

    content_type: str
    data: bytes
    rtptime: int | None


@dataclass(frozen=True, slots=True)
class ProgressReceived:
    """Track position as RTP timestamps: start, current, end."""

    start: int
    current: int
    end: int


class EndReason(Enum):
    """Every way a session can end; the value is the label /metrics and the log use."""

    TEARDOWN = "teardown"  # the sender said goodbye
    CONNECTION_CLOSED = "connection_closed"  # the TCP connection went away
    PROTOCOL_ERROR = "protocol_error"  # a request the reader could not frame (400, 505, ...)
    TOO_LARGE = "too_large"  # a header block or body over its limit (413, 431)
    TIMED_OUT = "timed_out"  # no requests or audio for too long
    INTERRUPTED = "interrupted"  # another sender took over (interruption allowed)
    EVICTED = "evicted"  # an idle connection closed to make room for a new one
    SHUTDOWN = "shutdown"  # the daemon is stopping
    STOPPED_BY_REMOTE = "stopped_by_remote_control"  # "stop" from MQTT, a hook or the web UI
    INTERNAL_ERROR = "internal_error"  # a bug in raopd, contained to this session

    def __str__(self) -> str:
        return self.value.replace("_", " ")


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is over, for `reason`; it released everything it held."""

    reason: EndReason


Event = (
    StreamStarted
    | AudioReady
    | Flushed
    | ClockUpdated
    | VolumeChanged
    | MetadataReceived
    | ArtworkReceived
    | ProgressReceived
    | SessionEnded
)
