"""Packet loss end to end: raopd's sender -> a real raopd process over loopback -> a WAV file.

The sender streams 10 s of test30.wav with RSA/AES and compressed ALAC, dropping 2% of the
packets on their first send (seeded, so the same packets every run, including the first one
of the stream).

Speed: the sender runs 2x real time. The daemon writes a file, which is untimed, so only the
jitter buffer's real-time deadlines matter: a gap is asked for again 0.1 s after it is seen
and given up after the repair window (1 s, or 1.5 s once the clock has a latency). On
loopback a resent packet comes back within milliseconds, so any speed keeps resends in time;
what the speed must respect is the buffer's size: while a lost packet holds up output for a
whole repair window (resends off), 2 x 1.5 s x 125 packets/s = 375 packets pile up behind it,
well inside the 1024-packet capacity, and the daemon's socket buffer is not pushed hard on a
busy machine. The sender lingers 3 s (real time) before TEARDOWN, longer than any repair
window, so the last gap is settled before the session ends.

Datagrams the kernel itself dropped because the daemon fell behind (/proc/net/udp) are
accounted for explicitly, so a loaded machine cannot turn into a false verdict on raopd.
"""

from __future__ import annotations

import numpy as np
import pytest

from raopd.tools.sender import FRAMES_PER_PACKET, RaopSender, SenderOptions, SenderReport
from tests.e2e.daemon import DEVICE_ID, Daemon, read_wav, udp_drops

SECONDS = 10
SPEED = 2.0
LINGER = 3.0
SEED = 28  # its drops include packet 0 and two neighbours (checked below)


def options(**overrides: object) -> SenderOptions:
    base: dict[str, object] = {
        "codec": "alac",
        "encrypt": True,
        "speed": SPEED,
        "linger": LINGER,
        "hw_addr": bytes.fromhex(DEVICE_ID),
        "drop": 0.02,
        "seed": SEED,
    }
    base.update(overrides)
    return SenderOptions(**base)  # type: ignore[arg-type]


async def stream(daemon: Daemon, pcm: np.ndarray, opts: SenderOptions) -> tuple[SenderReport, int]:
    """Stream, and count kernel drops on the daemon's sockets before they close."""
    sender = RaopSender("127.0.0.1", daemon.port, opts)
    try:
        await sender.connect()
        await sender.play(pcm)
        report = sender.report
        kernel_drops = udp_drops([report.server_port, report.control_port])
        await sender.teardown()
    finally:
        await sender.close()
    assert await daemon.stop() == 0, "\n".join(daemon.log)
    return report, kernel_drops


def index_of(report: SenderReport, seq: int) -> int:
    return (seq - report.first_seq) & 0xFFFF


@pytest.fixture
def source(test30: np.ndarray) -> np.ndarray:
    return test30[: SECONDS * 44100]


def check_handshake(report: SenderReport) -> None:
    assert report.apple_response is True
    assert report.receiver_hw_addr == DEVICE_ID
    assert report.timing_replies > 0  # the daemon asked for our clock
    assert report.packets == -(-SECONDS * 44100 // FRAMES_PER_PACKET)


async def test_resends_repair_two_percent_loss_bit_exact(start_daemon, source):
    daemon = await start_daemon()
    report, kernel_drops = await stream(daemon, source, options())

    check_handshake(report)
    assert len(report.dropped) == round(0.02 * (report.packets - 1)) == 25
    assert report.dropped[0] == report.first_seq  # the very first packet was lost too
    assert any(b - a == 1 for a, b in zip(report.dropped, report.dropped[1:], strict=False))
    # Every dropped packet was asked for; anything else only if the kernel lost it.
    requested = set(report.requested)
    assert set(report.dropped) <= requested
    assert len(requested - set(report.dropped)) <= kernel_drops
    assert report.unavailable == 0
    out = read_wav(daemon.output)
    assert out.shape == source.shape
    assert np.array_equal(out, source)


async def test_without_resends_lost_packets_become_silence_in_place(start_daemon, source):
    daemon = await start_daemon("--no-resend")
    report, kernel_drops = await stream(daemon, source, options())

    check_handshake(report)
    assert report.requested == []  # the daemon asked for nothing
    out = read_wav(daemon.output)
    assert out.shape == source.shape  # the timeline kept its length

    def silent(pcm: np.ndarray) -> set[int]:
        return {
            i
            for i in range(report.packets)
            if not pcm[i * FRAMES_PER_PACKET : (i + 1) * FRAMES_PER_PACKET].any()
        }

    silent_out = silent(out)
    dropped = {index_of(report, seq) for seq in report.dropped}
    assert dropped <= silent_out
    assert len(silent_out - dropped - silent(source)) <= kernel_drops
    # Everywhere else the output is the source, sample for sample.
    expected = source.copy()
    for i in silent_out:
        expected[i * FRAMES_PER_PACKET : (i + 1) * FRAMES_PER_PACKET] = 0
    assert np.array_equal(out, expected)


async def test_reordered_and_duplicated_packets_with_resends_bit_exact(start_daemon, source):
    daemon = await start_daemon()
    report, kernel_drops = await stream(
        daemon, source, options(reorder=0.05, duplicate=0.05, seed=SEED + 1)
    )

    check_handshake(report)
    assert len(report.reordered) > 20 and len(report.duplicated) > 20
    assert report.sent == report.packets - len(report.dropped) + len(report.duplicated)
    requested = set(report.requested)
    assert set(report.dropped) <= requested
    # A swapped packet arrives within milliseconds, long before a resend is due.
    assert len(requested - set(report.dropped)) <= kernel_drops
    out = read_wav(daemon.output)
    assert np.array_equal(out, source)
