"""Which addresses the advertiser publishes and which interfaces zeroconf listens on."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from zeroconf import InterfaceChoice

from raopd.net import mdns


@dataclass
class FakeIP:
    ip: str | tuple[str, int, int]


@dataclass
class FakeAdapter:
    name: str
    ips: list[FakeIP]
    index: int
    nice_name: str = ""

    def __post_init__(self) -> None:
        self.nice_name = self.nice_name or self.name


@pytest.fixture
def adapters(monkeypatch):
    fake = [
        FakeAdapter("lo", [FakeIP("127.0.0.1"), FakeIP(("::1", 0, 0))], 1),
        FakeAdapter(
            "eth0",
            [FakeIP("192.168.1.20"), FakeIP(("fe80::1", 0, 2)), FakeIP(("fd00::20", 0, 0))],
            2,
        ),
        FakeAdapter("wlan0", [FakeIP("10.0.0.5")], 3),
    ]
    monkeypatch.setattr(mdns.ifaddr, "get_adapters", lambda: fake)
    return fake


def test_all_non_loopback_addresses_v4_then_v6(adapters):
    assert mdns.host_addresses() == ["10.0.0.5", "192.168.1.20", "fd00::20", "fe80::1"]


def test_chosen_interfaces_by_name_or_address(adapters):
    assert mdns.host_addresses(["eth0"]) == ["192.168.1.20", "fd00::20", "fe80::1"]
    assert mdns.host_addresses(["10.0.0.5"]) == ["10.0.0.5"]
    assert mdns.host_addresses(["127.0.0.1"]) == ["127.0.0.1"]  # loopback only when asked for


def test_zeroconf_interfaces(adapters):
    assert mdns.zeroconf_interfaces(None) is InterfaceChoice.All
    assert mdns.zeroconf_interfaces(["eth0"]) == ["192.168.1.20", 2]
    assert mdns.zeroconf_interfaces(["127.0.0.1"]) == ["127.0.0.1"]
