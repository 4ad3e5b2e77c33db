"""The mDNS instance name and TXT record (protocol.md §1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raopd import __version__
from raopd.core.txt import conflict_suffix, instance_name, speaker_name, txt_record

HW = bytes.fromhex("0a1b2c3d4e5f")


def test_txt_is_exactly_the_recommended_set():
    assert txt_record(password=False) == {
        "txtvers": "1", "ch": "2", "cn": "0,1", "et": "0,1", "ek": "1", "da": "true",
        "sv": "false", "sr": "44100", "ss": "16", "pw": "false", "vn": "65537", "tp": "UDP",
        "vs": "105.1", "am": "raopd", "md": "0,1,2", "sf": "0x4", "fv": __version__,
    }  # fmt: skip
    assert txt_record(password=True)["pw"] == "true"
    assert list(txt_record(password=True))[:3] == ["txtvers", "ch", "cn"]


def test_instance_name():
    assert instance_name(HW, "Kitchen") == "0A1B2C3D4E5F@Kitchen"
    assert instance_name(HW, "Kitchen", conflict_suffix(2)) == "0A1B2C3D4E5F@Kitchen (2)"
    assert conflict_suffix(1) == ""
    assert speaker_name("0A1B2C3D4E5F@Kitchen (2)") == "Kitchen (2)"
    with pytest.raises(ValueError):
        instance_name(b"\x00" * 5, "x")


def test_long_names_are_cut_to_one_dns_label():
    name = instance_name(HW, "A" * 50 + " B", " (12)")
    assert len(name.encode()) <= 63 and name.startswith("0A1B2C3D4E5F@") and name.endswith(" (12)")
    assert name == "0A1B2C3D4E5F@" + "A" * 45 + " (12)"


@given(st.text(min_size=1, max_size=60), st.integers(min_value=1, max_value=99))
def test_label_always_fits_and_keeps_prefix_and_suffix(name, attempt):
    suffix = conflict_suffix(attempt)
    label = instance_name(HW, name, suffix)
    assert len(label.encode()) <= 63
    assert label.startswith("0A1B2C3D4E5F@") and label.endswith(suffix)
    body = label[len("0A1B2C3D4E5F@") : len(label) - len(suffix)]
    assert name.startswith(body)
