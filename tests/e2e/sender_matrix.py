"""One recorded session of a real sender into raopd, and the checks every sender must pass.

`record_session` starts raopd (raw file output, flushed as written) in the receiver's
namespace and tcpdump on the sender's veth, and lets the caller's `play` run a sender. Before
`play` takes the sender down it calls `until_sent`, which waits until the sender has put all
of the file on the wire and raopd has written as many frames as were sent: a user lets the
stream play out before closing the sender, and both senders keep the connection open until
told otherwise (closing at once would cut off audio still in flight, which no receiver
plays after the connection is gone). Then it waits for raopd to end the session,
stops raopd cleanly (the WAV is complete only then) and returns the live output, the audio
the sender put on the wire (decoded from the capture by tests/e2e/wire_audio.py, not by
raopd) and what `raopd replay` makes of the same capture.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raopd.replay import replay
from tests.e2e.conftest import RATE, Launcher, read_wav, trim_silence, wait_for
from tests.e2e.packet_capture import Tcpdump
from tests.e2e.wire_audio import WireAudio, wire_audio
from tests.net.conftest import Lan


@dataclass
class Session:
    live: np.ndarray  # raopd's --output, all of it
    wire: WireAudio
    replayed: np.ndarray  # `raopd replay` of the capture, all of it
    log: str  # raopd's log
    pcap: Path


def record_session(
    raopd: Launcher,
    lan: Lan,
    directory: Path,
    play: Callable[[Callable[..., None]], None],
    *raopd_args: str,
    network: bool = True,
) -> Session:
    out = directory / "live.raw"
    pcap = directory / "session.pcap"
    args = ["--output", str(out), *raopd_args]
    if not network:  # every address, both families; advertised on the veth only
        args += ["--interface", lan.a_if]
    daemon = raopd(*args, network=network)
    daemon.wait_ready()
    with Tcpdump(lan.b, lan.b_if, pcap):

        def until_sent(count: int | None = None) -> None:
            sent = int(wait_for(lambda: _sent_all(pcap, count), "the sender to send the file"))
            wait_for(lambda: _written(out) >= sent, f"raopd to write the {sent} frames sent")

        play(until_sent)
        log = daemon.wait_log(r"\] playing ")
        session = re.findall(r"\[session (\d+)\] playing ", log)[-1]
        daemon.wait_log(rf"\[session {session}\] ended: ")
    code, _ = daemon.stop()
    assert code == 0, daemon.log
    replayed_path = directory / "replayed.wav"
    replay(pcap, replayed_path)
    live = np.frombuffer(out.read_bytes(), "<i2").reshape(-1, 2)
    return Session(live, wire_audio(pcap), read_wav(replayed_path), daemon.log, pcap)


def _written(raw: Path) -> int:
    return raw.stat().st_size // 4 if raw.exists() else 0


def _sent_all(pcap: Path, count: int | None) -> int:
    """Frames on the wire once the sender has sent all of the file (else 0): `count` frames
    of anything if given, else audio followed by silence (the clips have no silence of their
    own; the senders pad their last packet, then send silence or nothing)."""
    try:
        frames = wire_audio(pcap).frames
    except AssertionError:  # no ANNOUNCE or no audio yet
        return 0
    if count is not None:
        return len(frames) if len(frames) >= count else 0
    return len(frames) if frames.any() and not frames[-1].any() else 0


def first_difference(a: np.ndarray, b: np.ndarray) -> str:
    n = min(len(a), len(b))
    unequal = np.flatnonzero(np.any(a[:n] != b[:n], axis=1))
    at = int(unequal[0]) if len(unequal) else n
    return f"lengths {len(a)} and {len(b)}, first difference at frame {at}"


def assert_plays_what_was_sent(session: Session) -> np.ndarray:
    """raopd's output is exactly the audio on the wire; `raopd replay` gives the same.

    Silence at either end is the sender's own (it sends silence before and after the file),
    so both sides are compared without it; anything inside, including any silence, must
    match frame for frame. Returns the audio (without the silent ends).
    """
    wire = session.wire
    assert wire.undecodable == 0 and wire.zero_payloads == 0, wire.requests
    sent = trim_silence(wire.frames)
    assert len(sent) > RATE, f"under a second of audio on the wire: {wire.requests}"
    live = trim_silence(session.live)
    assert np.array_equal(live, sent), "live output != wire audio: " + first_difference(live, sent)
    replayed = trim_silence(session.replayed)
    assert np.array_equal(replayed, sent), "replay != wire audio: " + first_difference(
        replayed, sent
    )
    # Nothing stale or made up around it: raopd writes no more frames than were sent.
    assert len(session.live) <= len(wire.frames), (len(session.live), len(wire.frames))
    assert "Traceback" not in session.log and " ERROR " not in session.log, session.log
    return sent


def assert_is_source(sent: np.ndarray, source: np.ndarray, *, head: int, tail: int) -> None:
    """`sent` is `source` bit for bit, less at most `head` frames at the start and `tail`
    frames at the end (what a sender drops before RECORD is answered / in its last cycle)."""
    start = _find(source[: head + 64], sent[:64])
    if start is None:
        anywhere = _find(source, sent[:64])
        raise AssertionError(
            f"the wire audio does not start within {head} frames of the source"
            + (f" but at frame {anywhere}" if anywhere is not None else " (nor anywhere in it)")
        )
    assert np.array_equal(sent, source[start : start + len(sent)]), (
        "wire audio is not the source: " + first_difference(sent, source[start:])
    )
    missing = len(source) - start - len(sent)
    assert 0 <= missing <= tail, f"{missing} frames of the source missing at the end"


def _find(haystack: np.ndarray, needle: np.ndarray) -> int | None:
    for offset in range(len(haystack) - len(needle) + 1):
        if np.array_equal(haystack[offset : offset + len(needle)], needle):
            return offset
    return None
