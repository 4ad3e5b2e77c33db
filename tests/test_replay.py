"""Every recorded real session replays to exactly the audio its sender streamed."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from raopd.cli import main
from raopd.replay import replay

CAPTURES = Path(__file__).resolve().parent / "captures"
FULL_SESSIONS = ["node-alac-rsa", "cliraop-alac-plain", "pyatv-l16"]


def read_frames(path: Path) -> np.ndarray:
    if path.suffix == ".wav":
        with wave.open(str(path), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 44100)
            data = w.readframes(w.getnframes())
    else:
        data = path.read_bytes()
    return np.frombuffer(data, dtype="<i2").reshape(-1, 2)


def trim_silence(frames: np.ndarray) -> np.ndarray:
    """Drop leading and trailing frames that are digital silence (all zero)."""
    sound = np.flatnonzero(frames.any(axis=1))
    if len(sound) == 0:
        return frames[:0]
    return frames[sound[0] : sound[-1] + 1]


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return trim_silence(read_frames(CAPTURES / "test30.wav"))


@pytest.mark.parametrize("name", FULL_SESSIONS)
def test_capture_replays_bit_exact(name: str, tmp_path: Path, source: np.ndarray):
    out = tmp_path / f"{name}.wav"
    summary = replay(CAPTURES / f"{name}.pcap", out)
    frames = trim_silence(read_frames(out))
    assert frames.shape == source.shape
    assert np.array_equal(frames, source)
    assert summary.lost == 0 and summary.bad_datagrams == 0
    assert summary.frames_out == len(read_frames(out))


def test_fmtp_crash_capture_decodes_its_quarter_second(tmp_path: Path, source: np.ndarray):
    out = tmp_path / "crash.raw"
    summary = replay(CAPTURES / "pyatv-stock-l16-fmtp-crash.pcap", out)
    assert summary.codec == "L16"
    frames = read_frames(out)
    assert len(frames) == 31 * 352
    # The sender streamed the first 31 packets of the same file: exactly those frames.
    assert np.array_equal(frames, source[: len(frames)])


def test_short_last_packet_ends_the_stream_without_stale_audio(tmp_path: Path, source):
    out = tmp_path / "cliraop.raw"
    replay(CAPTURES / "cliraop-alac-plain.pcap", out)
    frames = read_frames(out)
    # The last packet holds 184 frames: the file ends with them, nothing after.
    assert np.array_equal(trim_silence(frames)[-184:], source[-184:])
    tail = frames[len(frames) - 184 :]
    assert np.array_equal(tail, source[-184:])


def test_summary_describes_the_encrypted_session():
    summary = replay(CAPTURES / "node-alac-rsa.pcap", None)
    text = summary.render()
    assert summary.encrypted and summary.codec == "ALAC"
    assert "iTunes/11.3.1" in summary.user_agent
    assert summary.audio_packets == 4128
    assert summary.artwork_bytes == (CAPTURES / "art.jpg").stat().st_size
    assert summary.metadata and summary.progress is not None
    assert "TEARDOWN" in text and "encrypted" in text


def test_cli_replay_writes_wav_and_prints_summary(tmp_path: Path, capsys):
    out = tmp_path / "out.wav"
    assert main(["replay", str(CAPTURES / "pyatv-l16.pcap"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "L16" in printed and "AirPlay/550.10" in printed  # pyatv's user agent
    assert out.stat().st_size > 44 + 30 * 44100 * 4


def test_cli_replay_of_a_non_pcap_fails_with_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all, just text")
    assert main(["replay", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("raopd replay:") and "\n" not in err
