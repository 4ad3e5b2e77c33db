"""mDNS advertising against real zeroconf responders and browsers on a private two-host LAN."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

import pytest
import pytest_asyncio
from zeroconf import (
    DNSIncoming,
    DNSOutgoing,
    DNSQuestion,
    DNSQuestionType,
    IPVersion,
    ServiceStateChange,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from raopd.core.txt import SERVICE_TYPE, txt_record
from raopd.net.mdns import MdnsAdvertiser, host_addresses

pytestmark = pytest.mark.asyncio(loop_scope="module")

HW = bytes.fromhex("0A1B2C3D4E5F")
TIMEOUT = 5.0  # generous upper bound for one mDNS exchange; tests finish well before it
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the name


@dataclass(frozen=True)
class Receiver:
    name: str
    hw_addr: bytes = HW
    password: str | None = None


def zeroconf_in(lan, ns: str, ip: str) -> AsyncZeroconf:
    return lan.call_in(ns, lambda: AsyncZeroconf(interfaces=[ip], ip_version=IPVersion.V4Only))


def addresses_of_a(lan):
    """The advertiser's real address source (ifaddr), read inside namespace A."""
    return lambda: lan.call_in(lan.a, lambda: host_addresses([lan.a_if]))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def zc_a(lan):
    zc = zeroconf_in(lan, lan.a, lan.a_ip)
    yield zc
    await zc.async_close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def kitchen(lan, zc_a):
    advertiser = MdnsAdvertiser(
        Receiver("Kitchen"), 5000, zeroconf=zc_a, addresses=addresses_of_a(lan),
        address_poll_interval=0,
    )  # fmt: skip
    await advertiser.start()
    yield advertiser
    await advertiser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(lan):
    """A fresh zeroconf on host B: empty cache, so every lookup goes over the wire."""
    zc = zeroconf_in(lan, lan.b, lan.b_ip)
    yield zc
    await zc.async_close()


async def browse_until(zc: AsyncZeroconf, wanted: ServiceStateChange, name: str) -> None:
    seen = asyncio.Event()

    def handler(zeroconf, service_type, name: str, state_change) -> None:
        if state_change is wanted and name == target:
            seen.set()

    target = f"{name}.{SERVICE_TYPE}"
    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[handler])
    try:
        await asyncio.wait_for(seen.wait(), TIMEOUT)
    finally:
        await browser.async_cancel()


async def test_browser_finds_the_service_with_the_recommended_txt(lan, kitchen, browser):
    assert kitchen.registered
    assert kitchen.service_name == "0A1B2C3D4E5F@Kitchen"
    await browse_until(browser, ServiceStateChange.Added, kitchen.service_name)
    info = AsyncServiceInfo(SERVICE_TYPE, f"{kitchen.service_name}.{SERVICE_TYPE}")
    assert await info.async_request(browser.zeroconf, 3000)
    assert info.port == 5000
    assert info.parsed_addresses() == [lan.a_ip]
    assert info.server == "raopd-0a1b2c3d4e5f.local."
    expected = {k.encode(): v.encode() for k, v in txt_record(password=False).items()}
    assert info.properties == expected
    # The wire order of the TXT strings is the recommended one.
    assert [kv.split(b"=")[0].decode() for kv in _txt_strings(info.text)] == list(
        txt_record(password=False)
    )


def _txt_strings(text: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(text):
        out.append(text[i + 1 : i + 1 + text[i]])
        i += 1 + text[i]
    return out


async def test_qu_question_is_answered(kitchen, browser):
    info = AsyncServiceInfo(SERVICE_TYPE, f"{kitchen.service_name}.{SERVICE_TYPE}")
    assert await info.async_request(browser.zeroconf, 3000, question_type=DNSQuestionType.QU)
    assert info.port == 5000 and info.properties[b"vn"] == b"65537"


async def test_qu_answer_comes_back_by_unicast(lan, kitchen):
    """RFC 6762 §5.4: a QU question for a recently announced record gets a unicast reply."""
    sock = lan.call_in(lan.b, _mdns_socket_for_b(lan))
    try:
        question = DNSQuestion(f"{kitchen.service_name}.{SERVICE_TYPE}", 33, 1)  # SRV, IN
        question.unicast = True
        query = DNSOutgoing(0)
        query.add_question(question)
        sock.sendto(query.packets()[0], ("224.0.0.251", 5353))
        loop = asyncio.get_running_loop()
        reply, destination = await asyncio.wait_for(
            loop.run_in_executor(None, _recv, sock), TIMEOUT
        )
    finally:
        sock.close()
    assert destination == lan.b_ip  # unicast to us, not to 224.0.0.251
    answers = DNSIncoming(reply).answers()
    assert any(getattr(a, "port", None) == 5000 for a in answers)


def _mdns_socket_for_b(lan):
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("", 5353))
        membership = socket.inet_aton("224.0.0.251") + socket.inet_aton(lan.b_ip)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(lan.b_ip))
        sock.settimeout(TIMEOUT)
        return sock

    return make


def _recv(sock: socket.socket) -> tuple[bytes, str]:
    """The first DNS response (not our own query looping back) and its destination address."""
    while True:
        data, ancdata, _flags, _addr = sock.recvmsg(9000, socket.CMSG_SPACE(12))
        if len(data) < 12 or not data[2] & 0x80:  # QR bit clear: a query
            continue
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                _ifindex, _spec_dst, dst = struct.unpack("I4s4s", value[:12])
                return data, socket.inet_ntoa(dst)


async def test_name_conflict_renames_and_keeps_the_prefix(lan, kitchen):
    """A second speaker with the same id and name on the network becomes 'Kitchen (2)'."""
    zc_b = zeroconf_in(lan, lan.b, lan.b_ip)
    second = MdnsAdvertiser(
        Receiver("Kitchen"), 5001, zeroconf=zc_b, addresses=lambda: [lan.b_ip],
        address_poll_interval=0,
    )  # fmt: skip
    try:
        await second.start()
        assert second.registered
        assert second.service_name == "0A1B2C3D4E5F@Kitchen (2)"
        assert second.speaker_name == "Kitchen (2)"
        assert kitchen.service_name == "0A1B2C3D4E5F@Kitchen"
        # Both are now resolvable from host A, each with its own port.
        info = AsyncServiceInfo(SERVICE_TYPE, f"{second.service_name}.{SERVICE_TYPE}")
        assert await info.async_request(kitchen.zeroconf.zeroconf, 3000)
        assert info.port == 5001
    finally:
        await second.close()
        await zc_b.async_close()


async def test_address_change_is_reannounced(lan, kitchen, browser):
    lan.run(lan.a, "addr", "add", "10.77.0.11/24", "dev", lan.a_if)
    try:
        assert await kitchen.refresh_addresses()
        assert kitchen.addresses == [lan.a_ip, "10.77.0.11"]
        assert not await kitchen.refresh_addresses()  # nothing changed since
        info = AsyncServiceInfo(SERVICE_TYPE, f"{kitchen.service_name}.{SERVICE_TYPE}")
        assert await info.async_request(browser.zeroconf, 3000)
        assert sorted(info.parsed_addresses()) == [lan.a_ip, "10.77.0.11"]
    finally:
        lan.run(lan.a, "addr", "del", "10.77.0.11/24", "dev", lan.a_if)
    assert await kitchen.refresh_addresses()
    assert kitchen.addresses == [lan.a_ip]


async def test_polling_notices_address_changes(lan, zc_a):
    current = [lan.a_ip]
    advertiser = MdnsAdvertiser(
        Receiver("Poll"), 5002, zeroconf=zc_a, addresses=lambda: list(current),
        address_poll_interval=0.05,
    )  # fmt: skip
    told: list[list[str]] = []
    advertiser.on_change = lambda: told.append(list(advertiser.addresses))  # readiness log
    await advertiser.start()
    try:
        current.append("10.77.0.12")
        async with asyncio.timeout(TIMEOUT):
            while advertiser.reannouncements == 0:
                await asyncio.sleep(0.05)
        assert advertiser.addresses == [lan.a_ip, "10.77.0.12"]
        assert told == [[lan.a_ip, "10.77.0.12"]]  # once, for the one change
    finally:
        await advertiser.close()


async def test_owned_zeroconf_announces_and_says_goodbye(lan, browser):
    """The daemon's path: MdnsAdvertiser makes its own zeroconf; close() sends goodbyes."""
    advertiser = MdnsAdvertiser(
        Receiver("Den", password="x"), 5003, interfaces=[lan.a_if], address_poll_interval=0
    )
    with lan.inside(lan.a):  # zeroconf's sockets and ifaddr must see host A's interfaces
        await advertiser.start()
    closed = False
    try:
        assert advertiser.addresses == [lan.a_ip]
        await browse_until(browser, ServiceStateChange.Added, advertiser.service_name)
        info = AsyncServiceInfo(SERVICE_TYPE, f"{advertiser.service_name}.{SERVICE_TYPE}")
        assert await info.async_request(browser.zeroconf, 3000)
        assert info.properties[b"pw"] == b"true"
        removed = asyncio.create_task(
            browse_until(browser, ServiceStateChange.Removed, advertiser.service_name)
        )
        await asyncio.sleep(0)  # let the browser start before the goodbye goes out
        await advertiser.close()
        closed = True
        assert not advertiser.registered and advertiser.zeroconf is None
        await removed
    finally:
        if not closed:
            await advertiser.close()
