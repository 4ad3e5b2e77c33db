"""The receiver's 6-byte device id (the hex before '@' in the mDNS name), kept stable.

Senders remember speakers by this id and check Apple-Response against it, so it must not
change between restarts. Order of preference:
1. the configured `device_id`;
2. the id stored earlier in the state directory;
3. derived from the MAC of the first physical, non-loopback interface (sorted by name):
   MD5("raopd" ‖ mac)[:6] with the locally-administered bit set and the multicast bit
   cleared, so it never equals a real NIC's address (shairport-sync on the same host uses
   the MAC differently, so the two do not collide either);
4. random.
A derived or random id is written to the state directory when it is writable; when it is not,
raopd warns once, because the id will change on the next start unless it comes from the MAC.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

SYS_NET = Path("/sys/class/net")
STATE_FILE = "device_id"
SYSTEM_STATE_DIR = Path("/var/lib/raopd")


def parse_device_id(text: str) -> bytes:
    """12 hex digits (colons or dashes allowed) -> 6 bytes; ValueError otherwise."""
    digits = re.sub(r"[:\-\s]", "", text)
    if not re.fullmatch(r"[0-9A-Fa-f]{12}", digits):
        raise ValueError(f"a device id is 12 hex digits, got {text!r}")
    return bytes.fromhex(digits)


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """$XDG_STATE_HOME/raopd when set, else /var/lib/raopd when it can be written, else None."""
    env = os.environ if environ is None else environ
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "raopd"
    if _writable(SYSTEM_STATE_DIR):
        return SYSTEM_STATE_DIR
    return None


def mac_derived_id(sys_net: Path = SYS_NET) -> bytes | None:
    """The id derived from the first physical interface's MAC, or None without one."""
    try:
        names = sorted(p.name for p in sys_net.iterdir())
    except OSError:
        return None
    for name in names:
        iface = sys_net / name
        # Only real hardware has a `device` link; veth, bridges and loopback do not, and
        # their addresses may change when a container or VM restarts.
        if name == "lo" or not (iface / "device").exists():
            continue
        try:
            mac = bytes.fromhex((iface / "address").read_text().strip().replace(":", ""))
        except (OSError, ValueError):
            continue
        if len(mac) != 6 or mac == bytes(6):
            continue
        digest = bytearray(hashlib.md5(b"raopd" + mac, usedforsecurity=False).digest()[:6])
        digest[0] = (digest[0] | 0x02) & 0xFE  # locally administered, unicast
        return bytes(digest)
    return None


def load_or_create_device_id(
    state_dir: Path | None,
    config_value: str | None,
    *,
    sys_net: Path = SYS_NET,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The 6-byte device id: configured, else stored, else derived from a MAC, else random."""
    if config_value:
        return parse_device_id(config_value)
    directory = state_dir if state_dir is not None else default_state_dir(environ)
    path = directory / STATE_FILE if directory is not None else None
    if path is not None:
        try:
            return parse_device_id(path.read_text().strip())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable device id in %s: %s", path, exc)
    derived = mac_derived_id(sys_net)
    device_id = derived if derived is not None else _random_id()
    if path is not None and _store(path, device_id):
        return device_id
    if derived is None:
        logger.warning(
            "device id %s is random and cannot be stored (no writable state_dir): senders "
            "will see a new speaker after a restart; set device_id or state_dir",
            device_id.hex().upper(),
        )
    return device_id


def _random_id() -> bytes:
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] | 0x02) & 0xFE
    return bytes(raw)


def _store(path: Path, device_id: bytes) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(device_id.hex().upper() + "\n")
        tmp.replace(path)  # atomic: a crash never leaves half an id behind
    except OSError as exc:
        logger.warning("cannot store the device id in %s: %s", path, exc)
        return False
    return True


def _writable(directory: Path) -> bool:
    if directory.is_dir():
        return os.access(directory, os.W_OK)
    parent = directory.parent
    return parent.is_dir() and os.access(parent, os.W_OK)
