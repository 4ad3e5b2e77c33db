"""The README's two opening commands stay true: CI runs the test command verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if "apt-get install" in line][:2]


def test_readme_opens_with_run_and_test_commands():
    run, test = readme_commands()
    assert "pip install ." in run and ".venv/bin/raopd" in run
    assert "python -m pytest" in test


def test_commands_work_as_root_without_sudo():
    """`sudo` is not on a fresh Debian as root: the commands use it only where it exists."""
    for command in readme_commands():
        assert "sudo apt-get" not in command
        assert command.startswith("$(command -v sudo) apt-get update && ")


def test_ci_runs_the_readme_test_command_verbatim():
    _, test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in [line.strip() for line in ci]
