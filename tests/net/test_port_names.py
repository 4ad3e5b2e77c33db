"""The UDP port names of the manifests and the Dockerfile are the order raopd binds them in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raopd.config import FIELDS
from raopd.net.server import RtspConnection
from tests.net.test_server import FakeTransport, free_port_run, make_server, settle

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = [ROOT / "k8s" / "deployment.yaml", ROOT / "k8s" / "daemonset" / "daemonset.yaml"]


async def test_first_connection_binds_control_timing_audio_from_the_base():
    base = free_port_run(3)
    server = make_server(base, 3)
    connection = RtspConnection(server)
    connection.connection_made(FakeTransport())
    await settle(server)
    assert connection.session is not None
    ports = connection.session.ports
    assert (ports.control, ports.timing, ports.audio) == (base, base + 1, base + 2)
    connection.shutdown()


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifests_name_the_udp_ports_as_setup_answers_them(manifest: Path):
    text = manifest.read_text()
    named = dict(
        re.findall(r"- name: (\w+)\s+containerPort: (\d+)\s+protocol: UDP", text, re.MULTILINE)
    )
    base = FIELDS["udp_port_base"].default
    assert named == {"control": str(base), "timing": str(base + 1), "audio": str(base + 2)}
