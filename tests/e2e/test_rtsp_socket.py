"""raopd's RTSP server over real sockets: errors are answered, IPv6 loopback streams end to end."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from raopd.core.packets import AudioPacket, TimingPacket
from tests.e2e.conftest import (
    DEADLINE,
    L16_SDP,
    Daemon,
    Launcher,
    RtspClient,
    test_clip,
    wait_for,
)

FRAMES_PER_PACKET = 352


def listen_everywhere(launcher: Launcher, lan, out: Path) -> Daemon:
    """raopd in namespace A on every address (both families), writing raw PCM to `out`.

    Raw output is flushed at every write, so the file's size says how much audio arrived.
    """
    daemon = launcher("--output", str(out), "--address", "", "--interface", lan.a_if, network=False)
    daemon.wait_ready()
    return daemon


@pytest.fixture(scope="module")
def shared_daemon(lan, tmp_path_factory):
    """One daemon (and its output file) for this module's tests: each start costs seconds.

    Only the IPv6 test sends audio, so the output holds its audio alone.
    """
    directory = tmp_path_factory.mktemp("rtsp")
    launcher = Launcher(lan, directory)
    out = directory / "out.raw"
    yield listen_everywhere(launcher, lan, out), out
    launcher.kill_all()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_unknown_method_gets_501_and_the_connection_stays(lan, shared_daemon, host):
    client = RtspClient.connect(lan, lan.a, host)
    reply = client.request("FROBNICATE", "rtsp://x/1")
    assert reply.status == 501
    assert reply.headers["server"].startswith("AirTunes/")
    assert client.request("GET", "/no-such-thing").status == 501
    assert client.request("OPTIONS").status == 200  # still talking
    client.close()


def test_garbage_gets_400_then_close(lan, shared_daemon):
    client = RtspClient.connect(lan, lan.a, "127.0.0.1")
    client.sock.sendall(b"\x16\x03\x01 this is not RTSP at all\r\n\r\n")
    assert client.read_reply().status == 400
    assert client.at_eof()
    client.close()
    again = RtspClient.connect(lan, lan.a, "127.0.0.1")  # the daemon itself is fine
    assert again.request("OPTIONS").status == 200
    again.close()


def test_ipv6_loopback_session_end_to_end(lan, shared_daemon, tmp_path):
    """ANNOUNCE/SETUP/RECORD over ::1, timing request back over UDP, audio in bit-exact."""
    daemon, out = shared_daemon

    def udp() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
        sock.settimeout(DEADLINE)
        return sock

    control, timing, audio_out = (lan.call_in(lan.a, udp) for _ in range(3))
    client = RtspClient.connect(lan, lan.a, "::1")
    sdp = L16_SDP.format(local="::1", remote="::1").encode()
    uri = "rtsp://[::1]/42"
    assert client.request("ANNOUNCE", uri, {"Content-Type": "application/sdp"}, sdp).status == 200
    transport = (
        "RTP/AVP/UDP;unicast;interleaved=0-1;mode=record;"
        f"control_port={control.getsockname()[1]};timing_port={timing.getsockname()[1]}"
    )
    setup = client.request("SETUP", uri, {"Transport": transport})
    assert setup.status == 200
    fields = dict(
        part.split("=", 1) for part in setup.headers["transport"].split(";") if "=" in part
    )
    server_port = int(fields["server_port"])

    # raopd asks for our time from its timing port: its UDP send path works over IPv6.
    data, source = timing.recvfrom(2048)
    request = TimingPacket.parse(data)
    assert not request.reply
    assert source[0] == "::1" and source[1] == int(fields["timing_port"])

    seq, rtptime = 1000, 77777
    record = client.request("RECORD", uri, {"RTP-Info": f"seq={seq};rtptime={rtptime}"})
    assert record.status == 200
    _, frames = test_clip(tmp_path / "clip.wav", start_s=8.0, seconds=0.5)
    frames = frames[: len(frames) // FRAMES_PER_PACKET * FRAMES_PER_PACKET]
    for i, start in enumerate(range(0, len(frames), FRAMES_PER_PACKET)):
        payload = frames[start : start + FRAMES_PER_PACKET].astype(">i2").tobytes()
        packet = AudioPacket(seq + i, rtptime + start, 0x1234, payload, marker=(i == 0))
        audio_out.sendto(bytes(packet), ("::1", server_port))
    wait_for(lambda: out.stat().st_size >= 4 * len(frames), "the audio to arrive")

    teardown = client.request("TEARDOWN", uri)
    assert teardown.status == 200
    assert client.at_eof()
    for sock in (client, control, timing, audio_out):
        sock.close()
    daemon.wait_log(r"ended: teardown")
    received = np.frombuffer(out.read_bytes(), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(received, frames)


def udp_ports_bound(lan) -> list[int]:
    """raopd's session ports (the default 6001-6010) bound in namespace A now."""
    listing = subprocess.run(
        ["ip", "netns", "exec", lan.a, "ss", "-Huan"], check=True, capture_output=True, text=True
    ).stdout
    ports = [int(line.split()[3].rsplit(":", 1)[1]) for line in listing.splitlines()]
    return [port for port in ports if 6001 <= port <= 6010]


def test_tcp_probes_leave_no_udp_ports_behind(lan, shared_daemon):
    """Health checks connect and hang up at once; that must not use up the port range."""
    for _ in range(8):  # 24 ports' worth, against a range of 10
        probe = lan.call_in(lan.b, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        probe.settimeout(DEADLINE)
        probe.connect((lan.a_ip, 5000))
        probe.close()
        wait_for(lambda: not udp_ports_bound(lan), "the probe's UDP ports to be released")
    client = RtspClient.connect(lan, lan.b, lan.a_ip)
    sdp = L16_SDP.format(local=lan.b_ip, remote=lan.a_ip).encode()
    uri = "rtsp://10.78.0.2/7"
    assert client.request("ANNOUNCE", uri, {"Content-Type": "application/sdp"}, sdp).status == 200
    transport = "RTP/AVP/UDP;unicast;interleaved=0-1;mode=record;control_port=1;timing_port=2"
    assert client.request("SETUP", uri, {"Transport": transport}).status == 200
    assert len(udp_ports_bound(lan)) == 3
    assert client.request("TEARDOWN", uri).status == 200
    client.close()
