"""core/ and media/ stay sans-I/O: no sockets, threads, event loops or clock reads."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "raopd"
FORBIDDEN_MODULES = {"asyncio", "socket", "threading", "selectors", "time", "subprocess"}
MODULES = sorted((PACKAGE / "core").glob("*.py")) + sorted((PACKAGE / "media").glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_module_does_no_io(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        bad = FORBIDDEN_MODULES.intersection(names)
        assert not bad, f"{path.name}:{node.lineno} imports {bad}"


def test_the_check_sees_the_modules():
    names = {p.name for p in MODULES}
    assert {"session.py", "jitter.py", "seq.py"} <= names
