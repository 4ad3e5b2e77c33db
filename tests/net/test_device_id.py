"""The device id stays the same across restarts, and the configured one wins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from raopd.net.device_id import (
    default_state_dir,
    load_or_create_device_id,
    mac_derived_id,
    parse_device_id,
)


def fake_sys_net(root: Path, interfaces: dict[str, tuple[str, bool]]) -> Path:
    """A /sys/class/net look-alike: name -> (mac, has a physical `device` link)."""
    for name, (mac, physical) in interfaces.items():
        (root / name).mkdir(parents=True)
        (root / name / "address").write_text(mac + "\n")
        if physical:
            (root / name / "device").mkdir()
    return root


@pytest.fixture
def no_nics(tmp_path) -> Path:
    return fake_sys_net(tmp_path / "net-none", {"lo": ("00:00:00:00:00:00", False)})


def test_configured_value_wins(tmp_path, no_nics):
    state = tmp_path / "state"
    assert load_or_create_device_id(state, "0a:1b:2c:3d:4e:5f", sys_net=no_nics) == bytes.fromhex(
        "0a1b2c3d4e5f"
    )
    assert not state.exists()


def test_mac_derived_is_stable_and_locally_administered(tmp_path):
    net = fake_sys_net(
        tmp_path / "net",
        {
            "lo": ("00:00:00:00:00:00", False),
            "veth0": ("aa:aa:aa:aa:aa:aa", False),  # virtual: skipped
            "eth0": ("dc:a6:32:01:02:03", True),
            "wlan0": ("dc:a6:32:09:09:09", True),
        },
    )
    first = mac_derived_id(net)
    assert first is not None and first == mac_derived_id(net)
    assert first[0] & 0x02 and not first[0] & 0x01
    assert first != bytes.fromhex("dca632010203")
    other = fake_sys_net(tmp_path / "net2", {"eth0": ("dc:a6:32:01:02:04", True)})
    assert mac_derived_id(other) != first
    state = tmp_path / "state"
    assert load_or_create_device_id(state, None, sys_net=net) == first
    assert (state / "device_id").read_text().strip() == first.hex().upper()


def test_random_id_is_stored_and_reused(tmp_path, no_nics):
    state = tmp_path / "state"
    first = load_or_create_device_id(state, None, sys_net=no_nics)
    assert first[0] & 0x02 and not first[0] & 0x01
    assert load_or_create_device_id(state, None, sys_net=no_nics) == first


def test_stored_id_beats_a_new_mac(tmp_path, no_nics):
    state = tmp_path / "state"
    first = load_or_create_device_id(state, None, sys_net=no_nics)
    net = fake_sys_net(tmp_path / "net", {"eth0": ("dc:a6:32:01:02:03", True)})
    assert load_or_create_device_id(state, None, sys_net=net) == first


def test_unstorable_random_id_warns(tmp_path, no_nics, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        device_id = load_or_create_device_id(blocker / "raopd", None, sys_net=no_nics)
    assert len(device_id) == 6
    assert "cannot store the device id" in caplog.text
    assert "senders will see a new speaker after a restart" in caplog.text


def test_default_state_dir_follows_xdg(tmp_path):
    assert default_state_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "raopd"


def test_garbage_in_the_state_file_is_replaced(tmp_path, no_nics, caplog):
    state = tmp_path / "state"
    state.mkdir()
    (state / "device_id").write_text("nonsense")
    device_id = load_or_create_device_id(state, None, sys_net=no_nics)
    assert (state / "device_id").read_text().strip() == device_id.hex().upper()
    assert "ignoring unreadable device id" in caplog.text


def test_parse_device_id():
    assert parse_device_id("0A-1B-2C-3D-4E-5F") == bytes.fromhex("0a1b2c3d4e5f")
    with pytest.raises(ValueError):
        parse_device_id("0A1B2C3D4E")
