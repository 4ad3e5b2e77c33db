"""Two throw-away network namespaces joined by a veth pair: a private two-host LAN for mDNS tests.

Everything the tests send stays inside these namespaces (10.77.0.0/24 exists nowhere else),
so real multicast flows between two real zeroconf stacks without touching the host's network.
A socket belongs to the namespace of the thread that created it, so `inside(ns)` switches the
calling thread in and out with setns(2) around socket creation only.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Lan:
    a: str  # namespace names
    b: str
    a_if: str  # veth ends
    b_if: str
    a_ip: str = "10.77.0.1"
    b_ip: str = "10.77.0.2"

    @contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def call_in(self, ns: str, fn: Callable[[], T]) -> T:
        with self.inside(ns):
            return fn()

    def run(self, ns: str, *args: str) -> None:
        _ip("-n", ns, *args)


_lans = itertools.count()


@contextmanager
def two_host_lan(
    prefix: str = "t", subnet: str = "10.77.0", *, loopback_ipv6: bool = False
) -> Iterator[Lan]:
    """Two fresh namespaces joined by a veth pair; removed afterwards whatever happens.

    IPv6 is always off on the veth ends: link-local addresses appear late (DAD) and would make
    what gets published depend on timing. `loopback_ipv6` keeps it on loopback, so `::1`
    works inside each namespace; otherwise it is off everywhere.
    """
    tag = f"{os.getpid() % 100000}x{next(_lans)}"
    lan = Lan(
        a=f"raopd-{prefix}{tag}-a",
        b=f"raopd-{prefix}{tag}-b",
        a_if=f"r{prefix}{tag}a",
        b_if=f"r{prefix}{tag}b",
        a_ip=f"{subnet}.1",
        b_ip=f"{subnet}.2",
    )
    created: list[str] = []
    try:
        for ns in (lan.a, lan.b):
            _ip("netns", "add", ns)
            created.append(ns)
            if not loopback_ipv6:
                _disable_ipv6(ns, "all", "default")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", lan.a_if, "netns", lan.a, "type", "veth", "peer", "name", lan.b_if,
            "netns", lan.b)  # fmt: skip
        for ns, ifname, ip in ((lan.a, lan.a_if, lan.a_ip), (lan.b, lan.b_if, lan.b_ip)):
            _disable_ipv6(ns, ifname)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
        yield lan
    finally:
        for ns in created:  # deleting a namespace deletes its veth end and the pair with it
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _disable_ipv6(ns: str, *interfaces: str) -> None:
    """Through /proc, not sysctl: slim images lack procps."""
    script = "; ".join(
        f"echo 1 > /proc/sys/net/ipv6/conf/{name}/disable_ipv6" for name in interfaces
    )
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], check=True)


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    """A private two-host LAN (needs root, as in CI, and the `ip` tool from iproute2)."""
    with two_host_lan() as network:
        yield network
