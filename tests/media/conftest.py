"""Shared fixtures for the media tests: capture excerpts from tests/media/data."""

import struct
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


def read_payloads(name: str) -> list[bytes]:
    """RTP payloads stored as 2-byte big-endian length + bytes records."""
    data = (DATA / name).read_bytes()
    payloads, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from(">H", data, offset)
        payloads.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return payloads


def read_pcm(name: str) -> np.ndarray:
    """Stereo S16_LE frames as an int16 (frames, 2) array."""
    return np.frombuffer((DATA / name).read_bytes(), "<i2").astype(np.int16).reshape(-1, 2)


@pytest.fixture(scope="session")
def test30_first4() -> np.ndarray:
    return read_pcm("test30_first4.s16le")


@pytest.fixture(scope="session")
def test30_last3() -> np.ndarray:
    return read_pcm("test30_last3.s16le")


@pytest.fixture(scope="session")
def cliraop_first4() -> list[bytes]:
    return read_payloads("cliraop_alac_first4.bin")


@pytest.fixture(scope="session")
def cliraop_last3() -> list[bytes]:
    return read_payloads("cliraop_alac_last3.bin")


@pytest.fixture(scope="session")
def node_first4() -> list[bytes]:
    return read_payloads("node_aes_alac_first4.bin")
