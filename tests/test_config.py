"""Config: precedence, validation messages, TOML and shairport-sync.conf files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from raopd.config import DEFAULT_HTTP_PORT, FIELDS, Config, expand_name, load_config
from raopd.errors import ConfigError
from raopd.libconfig import parse_libconfig

# What a Kubernetes ConfigMap for shairport-sync typically holds (name, ALSA device, mixer),
# with the comment styles the stock sample uses.
SPS_CONFIGMAP = """\
// Sample Configuration File for Shairport Sync
general =
{
    name = "Kitchen"; // This is the name the service will advertise to iTunes.
//  password = "secret";
    port = 5000;
    volume_range_db = 60 ;
    volume_control_profile = "flat";
    audio_backend_latency_offset_in_seconds = -0.25;
};

sessioncontrol =
{
    allow_session_interruption = "yes";
    session_timeout = 120;
};

alsa =
{
    output_device = "hw:CARD=DAC";
    mixer_control_name = "PCM";
    /* mixer_device = "default"; */
};
"""

EQUIVALENT_TOML = """\
name = "Kitchen"
port = 5000
volume_range_db = 60
volume_curve = "flat"
latency_offset = -0.25
allow_session_interruption = true
session_timeout = 120
device = "hw:CARD=DAC"
mixer_control = "PCM"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(flags=None, env=None, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(flags or {}, env or {}, path)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- defaults and precedence -----------------------------------------------------------------


def test_defaults(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "raspberrypi.lan")
    config = load_config({}, {}, None)
    assert config.name == "Raspberrypi"
    assert (config.port, config.http_port, config.udp_port_base) == (5000, 9798, 6001)
    assert DEFAULT_HTTP_PORT == 9798
    assert config.device == "default" and config.output is None and config.password is None
    assert config.session_timeout == 60.0 and config.latency_offset == 0.0
    assert config.resend is True and config.allow_session_interruption is False


def test_every_field_is_documented_and_typed():
    for name, field in FIELDS.items():
        assert field.metadata["help"], name
        assert field.metadata["kind"] in ("str", "int", "float", "bool", "path"), name


def test_precedence_chain(tmp_path):
    path = write(tmp_path, "raopd.toml", 'port = 5001\nname = "File"\ndevice = "hw:1"\n')
    env = {"RAOPD_PORT": "5002", "RAOPD_NAME": "Env", "HOME": "/root"}
    assert load_config({}, {}, path).port == 5001
    config = load_config({}, env, path)
    assert (config.port, config.name, config.device) == (5002, "Env", "hw:1")
    config = load_config({"port": 5003}, env, path)
    assert (config.port, config.name, config.device) == (5003, "Env", "hw:1")
    assert load_config({}, {}, None).device == "default"


def test_env_values_are_parsed_by_type():
    env = {
        "RAOPD_RESEND": "no",
        "RAOPD_STATISTICS": "1",
        "RAOPD_ALLOW_SESSION_INTERRUPTION": "Yes",
        "RAOPD_LATENCY_OFFSET": "-0.1",
        "RAOPD_UDP_PORT_BASE": "7000",
        "RAOPD_PASSWORD": "",
        "RAOPD_STATE_DIR": "/data",
        "RAOPD_CONFIG": "/etc/raopd.toml",  # read by the CLI, not a setting
    }
    config = load_config({}, env, None)
    assert config.resend is False and config.statistics is True
    assert config.allow_session_interruption is True
    assert config.latency_offset == -0.1 and config.udp_port_base == 7000
    assert config.password is None
    assert config.state_dir == Path("/data")


def test_flags_may_be_text_or_typed():
    assert load_config({"port": "6000"}, {}, None).port == 6000
    assert load_config({"resend": False}, {}, None).resend is False
    assert load_config({"latency_offset": 1}, {}, None).latency_offset == 1.0


def test_name_expansion():
    assert expand_name("%H speaker", "kitchen-pi.local") == "Kitchen-pi speaker"
    assert expand_name("%h", "kitchen-pi") == "kitchen-pi"
    assert expand_name("100%% %v", "x").startswith("100% 0.")
    assert load_config({"name": "Den"}, {}, None).name == "Den"


def test_device_id_is_normalised():
    assert load_config({"device_id": "0a:1b:2c:3d:4e:5f"}, {}, None).device_id == "0A1B2C3D4E5F"


def test_config_is_frozen():
    config = load_config({}, {}, None)
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    assert isinstance(config, Config)


# -- one clear message per problem -----------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({}, {"RAOPD_PROT": "1"}, "unknown setting RAOPD_PROT (did you mean RAOPD_PORT?)"),
        ({"prot": 1}, {}, "unknown setting --prot (did you mean --port?)"),
        ({"port": 0}, {}, "--port: port must be an integer from 1 to 65535, got 0"),
        ({}, {"RAOPD_PORT": "70000"}, "RAOPD_PORT: port must be an integer from 1 to 65535"),
        ({}, {"RAOPD_PORT": "five"}, "RAOPD_PORT: port must be an integer, got 'five'"),
        ({}, {"RAOPD_RESEND": "maybe"}, "RAOPD_RESEND: resend must be yes/no, true/false or 1/0"),
        ({"volume_curve": "loud"}, {}, "volume_curve must be one of tapered, flat"),
        ({"latency_offset": "2.5"}, {}, "latency_offset must be from -2.0 to 2.0 s"),
        ({"latency_offset": "nan"}, {}, "latency_offset must be from -2.0 to 2.0 s"),
        ({"name": "x" * 51}, {}, "--name: name must be at most 50 characters, got 51"),
        ({"name": "  "}, {}, "--name: name must not be empty"),
        ({"device_id": "0A1B2C3D4E"}, {}, "device_id must be 12 hex digits"),
        ({"address": "kitchen"}, {}, "--address: address must be an IP address"),
        ({"log_level": "loud"}, {}, "log_level must be one of trace, debug, info"),
        ({"default_volume": -50}, {}, "default_volume must be from -30.0 to 0.0, or -144"),
        ({"udp_port_base": 65530}, {}, "udp_port_base + udp_port_range must stay within 65535"),
        ({"period_frames": 8192}, {}, "buffer_frames must be at least twice period_frames"),
        ({"session_timeout": -1}, {}, "session_timeout must be from 0.0 to 86400.0 s"),
    ],
)
def test_bad_values_give_one_precise_message(flags, env, expected):
    assert expected in error_of(flags, env)


def test_long_name_after_expansion(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "h" * 45)
    assert "at most 50 characters" in error_of({"name": "%H Speaker"})


def test_toml_errors(tmp_path):
    assert "unknown setting nmae (did you mean name?)" in error_of(
        path=write(tmp_path, "a.toml", 'nmae = "x"\n')
    )
    assert "raopd's TOML file is flat" in error_of(
        path=write(tmp_path, "b.toml", "[raopd]\nport = 1\n")
    )
    assert "port must be an integer, got 5000.5" in error_of(
        path=write(tmp_path, "c.toml", "port = 5000.5\n")
    )
    bad = write(tmp_path, "d.toml", "port = = 1\n")
    assert "is neither raopd TOML (Invalid value (at line 1, column 8))" in error_of(path=bad)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, {}, bad, "toml")
    assert "cannot read config file" in error_of(path=tmp_path / "missing.toml")
    message = error_of(path=write(tmp_path, "e.toml", "resend = 1\n"))
    assert "e.toml: resend: resend must be true or false, got 1" in message


def test_toml_quoted_numbers_are_accepted(tmp_path):
    assert load_config({}, {}, write(tmp_path, "a.toml", 'port = "5005"\n')).port == 5005


# -- shairport-sync.conf ---------------------------------------------------------------------


def test_shairport_sync_configmap_equals_toml(tmp_path, caplog):
    sps = load_config({}, {}, write(tmp_path, "shairport-sync.conf", SPS_CONFIGMAP))
    toml = load_config({}, {}, write(tmp_path, "raopd.toml", EQUIVALENT_TOML))
    assert sps == toml
    assert sps.name == "Kitchen" and sps.device == "hw:CARD=DAC" and sps.mixer_control == "PCM"
    assert sps.volume_curve == "flat" and sps.latency_offset == -0.25
    # Everything in this file is supported, and commented-out settings are not present.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_format_is_sniffed_without_extension(tmp_path):
    sps = load_config({}, {}, write(tmp_path, "config", SPS_CONFIGMAP))
    toml = load_config({}, {}, write(tmp_path, "settings", EQUIVALENT_TOML))
    assert sps == toml


def test_env_and_flags_override_shairport_sync(tmp_path):
    path = write(tmp_path, "shairport-sync.conf", SPS_CONFIGMAP)
    config = load_config({"name": "Flag"}, {"RAOPD_DEVICE": "hw:2"}, path)
    assert (config.name, config.device, config.mixer_control) == ("Flag", "hw:2", "PCM")


def test_shairport_sync_settings_raopd_shares(tmp_path):
    text = """
    general = {
      name = "%H Den"; password = "pw"; port = 5100; interface = "eth0";
      udp_port_base = 6100; udp_port_range = 20;
      volume_range_db = 50; volume_max_db = -3.0; volume_control_profile = "dasl_tapered";
      ignore_volume_control = "yes"; default_airplay_volume = -20.0;
      drift_tolerance_in_seconds = 0.004; resync_threshold_in_seconds = 0.1;
      output_backend = "stdout";
    };
    sessioncontrol = { allow_session_interruption = "no"; session_timeout = 30; };
    alsa = { output_device = "hw:0"; mixer_control_name = "Master"; mixer_device = "hw:0";
             period_size = 512; buffer_size = 4096; };
    diagnostics = { statistics = "yes"; log_verbosity = 1; disable_resend_requests = "yes"; };
    """
    config = load_config({}, {}, write(tmp_path, "s.conf", text))
    assert config.name.endswith(" Den") and config.password == "pw" and config.port == 5100
    assert config.interface == "eth0" and (config.udp_port_base, config.udp_port_range) == (
        6100,
        20,
    )
    assert (config.volume_range_db, config.volume_max_db) == (50.0, -3.0)
    assert config.volume_curve == "tapered" and config.ignore_volume is True
    assert config.default_volume == -20.0
    assert (config.drift_tolerance, config.resync_threshold) == (0.004, 0.1)
    assert config.output == "-" and config.allow_session_interruption is False
    assert config.session_timeout == 30.0
    assert (config.device, config.mixer_control, config.mixer_device) == ("hw:0", "Master", "hw:0")
    assert (config.period_frames, config.buffer_frames) == (512, 4096)
    assert config.statistics is True and config.log_level == "debug" and config.resend is False


def test_general_session_timeout_of_older_versions(tmp_path):
    path = write(tmp_path, "s.conf", "general = { session_timeout = 45; };")
    assert load_config({}, {}, path).session_timeout == 45.0


def test_pipe_backend(tmp_path):
    text = 'general = { output_backend = "pipe"; }; pipe = { name = "/run/audio"; };'
    assert load_config({}, {}, write(tmp_path, "s.conf", text)).output == "/run/audio"


def test_metadata_mqtt_and_sessioncontrol_sections_read_as_they_are(tmp_path):
    text = """
    metadata = { enabled = "yes"; include_cover_art = "no"; pipe_timeout = 2500;
                 socket_address = "226.0.0.1"; socket_port = 5556; socket_msglength = 65500; };
    mqtt = { enabled = "yes"; hostname = "broker.lan"; port = 1884; topic = "living";
             publish_raw = "yes"; publish_parsed = "yes"; publish_cover = "no";
             publish_retain = "yes"; enable_remote = "yes"; enable_autodiscovery = "yes";
             autodiscovery_prefix = "ha"; empty_payload_substitute = "-"; };
    sessioncontrol = { run_this_before_play_begins = "/usr/bin/amp on";
                       run_this_after_play_ends = "/usr/bin/amp off";
                       run_this_before_entering_active_state = "/bin/a";
                       run_this_after_exiting_active_state = "/bin/b";
                       run_this_when_volume_is_set = "/bin/v";
                       run_this_if_an_unfixable_error_is_detected = "/bin/e";
                       wait_for_completion = "yes"; active_state_timeout = 30.0; };
    """
    config = load_config({}, {}, write(tmp_path, "s.conf", text))
    assert config.metadata_pipe == "/tmp/shairport-sync-metadata"  # the default pipe name
    assert not config.metadata_cover_art
    assert config.metadata_pipe_timeout == 2.5  # milliseconds there, seconds here
    assert (config.metadata_socket_address, config.metadata_socket_port) == ("226.0.0.1", 5556)
    assert config.metadata_socket_msglength == 65000  # clipped, as shairport-sync does
    assert (config.mqtt_host, config.mqtt_port, config.mqtt_topic) == ("broker.lan", 1884, "living")
    assert config.mqtt_publish_raw and config.mqtt_publish_parsed and not config.mqtt_publish_cover
    assert config.mqtt_publish_retain and config.mqtt_remote and config.mqtt_discovery
    assert (config.mqtt_discovery_prefix, config.mqtt_empty_payload) == ("ha", "-")
    assert config.run_before_play_begins == "/usr/bin/amp on"
    assert config.run_after_play_ends == "/usr/bin/amp off"
    assert config.run_before_entering_active_state == "/bin/a"
    assert config.run_after_exiting_active_state == "/bin/b"
    assert config.run_when_volume_is_set == "/bin/v"
    assert config.run_on_unfixable_error == "/bin/e"
    assert config.hook_wait_for_completion and config.active_state_timeout == 30.0


def test_metadata_section_off_leaves_the_pipe_off(tmp_path):
    text = 'metadata = { enabled = "no"; pipe_name = "/tmp/m"; };'
    config = load_config({}, {}, write(tmp_path, "s.conf", text))
    assert config.metadata_pipe is None


def test_unsupported_settings_warn_once_each(tmp_path, caplog):
    text = """
    general = { name = "A"; interpolation = "soxr"; output_backend = "pa"; };
    dsp = { loudness = "yes"; convolution = "yes"; };
    mqtt = { enabled = "no"; hostname = "broker"; };
    """
    with caplog.at_level(logging.WARNING, logger="raopd.config"):
        load_config({}, {}, write(tmp_path, "s.conf", text))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5
    for key in ("general.interpolation", "dsp.loudness", "dsp.convolution", "mqtt.hostname"):
        assert sum(key in m for m in messages) == 1, key
    assert sum("general.output_backend" in m for m in messages) == 1
    assert all("\n" not in m for m in messages)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('general = { port = "x"; };', "s.conf:1: general.port: port must be an integer"),
        ("general = { port = 0; };", "general.port: port must be an integer from 1 to 65535"),
        (
            'general = { volume_control_profile = "loud"; };',
            "general.volume_control_profile must be one of flat, standard, dasl_tapered",
        ),
        (
            'sessioncontrol = { allow_session_interruption = "perhaps"; };',
            'must be "yes" or "no"',
        ),
        ('general = { name = "x"', "s.conf:1:23: expected '}' to close the group"),
        ('@include "other.conf"', "s.conf:1:1: @include is not supported"),
        ('general = { name = "x; };', "s.conf:1:20: string is not closed"),
        ("general = { port = 12ab; };", "s.conf:1:20: expected a value"),
        ("general = { port 5000; };", "s.conf:1:18: expected '=' or ':' after 'port'"),
        ("general = { a = 1; a = 2; };", "s.conf:1:20: setting 'general.a' is given twice"),
        ("/* never closed", "comment '/*' is never closed"),
    ],
)
def test_bad_shairport_sync_files(tmp_path, text, expected):
    assert expected in error_of(path=write(tmp_path, "s.conf", text))


# -- the libconfig reader itself --------------------------------------------------------------


def test_libconfig_syntax():
    doc = parse_libconfig(
        """
        # hash comment
        a: 0x1F;          // hex
        b = 12L, c = -7LL;
        d = 1.5e3; e = .25; f = -2.;
        g = TRUE; h = false
        s = "tab\\there \\"q\\" \\x41" " joined";
        list = ( 1, "two", { x = 3; }, ( 4 ) );
        arr = [1, 2, 3,];
        /* block
           comment */
        grp : { inner = { deep = "yes" } }
        """
    )
    s = doc.settings
    assert (s["a"], s["b"], s["c"]) == (31, 12, -7)
    assert (s["d"], s["e"], s["f"]) == (1500.0, 0.25, -2.0)
    assert (s["g"], s["h"]) == (True, False)
    assert s["s"] == 'tab\there "q" A joined'
    assert s["list"] == [1, "two", {"x": 3}, [4]]
    assert s["arr"] == [1, 2, 3]
    assert s["grp"] == {"inner": {"deep": "yes"}}
    assert doc.lines["grp.inner.deep"] == 12


@pytest.mark.parametrize(
    "text",
    ["a = ", "a = (1 2)", "a = [", "= 1", "a = \\", "a = {", 'a = "\\q"', "a = 1; }", "a = @"],
)
def test_libconfig_never_crashes(text):
    with pytest.raises(ConfigError, match=r"^<config>:\d+:\d+: "):
        parse_libconfig(text)


# -- format by content, password file --------------------------------------------------------


def test_format_follows_content_not_name(tmp_path, caplog):
    """A TOML file named raopd.conf is TOML; a shairport-sync file named .toml is libconfig."""
    with caplog.at_level(logging.WARNING, logger="raopd.config"):
        toml = load_config({}, {}, write(tmp_path, "raopd.conf", EQUIVALENT_TOML))
    assert toml.name == "Kitchen" and not caplog.records
    sps = load_config({}, {}, write(tmp_path, "weird.toml", SPS_CONFIGMAP))
    assert sps == toml


def test_a_file_that_is_neither_says_so(tmp_path):
    path = write(tmp_path, "raopd.conf", "this is not a config file\n")
    message = error_of(path=path)
    assert message.startswith(f"{path} is neither raopd TOML (")
    assert "nor a shairport-sync.conf (" in message and "--config-format" in message


def test_explicit_config_format(tmp_path):
    path = write(tmp_path, "x", 'name = "Den"\n')
    assert load_config({}, {}, path, "toml").name == "Den"
    # The same line read as shairport-sync.conf is a top-level setting it does not know.
    assert load_config({}, {}, path, "shairport-sync").name != "Den"
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, {}, write(tmp_path, "y", SPS_CONFIGMAP), "toml")


def test_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    assert load_config({"password_file": str(secret)}, {}, None).password == "s3cret"
    env = {"RAOPD_PASSWORD_FILE": str(secret)}
    assert load_config({}, env, None).password == "s3cret"
    assert "both given" in error_of(flags={"password": "x"}, env=env)
    assert "cannot read password_file" in error_of(env={"RAOPD_PASSWORD_FILE": "/nonexistent"})
    (tmp_path / "empty").write_text("")
    assert "is empty" in error_of(env={"RAOPD_PASSWORD_FILE": str(tmp_path / "empty")})
    assert load_config({}, {"RAOPD_PASSWORD": "envpw"}, None).password == "envpw"
