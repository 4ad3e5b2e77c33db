"""Every setting of the schema on every surface: --help, docs/configuration.md, k8s example,
and settable by flag, by config file and by environment variable."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from raopd import cli, config_docs
from raopd.config import FIELDS, ConfigError, describe_value, env_name, load_config, setting_flags

ROOT = Path(__file__).resolve().parent.parent

# Candidate values; each setting takes the first one that differs from its default and that
# load_config accepts, so a new setting needs no entry here unless none of them fits.
CANDIDATES: dict[str, list[object]] = {
    "int": [5001, 7000, 50, 4096, 4],
    "float": [1.5, -6.0, 0.5, 40.0, 0.01, -1.0],
    "str": ["PCM", "flat", "debug", "127.0.0.1", "0A1B2C3D4E5F", "hw:1", "Den"],
    "bool": [True, False],
}


def sample(key: str, tmp_path: Path) -> object:
    field = FIELDS[key]
    kind = field.metadata["kind"]
    if kind == "path":
        path = tmp_path / f"{key}.txt"
        path.write_text("s3cret\n")
        return path
    for value in CANDIDATES[kind]:
        if value == field.default:
            continue
        try:
            load_config({key: value}, {}, None)
        except ConfigError:
            continue
        return value
    raise AssertionError(f"no sample value for {key}: add one to CANDIDATES")


def effective(key: str, value: object) -> tuple[str, object]:
    """(attribute, expected) a setting shows in the Config."""
    if key == "password_file":
        return "password", "s3cret"
    return key, value


@pytest.fixture(scope="module")
def help_text() -> str:
    return " ".join(cli.build_parser().format_help().split())


def test_generated_files_are_current():
    """docs/configuration.md and k8s/common/raopd.toml are what `make docs` writes."""
    assert (ROOT / config_docs.REFERENCE).read_text() == config_docs.render_reference(), (
        "docs/configuration.md is stale: run `make docs`"
    )
    assert (ROOT / config_docs.EXAMPLE).read_text() == config_docs.render_example(), (
        "k8s/common/raopd.toml is stale: run `make docs`"
    )


def test_the_staleness_check_runs_as_documented(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "k8s" / "common").mkdir(parents=True)
    check = [sys.executable, "-m", "raopd.config_docs", "--root", str(tmp_path)]
    assert subprocess.run([*check, "--check"], cwd=ROOT, capture_output=True).returncode == 1
    subprocess.run([*check, "--write"], cwd=ROOT, check=True)
    assert subprocess.run([*check, "--check"], cwd=ROOT).returncode == 0


@pytest.mark.parametrize("key", list(FIELDS))
def test_setting_on_every_surface(key, help_text, tmp_path):
    reference = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "k8s" / "common" / "raopd.toml").read_text()
    flag = setting_flags(key)[0]
    # --help: the flag, the key and the variable, next to each other.
    assert flag in help_text and f"config key {key}, env {env_name(key)})" in help_text
    assert f"| `{key}` | `{flag}" in reference and f"`{env_name(key)}`" in reference
    assert f"{key} = " in example or f"# {key}: default" in example

    value = sample(key, tmp_path)
    attribute, expected = effective(key, value)
    # flag, through the real parser
    argv = [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag]
    if not isinstance(value, bool):
        argv.append(str(value))
    args = cli.build_parser().parse_args(argv)
    assert getattr(cli.load_from_args(args, {}), attribute) == expected
    # config file
    path = tmp_path / "raopd.toml"
    path.write_text(f"{key} = {describe_value(value)}\n")
    assert getattr(load_config({}, {}, path), attribute) == expected
    # environment
    text = str(value).lower() if isinstance(value, bool) else str(value)
    assert getattr(load_config({}, {env_name(key): text}, None), attribute) == expected


def test_mixer_control_flag_is_an_option_not_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "raopd", "--mixer-control", "PCM", "--print-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert 'mixer_control = "PCM"' in result.stdout


def test_example_config_loads(tmp_path):
    path = ROOT / "k8s" / "common" / "raopd.toml"
    tomllib.loads(path.read_text())
    config = load_config({}, {}, path)
    assert (config.name, config.device) == ("raopd", "hw:CARD=DAC")
