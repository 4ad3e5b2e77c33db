"""What raopd publishes over mDNS: the `_raop._tcp` instance name and TXT record (pure).

protocol.md §1: the instance is `<12 upper-case hex>@<name>` and must fit one 63-byte DNS
label; the TXT keys are those a first-generation AirPort Express publishes, which every
AirPlay 1 sender accepts.
"""

from __future__ import annotations

from raopd import __version__
from raopd.core.audio_format import SAMPLE_RATE

SERVICE_TYPE = "_raop._tcp.local."
MAX_LABEL_BYTES = 63  # one DNS label
MODEL = "raopd"
SERVER_VERSION = "105.1"  # AirTunes version of the AirPort Express; higher values change iOS's plan


def instance_name(hw_addr: bytes, name: str, suffix: str = "") -> str:
    """`<HEX>@<name><suffix>`, cutting the name (never the prefix or suffix) to fit 63 bytes.

    The cut falls on a character boundary of the UTF-8 encoding, and white space left at the
    cut is dropped so a truncated name does not end in a blank.
    """
    if len(hw_addr) != 6:
        raise ValueError(f"hw_addr must be 6 bytes, got {len(hw_addr)}")
    prefix = hw_addr.hex().upper() + "@"
    budget = MAX_LABEL_BYTES - len(prefix) - len(suffix.encode())
    if budget < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for the name")
    encoded = name.encode()
    if len(encoded) > budget:
        name = encoded[:budget].decode(errors="ignore").rstrip()
    return prefix + name + suffix


def conflict_suffix(attempt: int) -> str:
    """Suffix of the n-th name tried after conflicts: "", " (2)", " (3)", ... (Bonjour style)."""
    return "" if attempt <= 1 else f" ({attempt})"


def speaker_name(instance: str) -> str:
    """The part after '@' that senders show."""
    return instance.split("@", 1)[1] if "@" in instance else instance


def txt_record(password: bool, version: str = __version__, model: str = MODEL) -> dict[str, str]:
    """The TXT entries in the order they go on the wire (protocol.md §1.2, recommended set)."""
    return {
        "txtvers": "1",
        "ch": "2",
        "cn": "0,1",  # L16 and ALAC
        "et": "0,1",  # clear and RSA/AES only: no FairPlay or MFi
        "ek": "1",
        "da": "true",
        "sv": "false",
        "sr": str(SAMPLE_RATE),
        "ss": "16",
        "pw": "true" if password else "false",
        "vn": "65537",  # iOS 9+ hides receivers without it
        "tp": "UDP",  # only UDP transport is implemented
        "vs": SERVER_VERSION,
        "am": model,
        "md": "0,1,2",  # text, artwork, progress
        "sf": "0x4",
        "fv": version,
    }
