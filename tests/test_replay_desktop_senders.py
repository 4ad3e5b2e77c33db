"""`raopd replay` of real PipeWire 0.3.65 and PulseAudio 16.1 sessions (tests/captures).

Both send verbatim ALAC frames without the END element, which FFmpeg refuses: before the
native decoder raopd wrote zero frames from them and said nothing. Each replay must give
exactly the audio the sender put on the wire, decoded independently of raopd by
tests/e2e/wire_audio.py, with nothing counted undecodable; PulseAudio's PCM mode (all-zero
ALAC frames) must give silence of the stream's length, counted and reported.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from raopd.replay import load_capture, run_replay
from tests.e2e.wire_audio import wire_audio

CAPTURES = Path(__file__).parent / "captures"
PLAYING = [
    "pipewire-alac-plain",
    "pipewire-alac-rsa",
    "pipewire-auth-setup",
    "pipewire-alac-48k",
    "pulseaudio-alac-plain",
    "pulseaudio-alac-rsa",
]


def read_wav(path: Path) -> np.ndarray:
    import wave

    with wave.open(str(path), "rb") as wav:
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, "<i2").astype(np.int16).reshape(-1, 2)


@pytest.mark.parametrize("name", PLAYING)
def test_replay_gives_exactly_the_wire_audio(name: str, tmp_path: Path) -> None:
    capture = CAPTURES / f"{name}.pcap"
    wire = wire_audio(capture)
    assert wire.undecodable == 0 and wire.zero_payloads == 0
    out = tmp_path / "out.wav"
    summary = run_replay(load_capture(capture), out)
    assert sum(summary.undecodable.values()) == 0, summary.render()
    assert summary.lost == 0 and summary.silent_frames == 0, summary.render()
    assert summary.frames_out == len(wire.frames)
    assert np.array_equal(read_wav(out), wire.frames)
    assert "undecodable    0 packets" in summary.render()


def test_pulseaudio_pcm_mode_is_silence_of_the_streams_length_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    capture = CAPTURES / "pulseaudio-pcm-zeros.pcap"
    wire = wire_audio(capture)
    assert wire.zero_payloads == wire.packets == 752
    caplog.set_level(logging.WARNING)
    out = tmp_path / "out.wav"
    summary = run_replay(load_capture(capture), out)
    assert summary.undecodable == {"all-zero": 752}
    assert summary.frames_out == summary.silent_frames == 752 * wire.frames_per_packet
    audio = read_wav(out)
    assert len(audio) == 752 * wire.frames_per_packet and not audio.any()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all("all-zero" in w for w in warnings if "undecodable" in w)
    assert "752 packets (752 all-zero), played as silence" in summary.render()
