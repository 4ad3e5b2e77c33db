"""AudioPath without RTSP: undecodable packets, silence fill, counters, warnings, pacing."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from raopd.core.audio_path import MAX_AHEAD, WARN_INTERVAL, AudioPath
from raopd.core.clock import ClockEstimate
from raopd.core.events import AudioReady
from raopd.core.packets import AudioPacket
from raopd.core.sdp import Codec, StreamParams
from raopd.core.seq import rtp_add, seq_add
from raopd.media.alac_encode import verbatim_alac_frame
from raopd.media.decoder import make_decoder

FRAMES = 352


def alac_path() -> AudioPath:
    return AudioPath(
        make_decoder(StreamParams(codec=Codec.ALAC)),
        frames_per_packet=FRAMES,
        label="[session 1] TestSender at 192.0.2.1",
    )


def pipewire_frame(pcm: np.ndarray) -> bytes:
    """What PipeWire 0.3 / PulseAudio 16 send: a sized verbatim pair element, no END."""
    bits = (1 << 52) | (1 << 35) | (1 << 32) | len(pcm)  # CPE, has-size, escape, count
    width = 55
    samples = np.ascontiguousarray(pcm, ">i2").tobytes()
    bits = (bits << (8 * len(samples))) | int.from_bytes(samples, "big")
    width += 8 * len(samples)
    pad = -width % 8
    return (bits << pad).to_bytes((width + pad) // 8, "big")


def music(packets: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32768, (packets * FRAMES, 2), dtype=np.int16)


def joined(events: list[AudioReady]) -> np.ndarray:
    for before, after in itertools.pairwise(events):
        assert after.rtptime == rtp_add(before.rtptime, len(before.pcm))  # contiguous
    return np.concatenate([e.pcm for e in events])


def test_pipewire_frames_play_bit_exact():
    path = alac_path()
    pcm = music(50)
    path.start_at(1000, 5000)
    events = []
    for i in range(50):
        frame = pipewire_frame(pcm[i * FRAMES : (i + 1) * FRAMES])
        assert len(frame) == 1415
        path.receive(AudioPacket(seq_add(1000, i), rtp_add(5000, i * FRAMES), 1, frame), 0.0)
        events += path.release(0.0)
    assert np.array_equal(joined(events), pcm)
    assert path.stats.undecodable == 0 and path.stats.frames_out == len(pcm)


def test_500_undecodable_packets_in_a_good_stream(caplog):
    """Issue 9: silence of exactly their length in their place, one warning per interval,
    and the counter says 500."""
    path = alac_path()
    packets = 1500
    pcm = music(packets)
    bad = range(500, 1000)
    path.start_at(0, 0)
    events = []
    caplog.set_level(logging.WARNING, logger="raopd.core.audio_path")
    seconds_per_packet = FRAMES / 44100
    for i in range(packets):
        now = i * seconds_per_packet  # virtual time: the stream's own pace
        payload = (
            b"\x00\x01garbage" * 100
            if i in bad
            else verbatim_alac_frame(pcm[i * FRAMES : (i + 1) * FRAMES])
        )
        path.receive(AudioPacket(i, i * FRAMES, 1, payload), now)
        events += path.release(now)
        path.tick(now)
    out = joined(events)
    expected = pcm.copy()
    expected[500 * FRAMES : 1000 * FRAMES] = 0
    assert np.array_equal(out, expected)
    assert path.stats.undecodable == 500
    assert sum(path.stats.undecodable_by_reason.values()) == 500
    assert path.stats.silent_frames_out == 500 * FRAMES
    # 500 packets last 4.0 s of virtual time: the first one warns, then at most one per
    # WARN_INTERVAL, and every warning names the sender and the reason.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    span = 500 * seconds_per_packet
    assert 1 <= len(warnings) <= 1 + int(span // WARN_INTERVAL) + 1
    for record in warnings:
        assert "TestSender at 192.0.2.1" in record.getMessage()
        assert "undecodable" in record.getMessage()
    # The counts in the warnings add up to all 500 once the stream ends.
    path.drain(packets * seconds_per_packet)
    counted = sum(
        int(r.getMessage().split(" sent ")[1].split()[0])
        for r in caplog.records
        if r.levelno == logging.WARNING
    )
    assert counted == 500


def test_all_zero_frames_are_silence_of_the_streams_length_and_a_warning(caplog):
    """PulseAudio's PCM mode sends all-zero ALAC frames: silence and a warning, not nothing."""
    path = alac_path()
    caplog.set_level(logging.WARNING, logger="raopd.core.audio_path")
    path.start_at(7, 100)
    events = []
    for i in range(200):
        path.receive(AudioPacket(seq_add(7, i), 100 + i * FRAMES, 1, bytes(1415)), i * 0.008)
        events += path.release(i * 0.008)
    out = joined(events)
    assert out.shape == (200 * FRAMES, 2) and not out.any()
    assert all(e.lost for e in events)
    assert path.stats.undecodable_by_reason["all-zero"] == 200
    assert any("all-zero" in r.getMessage() for r in caplog.records)


def test_mono_l16_becomes_stereo_of_the_right_length():
    path = AudioPath(
        make_decoder(StreamParams(codec=Codec.L16, channels=1)), frames_per_packet=FRAMES
    )
    mono = music(3)[:, :1]
    path.start_at(0, 0)
    events = []
    for i in range(3):
        payload = mono[i * FRAMES : (i + 1) * FRAMES].astype(">i2").tobytes()
        path.receive(AudioPacket(i, i * FRAMES, 1, payload), 0.0)
        events += path.release(0.0)
    assert np.array_equal(joined(events), np.repeat(mono, 2, axis=1))


def test_lost_packet_is_silence_of_its_length():
    path = alac_path()
    pcm = music(10)
    path.start_at(0, 0)
    for i in (0, 1, 2, 4, 5, 6, 7, 8, 9):
        path.receive(
            AudioPacket(i, i * FRAMES, 1, verbatim_alac_frame(pcm[i * FRAMES :][:FRAMES])), 0.0
        )
    events = path.release(0.0) + path.drain(5.0)
    expected = pcm.copy()
    expected[3 * FRAMES : 4 * FRAMES] = 0
    assert np.array_equal(joined(events), expected)
    assert path.jitter_stats.lost == 1


def test_sender_far_ahead_of_real_time_is_paced_by_dropping_with_a_counter():
    path = alac_path()
    # Frame 0 is due at local time 0, the stream plays at 44100 frames a second.
    path.estimate = ClockEstimate(
        anchor_rtp=0,
        anchor_local=0.0,
        reference=0.0,
        drift=0.0,
        rate=44100,
        latency_frames=88200,
        offset_ns=0,
        samples=1,
        filter="envelope",
    )
    assert path.estimate.local_time(44100) == pytest.approx(1.0)
    pcm = music(2000)
    path.start_at(0, 0)
    events = []
    for i in range(2000):  # 16 s of audio, all at once at now = 0
        payload = verbatim_alac_frame(pcm[i * FRAMES : (i + 1) * FRAMES])
        path.receive(AudioPacket(i, i * FRAMES, 1, payload), 0.0)
        events += path.release(0.0)
    played = sum(len(e.pcm) for e in events)
    due_within = int(MAX_AHEAD * 44100 // FRAMES) + 1
    assert played == pytest.approx(due_within * FRAMES, abs=FRAMES)
    assert path.stats.paced_packets == 2000 - played // FRAMES
    assert path.stats.paced_packets > 0


def test_without_a_device_nothing_is_paced():
    """A file output takes audio as fast as it comes: a fast sender loses nothing there."""
    path = AudioPath(
        make_decoder(StreamParams(codec=Codec.ALAC)), frames_per_packet=FRAMES, max_ahead=None
    )
    path.estimate = ClockEstimate(
        anchor_rtp=0,
        anchor_local=0.0,
        reference=0.0,
        drift=0.0,
        rate=44100,
        latency_frames=88200,
        offset_ns=0,
        samples=1,
        filter="envelope",
    )
    pcm = music(2000)
    path.start_at(0, 0)
    events = []
    for i in range(2000):
        payload = verbatim_alac_frame(pcm[i * FRAMES : (i + 1) * FRAMES])
        path.receive(AudioPacket(i, i * FRAMES, 1, payload), 0.0)
        events += path.release(0.0)
    assert np.array_equal(joined(events), pcm)
    assert path.stats.paced_packets == 0
