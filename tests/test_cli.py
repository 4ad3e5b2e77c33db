"""The command line: option parsing, --help, one-line errors, and handing Config to the daemon."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from raopd import cli
from raopd.config import Config

ROOT = Path(__file__).resolve().parent.parent


class FakeDaemon:
    """Stands in for raopd.daemon (written separately): records the Config it is run with."""

    def __init__(self, error: Exception | None = None) -> None:
        self.configs: list[Config] = []
        self.error = error

    def install(self, monkeypatch) -> None:
        module = types.ModuleType("raopd.daemon")

        async def run(config: Config, shutdown: asyncio.Event | None = None) -> None:
            self.configs.append(config)
            if self.error is not None:
                raise self.error

        module.run = run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "raopd.daemon", module)


@pytest.fixture
def daemon(monkeypatch):
    for name in list(os.environ):
        if name.startswith("RAOPD_"):
            monkeypatch.delenv(name)
    fake = FakeDaemon()
    fake.install(monkeypatch)
    yield fake
    # configure_logging installs a handler on the root logger; leave no trace for other tests.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_raopd", False)]:
        root.removeHandler(handler)


def test_options_reach_the_daemon(daemon):
    argv = [
        "--name", "Den", "--port", "5050", "--device", "hw:1", "--password", "pw",
        "--http-port", "0", "--latency-offset", "-0.2", "--allow-interruption",
        "--session-timeout", "30", "--no-resend", "--statistics", "--address", "127.0.0.1",
        "--device-id", "0a1b2c3d4e5f", "--interface", "eth0", "--output", "-",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    (config,) = daemon.configs
    assert (config.name, config.port, config.device, config.password) == ("Den", 5050, "hw:1", "pw")
    assert config.http_port == 0 and config.latency_offset == -0.2
    assert config.allow_session_interruption is True and config.session_timeout == 30.0
    assert config.resend is False and config.statistics is True
    assert config.address == "127.0.0.1" and config.device_id == "0A1B2C3D4E5F"
    assert config.interface == "eth0" and config.output == "-"


def test_only_given_options_are_flags():
    args = cli.build_parser().parse_args(["--port", "5001"])
    assert cli.flags_from_args(args) == {"port": "5001"}
    args = cli.build_parser().parse_args([])
    assert cli.flags_from_args(args) == {}


def test_verbose_and_log_level():
    parse = cli.build_parser().parse_args
    assert cli.flags_from_args(parse(["-v"]))["log_level"] == "debug"
    assert cli.flags_from_args(parse(["-vv"]))["log_level"] == "trace"
    assert cli.flags_from_args(parse(["-vv", "--log-level", "warning"]))["log_level"] == "warning"


def test_flags_override_env_and_file(daemon, tmp_path, monkeypatch):
    config_file = tmp_path / "raopd.toml"
    config_file.write_text('name = "File"\nport = 5001\ndevice = "hw:9"\n')
    monkeypatch.setenv("RAOPD_PORT", "5002")
    monkeypatch.setenv("RAOPD_CONFIG", str(config_file))
    assert cli.main(["--name", "Flag"]) == 0
    config = daemon.configs[-1]
    assert (config.name, config.port, config.device) == ("Flag", 5002, "hw:9")
    assert cli.main(["--config", str(config_file), "--port", "5003"]) == 0
    assert daemon.configs[-1].port == 5003


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "x"], {}, "raopd: --port: port must be an integer, got 'x'"),
        (["--port", "0"], {}, "raopd: --port: port must be an integer from 1 to 65535, got 0"),
        ([], {"RAOPD_PROT": "1"}, "raopd: unknown setting RAOPD_PROT (did you mean RAOPD_PORT?)"),
        (["--bogus"], {}, "raopd: unrecognized arguments: --bogus"),
        (["--config", "/nonexistent/raopd.toml"], {}, "raopd: cannot read config file"),
        (["--name", "x" * 60], {}, "raopd: --name: name must be at most 50 characters"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(daemon, capsys, monkeypatch, argv, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    assert code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert daemon.configs == []


def test_bad_configuration_in_a_real_process(tmp_path):
    """No traceback and exit code 2 from the installed entry point, as a user sees it."""
    result = subprocess.run(
        [sys.executable, "-m", "raopd", "--latency-offset", "5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "raopd: --latency-offset: latency_offset must be from -2.0 to 2.0 s, got 5.0\n"
    )


def test_daemon_errors_are_one_line(daemon, capsys, monkeypatch):
    from raopd.errors import OutputError

    FakeDaemon(OutputError("cannot open ALSA device 'hw:7'")).install(monkeypatch)
    assert cli.main([]) == 1
    assert capsys.readouterr().err == "raopd: cannot open ALSA device 'hw:7'\n"


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--name", "--port", "--device", "--output", "--password", "--config", "--verbose",
        "--log-level", "--http-port", "--latency-offset", "--allow-interruption",
        "--session-timeout", "--no-resend", "--statistics", "--address", "--device-id",
        "--print-config", "--version", "replay",
    ):  # fmt: skip
        assert flag in text, flag
    assert "(default: 5000; config key port, env RAOPD_PORT)" in text
    assert "(default: 9798; config key http_port" in text
    assert "(default: default; config key device" in text
    assert "WAV if it ends in .wav, '-' for stdout" in text
    assert "%H, the host name with a capital first letter" in text
    assert "--mixer-control CONTROL" in text and "--password-file FILE" in text


def test_print_config(daemon, capsys):
    assert cli.main(["--print-config", "--password", "secret", "--port", "5009"]) == 0
    out = capsys.readouterr().out
    assert "port = 5009" in out and "secret" not in out and 'password = "********"' in out
    assert daemon.configs == []


def test_replay_subcommand_still_parses():
    args = cli.build_parser().parse_args(["replay", "cap.pcap", "--output", "out.wav"])
    assert args.command == "replay"
    assert args.capture == Path("cap.pcap") and args.replay_output == Path("out.wav")
    assert cli.flags_from_args(args) == {}


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("raopd ")


def test_logging_is_one_line_per_record_on_stderr(capsys, daemon):
    cli.configure_logging("debug")
    log = logging.getLogger("raopd.test")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed\nsecond line")
    log.debug("visible at debug")
    logging.getLogger("zeroconf").debug("library debug is hidden below trace")
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert "failed | second line | Traceback" in lines[0] and "ValueError: boom" in lines[0]
    assert "DEBUG raopd.test: visible at debug" in lines[1]
    cli.configure_logging("warning")
    log.info("hidden")
    assert capsys.readouterr().err == ""


def test_password_on_the_command_line_warns(daemon, caplog):
    assert cli.main(["--password", "pw"]) == 0
    assert "--password is visible to every user of this machine" in caplog.text
    caplog.clear()
    assert cli.main([]) == 0
    assert "visible" not in caplog.text


def test_send_options_are_checked_before_connecting(capsys):
    # 192.0.2.1 (TEST-NET-1) is never contacted: the check comes first.
    wav = str(ROOT / "tests" / "captures" / "test30.wav")
    assert cli.main(["send", wav, "--host", "192.0.2.1", "--volume", "5"]) == 2
    assert capsys.readouterr().err == (
        "raopd send: --volume must be from -30 to 0 dB, or -144 (mute), got 5\n"
    )
    assert cli.main(["send", wav, "--host", "192.0.2.1", "--drop", "2"]) == 2
    assert "drop must be a probability" in capsys.readouterr().err
    assert cli.main(["send", "/nonexistent.wav", "--host", "192.0.2.1"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_replay_help_names_its_placeholder(capsys):
    with pytest.raises(SystemExit):
        cli.main(["replay", "--help"])
    out = capsys.readouterr().out
    assert "REPLAY_OUTPUT" not in out and "--output OUT, -o OUT" in out


def test_config_format_flag_and_variable(daemon, tmp_path, monkeypatch):
    path = tmp_path / "cfg"
    path.write_text('name = "Den"\n')
    assert cli.main(["--config", str(path), "--config-format", "toml"]) == 0
    assert daemon.configs[-1].name == "Den"
    monkeypatch.setenv("RAOPD_CONFIG_FORMAT", "bogus")
    assert cli.main(["--config", str(path)]) == 2
