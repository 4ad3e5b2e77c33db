"""One sender at a time: a second one gets 453; a sender that vanishes frees raopd at once."""

from __future__ import annotations

import numpy as np

from tests.e2e.conftest import (
    L16_SDP,
    RtspClient,
    read_wav,
    test_clip,
    trim_silence,
    wait_for,
)

WAV_HEADER = 44


def test_busy_then_dropped_sender_frees_the_receiver(lan, raopd, pyatv_sender, tmp_path):
    out = tmp_path / "out.wav"
    # A session timeout far beyond the test's deadlines: only the dropped connection itself
    # can free the receiver in time.
    daemon = raopd("--output", str(out), "--session-timeout", "600")
    daemon.wait_ready()
    long_clip, long_frames = test_clip(tmp_path / "long.wav", start_s=0.0, seconds=25.0)
    short_clip, short_frames = test_clip(tmp_path / "short.wav", start_s=20.0, seconds=1.5)

    first = pyatv_sender(long_clip)
    daemon.wait_log(r"\[session 1\] playing L16")
    # Half a second of its audio has reached the file: it really is playing.
    wait_for(lambda: out.stat().st_size > WAV_HEADER + 4 * 22050, "the first sender's audio")

    second = RtspClient.connect(lan, lan.b, lan.a_ip)
    assert second.request("OPTIONS").status == 200
    sdp = L16_SDP.format(local=lan.b_ip, remote=lan.a_ip).encode()
    announce = {"Content-Type": "application/sdp"}
    busy = second.request("ANNOUNCE", "rtsp://10.78.0.2/1", announce, sdp)
    assert busy.status == 453
    daemon.wait_log(r"\[session 2\] refused \(453\): another sender is playing")
    assert second.request("OPTIONS").status == 200  # refused, not disconnected
    second.close()

    first.kill()  # SIGKILL: no TEARDOWN, the kernel just closes the TCP connection
    daemon.wait_log(r"\[session 1\] ended: connection closed")
    assert "timed out" not in daemon.log

    assert pyatv_sender(short_clip).result() == {"result": "ok"}
    daemon.wait_log(r"ended: teardown")
    code, _ = daemon.stop()
    assert code == 0

    received = trim_silence(read_wav(out))
    tail = trim_silence(short_frames)
    assert np.array_equal(received[-len(tail) :], tail), "the new sender's audio, exactly"
    partial = trim_silence(received[: -len(tail)])
    assert 22050 <= len(partial) < len(long_frames)
    assert np.array_equal(partial, trim_silence(long_frames)[: len(partial)])
    assert daemon.log.count("] playing L16") == 2
