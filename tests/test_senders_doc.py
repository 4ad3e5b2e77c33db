"""docs/senders.md stays true: every row names a test that exists, and every sender-matrix
test has its row (the versions are checked against the installed packages by
tests/e2e/test_desktop_senders.py, where the senders run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.senders_doc import sender_rows

REPO = Path(__file__).resolve().parents[1]
ROWS = sender_rows()


def test_the_table_has_rows():
    assert len(ROWS) >= 15
    assert {row.sender.split(" ")[0] for row in ROWS} >= {"PipeWire", "PulseAudio", "pyatv"}


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{row.sender} {row.mode}")
def test_each_row_names_a_test_that_exists(row):
    path = REPO / row.test_path
    assert path.is_file(), row.test
    source = path.read_text()
    assert re.search(rf"^(async )?def {re.escape(row.test_function)}\(", source, re.M), row.test
    if row.test_param is not None:
        assert f'id="{row.test_param}"' in source, row.test


def test_every_sender_matrix_test_has_a_row():
    matrix = REPO / "tests" / "e2e" / "test_desktop_senders.py"
    named = {row.test_function for row in ROWS}
    for name in re.findall(r"^def (test_\w+)\(", matrix.read_text(), re.M):
        if name == "test_versions_in_the_docs_are_the_installed_ones":
            continue
        assert name in named, f"{name} has no row in docs/senders.md"
