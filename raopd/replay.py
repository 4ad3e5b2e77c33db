"""`raopd replay`: run a recorded session through the sans-I/O core, offline.

A capture holds both directions of a session between some sender and some receiver. Replay
takes the receiver's place: the sender's RTSP requests and its UDP datagrams to the receiver's
ports are fed, with their capture times as `now`, to a RaopSession, exactly as the daemon
would feed them; the audio it releases is written to a WAV or raw S16_LE file. What the
original receiver sent (its responses, timing and resend requests) is only read to learn its
UDP ports. A user debugging a sender can run this on their own tcpdump.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from raopd.core.events import AudioReady
from raopd.core.session import Channel, RaopSession, ReceiverInfo, SessionPorts
from raopd.errors import CaptureError
from raopd.house.state import Change, ChangeKind, PlayerTracker
from raopd.output.sinks import FileSink
from raopd.pcap import Datagram, PcapDamage, read_pcap

RTSP_METHODS = (
    b"OPTIONS ",
    b"ANNOUNCE ",
    b"SETUP ",
    b"RECORD ",
    b"GET ",
    b"POST ",
    b"SET_PARAMETER ",
    b"GET_PARAMETER ",
    b"FLUSH ",
    b"TEARDOWN ",
)
_TRANSPORT_PORTS = re.compile(rb"Transport:[^\r\n]*", re.IGNORECASE)
_PORT_OPTION = re.compile(rb"(control_port|timing_port|server_port)=(\d+)")


@dataclass(slots=True)
class ReplaySummary:
    """What a replay saw, for the one-screen summary and for tests."""

    capture: str
    user_agent: str = ""
    client_name: str = ""
    codec: str = "?"
    encrypted: bool = False
    requests: list[str] = field(default_factory=list)
    audio_packets: int = 0
    resent_packets: int = 0
    duplicates: int = 0
    late: int = 0
    missing: int = 0
    lost: int = 0
    resend_requests: int = 0
    bad_datagrams: int = 0
    frames_out: int = 0
    silent_frames: int = 0
    flushes: int = 0
    volume: float | None = None
    metadata: list[str] = field(default_factory=list)
    artwork_bytes: int = 0
    progress: tuple[int, int, int] | None = None
    ended: str = ""
    damage: str = ""
    """Why the capture cannot give the whole session ('' when it can)."""
    tracker: PlayerTracker = field(default_factory=PlayerTracker, repr=False, compare=False)

    def render(self) -> str:
        """The one-screen summary."""
        seconds = self.frames_out / 44100
        lines = [
            f"capture        {self.capture}",
            f"sender         {self.user_agent or '?'}"
            + (f" ({self.client_name})" if self.client_name else ""),
            f"codec          {self.codec}, "
            + ("encrypted (RSA + AES)" if self.encrypted else "not encrypted"),
            f"requests       {', '.join(self.requests)}",
            f"audio packets  {self.audio_packets} ({self.resent_packets} resent, "
            f"{self.duplicates} duplicates, {self.late} late)",
            f"gaps           {self.missing} packets missing, {self.lost} never repaired, "
            f"{self.resend_requests} resend requests",
            f"bad datagrams  {self.bad_datagrams}",
            f"frames out     {self.frames_out} ({seconds:.3f} s, {self.silent_frames} silent "
            "for losses)",
            f"flushes        {self.flushes}",
            f"volume         {self.volume if self.volume is not None else '-'}",
            f"metadata       {'; '.join(self.metadata) or '-'}",
            f"artwork        {self.artwork_bytes} bytes"
            if self.artwork_bytes
            else "artwork        -",
            f"progress       {'/'.join(map(str, self.progress)) if self.progress else '-'}",
            f"ended          {self.ended or 'end of capture'}",
        ]
        if self.damage:
            lines.append(f"damaged        {self.damage}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Capture:
    """A capture's records, with where the receiver in it listened."""

    name: str
    records: list[Datagram]
    server: tuple[str, int]
    client_ip: str
    ports: SessionPorts
    damage: PcapDamage = field(default_factory=PcapDamage)


def load_capture(path: Path) -> Capture:
    """Read a capture and find its RTSP server, sender and receiver UDP ports.

    Raises CaptureError, saying what is wrong with the file, when it holds no session to
    replay (no RTSP stream, packets cut by a short snapshot length, cut inside a record).
    """
    damage = PcapDamage()
    with path.open("rb") as stream:
        records = list(read_pcap(stream, damage))
    try:
        server = _find_rtsp_server(records)
        ports = _find_receiver_ports(records, server)
    except CaptureError as exc:
        raise CaptureError(_explain(str(exc), records, damage)) from None
    client_ip = next(r.src[0] for r in records if r.transport == "tcp" and r.dst == server)
    return Capture(path.name, records, server, client_ip, ports, damage)


def _snaplen_text(damage: PcapDamage) -> str:
    return (
        f"the snapshot length {damage.snaplen} cut {damage.cut_records} packets (up to "
        f"{damage.longest_cut} bytes on the wire); capture again with tcpdump -s 0"
    )


def _truncated_text(damage: PcapDamage) -> str:
    return (
        f"the capture is truncated at byte {damage.truncated_at} of {damage.size} (a record "
        "there is incomplete): whatever followed is missing"
    )


def _explain(problem: str, records: list[Datagram], damage: PcapDamage) -> str:
    """Why a capture has no session, as precisely as the file lets us tell."""
    if damage.cut_records:
        return f"{problem}: {_snaplen_text(damage)}"
    tcp = sum(1 for r in records if r.transport == "tcp")
    udp = len(records) - tcp
    if damage.truncated_at is not None and damage.truncated_at < 4096:
        return f"{problem}: {_truncated_text(damage)}"
    if problem.startswith("no RTSP"):
        return (
            f"no RTSP stream in the capture ({tcp} TCP payloads, {udp} UDP datagrams, none "
            "of them an RTSP request): capture the receiver's RTSP port (5000) as well as "
            "its UDP ports, from before the sender connects"
        )
    return problem


def _damage(capture: Capture, session: RaopSession, audio_datagrams: int) -> str:
    """What keeps this replay from being the whole session, or ''."""
    problems = []
    if capture.damage.truncated_at is not None:
        problems.append(_truncated_text(capture.damage))
    if capture.damage.cut_udp:
        problems.append(_snaplen_text(capture.damage))
    if session.params is None and audio_datagrams:
        problems.append(
            f"{audio_datagrams} audio packets but no ANNOUNCE: the codec and (for encrypted "
            "audio) the AES key are unknown, so nothing can be decoded; start the capture "
            "before the sender starts playing"
        )
    return "; ".join(problems)


def replay(capture: Path, output: Path | None) -> ReplaySummary:
    """Replay `capture`, writing its audio to `output` (WAV if it ends in .wav, else raw)."""
    return run_replay(load_capture(capture), output)


def run_replay(capture: Capture, output: Path | None) -> ReplaySummary:
    """Feed a loaded capture to a RaopSession, as the daemon would, and collect its audio."""
    records, server, ports = capture.records, capture.server, capture.ports
    channels = {
        ports.audio: Channel.AUDIO,
        ports.control: Channel.CONTROL,
        ports.timing: Channel.TIMING,
    }
    summary = ReplaySummary(capture=capture.name)
    session = RaopSession(
        receiver=ReceiverInfo(name="replay", hw_addr=bytes(6)),
        ports=ports,
        local_ip=server[0],
        peer_ip=capture.client_ip,
        now=records[0].time if records else 0.0,
    )
    # The daemon's file sink: WAV when the name ends in .wav, raw S16_LE otherwise, - for stdout.
    sink = FileSink(str(output)) if output is not None else None
    if sink is not None:
        sink.open()
    audio_datagrams = 0
    try:
        for record in records:
            _run_timers(session, record.time, sink, summary)
            if record.transport == "tcp":
                if record.dst == server:
                    session.receive_data(record.payload, record.time)
                    session.data_to_send()
            elif record.dst[0] == server[0] and record.dst[1] in channels:
                audio_datagrams += channels[record.dst[1]] is Channel.AUDIO
                session.datagram_received(
                    channels[record.dst[1]], record.payload, record.src, record.time
                )
            session.datagrams_to_send()
            _drain_events(session, sink, summary)
            if sink is not None and not sink.opened:
                # `raopd replay X --output - | head`: the reader has all it wants.
                raise BrokenPipeError("the output's reader closed it")
        session.finish()
        _drain_events(session, sink, summary)
    finally:
        if sink is not None:
            sink.close()
    _fill_counters(session, summary)
    summary.damage = _damage(capture, session, audio_datagrams)
    return summary


def _run_timers(
    session: RaopSession, until: float, sink: FileSink | None, summary: ReplaySummary
) -> None:
    while (timer := session.get_timer()) is not None and timer <= until:
        session.handle_timer(timer)
        session.datagrams_to_send()
        _drain_events(session, sink, summary)


def _drain_events(session: RaopSession, sink: FileSink | None, summary: ReplaySummary) -> None:
    while (event := session.next_event()) is not None:
        if isinstance(event, AudioReady):  # the audio path, as the daemon's router takes it
            if sink is not None:
                sink.write(event.pcm)
            summary.frames_out += len(event.pcm)
            if event.lost:
                summary.silent_frames += len(event.pcm)
            continue
        # Everything else through the daemon's own player state: one place reads events.
        for change in summary.tracker.apply(session, event, 0.0):
            _note_change(change, summary)


def _note_change(change: Change, summary: ReplaySummary) -> None:
    state, kind = change.state, change.kind
    if kind is ChangeKind.SENDER and state.sender is not None:
        summary.user_agent = state.sender.user_agent
        summary.client_name = state.sender.name
    elif kind is ChangeKind.SENDER or kind is ChangeKind.PLAY_END:
        summary.ended = change.reason
    elif kind is ChangeKind.PLAY_BEGIN and state.stream is not None:
        summary.codec = state.stream.codec
        summary.encrypted = state.stream.encrypted
        if state.sender is not None:
            summary.user_agent = state.sender.user_agent or summary.user_agent
            summary.client_name = state.sender.name or summary.client_name
    elif kind is ChangeKind.FLUSH:
        summary.flushes += 1
    elif kind is ChangeKind.VOLUME and state.volume is not None:
        summary.volume = state.volume.airplay
    elif kind is ChangeKind.METADATA:
        track = state.track
        text = " / ".join(x for x in (track.title, track.artist, track.album) if x)
        summary.metadata.append(text or "(empty)")
    elif kind is ChangeKind.ARTWORK:
        summary.artwork_bytes = len(state.artwork.data) if state.artwork is not None else 0
    elif kind is ChangeKind.PROGRESS and state.progress is not None:
        progress = state.progress
        summary.progress = (progress.start, progress.current, progress.end)


def _fill_counters(session: RaopSession, summary: ReplaySummary) -> None:
    jitter = session.jitter_stats
    summary.requests = [
        name if count == 1 else f"{name} x{count}" for name, count in session.request_counts.items()
    ]
    summary.audio_packets = session.stats.audio_packets
    summary.resent_packets = session.stats.resent_packets
    summary.bad_datagrams = session.stats.bad_datagrams + session.stats.undecodable
    summary.duplicates = jitter.duplicates
    summary.late = jitter.late
    summary.missing = jitter.missing
    summary.lost = jitter.lost
    summary.resend_requests = jitter.resend_requests
    if not summary.user_agent:
        summary.user_agent = session.user_agent
    if session.params is not None and summary.codec == "?":
        summary.codec = session.params.codec.name
        summary.encrypted = session.params.rsaaeskey is not None


def _find_rtsp_server(records: Iterable[Datagram]) -> tuple[str, int]:
    for record in records:
        if record.transport == "tcp" and record.payload.startswith(RTSP_METHODS):
            return record.dst
    raise CaptureError("no RTSP request found in the capture")


def _find_receiver_ports(records: list[Datagram], server: tuple[str, int]) -> SessionPorts:
    """The receiver's UDP ports, from its SETUP response's Transport header."""
    for record in records:
        if record.transport != "tcp" or record.src != server:
            continue
        for line in _TRANSPORT_PORTS.findall(record.payload):
            found = {k.decode(): int(v) for k, v in _PORT_OPTION.findall(line)}
            if {"control_port", "timing_port", "server_port"} <= found.keys():
                return SessionPorts(
                    audio=found["server_port"],
                    control=found["control_port"],
                    timing=found["timing_port"],
                )
    raise CaptureError("no SETUP response with the receiver's ports found in the capture")
