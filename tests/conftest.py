"""Options shared by every test directory."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-inputs",
        type=int,
        default=2000,
        help="mutated RTSP inputs the socket fuzzer sends to raopd (tests/e2e/test_fuzz.py)",
    )
