"""The recorded PipeWire and PulseAudio sessions (tests/captures/README.md) replay to exactly
the audio their sender put on the wire, decoded independently by tests/e2e/wire_audio.py.

The live versions of these sessions run in tests/e2e/test_desktop_senders.py (root and
namespaces); these need neither, so they also guard the decoder on every plain test run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raopd.replay import replay
from tests.e2e.wire_audio import wire_audio
from tests.test_replay import CAPTURES, read_frames, trim_silence

CLIP_START = 5 * 44100  # the clip every one of these sessions streamed: test30.wav 5 s..11 s
CLIP_FRAMES = 6 * 44100

# capture -> (frames PipeWire dropped before RECORD was answered, frames sent of the clip)
SOURCE_SESSIONS = {
    "pipewire-alac-plain": (0, 264192),
    "pipewire-alac-rsa": (0, 264192),
    "pipewire-auth-setup": (1760, 262432),
    "pulseaudio-alac-plain": (0, CLIP_FRAMES),
    "pulseaudio-alac-rsa": (0, CLIP_FRAMES),
}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return read_frames(CAPTURES / "test30.wav")[CLIP_START : CLIP_START + CLIP_FRAMES]


@pytest.mark.parametrize("name", [*SOURCE_SESSIONS, "pipewire-alac-48k"])
def test_replay_is_the_wire_audio(name: str, tmp_path: Path):
    out = tmp_path / "out.wav"
    summary = replay(CAPTURES / f"{name}.pcap", out)
    wire = wire_audio(CAPTURES / f"{name}.pcap")
    assert wire.undecodable == 0 and wire.zero_payloads == 0
    assert summary.audio_packets == wire.packets
    assert summary.undecodable == {} or not any(summary.undecodable.values())
    assert summary.lost == 0 and summary.bad_datagrams == 0
    replayed = trim_silence(read_frames(out))
    sent = trim_silence(wire.frames)
    assert replayed.shape == sent.shape
    assert np.array_equal(replayed, sent)


@pytest.mark.parametrize("name", SOURCE_SESSIONS)
def test_wire_audio_is_the_source_clip(name: str, clip: np.ndarray):
    """What the capture holds: the clip bit for bit, not a decoder's guess at it."""
    start, length = SOURCE_SESSIONS[name]
    sent = trim_silence(wire_audio(CAPTURES / f"{name}.pcap").frames)
    assert np.array_equal(sent, clip[start : start + length])


def test_pulseaudio_pcm_zeros_replay_as_silence_of_their_length(tmp_path: Path):
    out = tmp_path / "out.raw"
    summary = replay(CAPTURES / "pulseaudio-pcm-zeros.pcap", out)
    frames = read_frames(out)
    assert summary.audio_packets == 752
    assert sum(summary.undecodable.values()) == 752
    assert len(frames) == 752 * 352 and not frames.any()
    assert "undecodable" in summary.render()


@pytest.mark.parametrize("name", ["pipewire-tcp", "pulseaudio-tcp"])
def test_tcp_transport_sessions_have_no_audio(name: str):
    summary = replay(CAPTURES / f"{name}.pcap", None)
    assert summary.audio_packets == 0 and summary.frames_out == 0
    assert any(request.startswith("SETUP") for request in summary.requests)
