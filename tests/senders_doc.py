"""docs/senders.md's results table, read as rows (for the tests that keep it true)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "senders.md"


@dataclass(frozen=True)
class SenderRow:
    sender: str
    version: str
    mode: str
    result: str
    test: str  # path::function[param], relative to the repository

    @property
    def test_path(self) -> str:
        return self.test.split("::")[0]

    @property
    def test_function(self) -> str:
        return self.test.split("::")[1].split("[")[0]

    @property
    def test_param(self) -> str | None:
        name = self.test.split("::")[1]
        return name[name.index("[") + 1 : -1] if "[" in name else None


def sender_rows(doc: Path = DOC) -> list[SenderRow]:
    """The rows of the table under "## Results"."""
    rows = []
    in_results = False
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            in_results = line.strip() == "## Results"
            continue
        if not in_results or not line.startswith("|") or line.startswith(("| Sender", "|---")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"a results row needs 5 cells: {line}"
        sender, version, mode, result, test = cells
        rows.append(SenderRow(sender, version, mode, result, test.strip("`")))
    return rows
