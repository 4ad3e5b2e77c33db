"""Stock pyatv (0.18) streams to raopd found over real mDNS; raopd's file output is bit-exact."""

from __future__ import annotations

import numpy as np

from tests.e2e.conftest import read_wav, test_clip, trim_silence


def test_pyatv_multicast_discovery_and_bit_exact_stream(raopd, pyatv_sender, tmp_path):
    out = tmp_path / "out.wav"
    daemon = raopd("--output", str(out))
    daemon.wait_ready()
    clip, frames = test_clip(tmp_path / "clip.wav", start_s=5.0, seconds=5.0)

    sender = pyatv_sender(clip)  # a full multicast scan on the private LAN
    assert sender.result() == {"result": "ok"}
    daemon.wait_log(r"ended: teardown")
    code, _ = daemon.stop()
    assert code == 0

    sent = trim_silence(frames)
    received = trim_silence(read_wav(out))
    assert len(sent) == 5 * 44100  # the clip itself has no silent edges to hide behind
    assert len(received) == len(sent), "frames were lost or added"
    assert np.array_equal(received, sent)
    log = daemon.log
    assert "playing L16 from 10.78.0.2" in log
    assert "Traceback" not in log and " ERROR " not in log


def test_password_rejects_wrong_and_accepts_right(raopd, pyatv_sender, tmp_path):
    out = tmp_path / "out.wav"
    daemon = raopd("--output", str(out), "--password", "x")
    daemon.wait_ready()
    clip, frames = test_clip(tmp_path / "clip.wav", start_s=12.0, seconds=1.5)

    wrong = pyatv_sender(clip, password="y", unicast=True).result()  # unicast mDNS too
    assert wrong["result"] == "error"
    assert wrong["type"] == "AuthenticationError", wrong
    assert "playing" not in daemon.log

    assert pyatv_sender(clip, password="x").result() == {"result": "ok"}
    daemon.wait_log(r"ended: teardown")
    code, _ = daemon.stop()
    assert code == 0
    received = trim_silence(read_wav(out))
    assert np.array_equal(received, trim_silence(frames))
    assert daemon.log.count("] playing L16") == 1
