"""Hardware volume mapping (on a fake mixer: this machine has no sound card) and the
statistics line."""

import math

import alsaaudio
import pytest

from raopd.core.audio_path import AudioStats
from raopd.core.jitter import JitterStats
from raopd.core.playout import PlayoutStats
from raopd.core.session import SessionStats
from raopd.core.volume import MUTE
from raopd.errors import OutputError
from raopd.output.alsa import AlsaCounters
from raopd.output.mixer import HardwareMixer
from raopd.output.player import OutputSnapshot
from raopd.output.statistics import format_statistics


class FakeMixer:
    """Stands in for alsaaudio.Mixer: a control with a dB range (hundredths) and a switch."""

    def __init__(self, low_cdb: int = -10239, high_cdb: int = 400, db: bool = True) -> None:
        self.range = (low_cdb, high_cdb)
        self.db = db
        self.calls: list[tuple[str, object, object]] = []

    def __call__(self, control: str, device: str) -> "FakeMixer":
        if control != "PCM":
            raise alsaaudio.ALSAAudioError("Unable to find mixer control")
        return self

    def getrange(self, units: int = alsaaudio.VOLUME_UNITS_RAW) -> tuple[int, int]:
        assert units == alsaaudio.VOLUME_UNITS_DB
        return self.range if self.db else (0, 0)

    def switchcap(self) -> list[str]:
        return ["Playback Mute"]

    def setmute(self, mute: bool) -> None:
        self.calls.append(("mute", mute, None))

    def setvolume(self, value: int, units: int = alsaaudio.VOLUME_UNITS_PERCENTAGE) -> None:
        self.calls.append(("volume", value, units))

    def close(self) -> None:
        pass


def make(fake: FakeMixer, **kwargs) -> HardwareMixer:
    mixer = HardwareMixer("PCM", "hw:0", mixer_factory=fake, **kwargs)
    mixer.open()
    return mixer


def test_full_volume_is_the_mixer_maximum_or_the_cap() -> None:
    fake = FakeMixer()
    mixer = make(fake)
    assert mixer.db_limits == (-102.39, 4.0)
    mixer.set_volume(0.0)
    assert fake.calls[-2:] == [("mute", False, None), ("volume", 400, alsaaudio.VOLUME_UNITS_DB)]
    capped = make(FakeMixer(), max_volume_db=-6.0)
    assert capped.target_db(0.0) == -6.0


def test_curve_maps_onto_the_mixer_db_range() -> None:
    mixer = make(FakeMixer(), curve="flat", range_db=30.0, max_volume_db=0.0)
    assert mixer.target_db(-15.0) == pytest.approx(-15.0)
    assert mixer.target_db(-30.0) == pytest.approx(-30.0)
    tapered = make(FakeMixer(), curve="tapered", max_volume_db=0.0)
    assert tapered.target_db(-15.0) == pytest.approx(-10.0)  # half slider: -10 dB
    assert tapered.target_db(-29.99) >= -102.39  # floored at the control's minimum


def test_mute_uses_the_switch_and_the_minimum() -> None:
    fake = FakeMixer()
    mixer = make(fake)
    mixer.set_volume(MUTE)
    assert ("mute", True, None) in fake.calls
    assert fake.calls[-1] == ("volume", -10239, alsaaudio.VOLUME_UNITS_DB)
    assert mixer.target_db(MUTE) == -math.inf


def test_ignore_volume_pins_the_top() -> None:
    mixer = make(FakeMixer(), ignore_volume=True, max_volume_db=-3.0)
    assert mixer.target_db(-25.0) == -3.0 and mixer.target_db(MUTE) == -3.0


def test_percent_only_control() -> None:
    fake = FakeMixer(db=False)
    mixer = make(fake, curve="flat")
    assert mixer.db_limits is None
    mixer.set_volume(-15.0)  # flat over the 60 dB default: -30 dB = half way
    assert fake.calls[-1] == ("volume", 50, alsaaudio.VOLUME_UNITS_PERCENTAGE)


def test_missing_control_is_an_output_error() -> None:
    with pytest.raises(OutputError, match="Master"):
        HardwareMixer("Master", mixer_factory=FakeMixer()).open()


def snapshot(**overrides) -> OutputSnapshot:
    playout = PlayoutStats(
        sync_error_ms=0.25, correction_ppm=-12.0, all_sync_ppm=3.5, underflows=1, resyncs=2
    )
    values = dict(
        heartbeat=1.0,
        playing=True,
        opened=True,
        gain=1.0,
        frames_written=1000,
        playout=playout,
        interval_min_dac_queue=2914,
        interval_bit_exact=True,
        sink=AlsaCounters(
            opened=True,
            underruns=4,
            device_errors=0,
            reopen_attempts=0,
            reopens=0,
            timestamped=True,
            clockless=False,
        ),
    )
    values.update(overrides)
    return OutputSnapshot(**values)


def test_statistics_line_uses_shairport_sync_names() -> None:
    jitter = JitterStats(received=1200, late=3, missing=7, resend_requests=5, lost=2)
    audio = AudioStats(resent_packets=6, undecodable=4, paced_packets=1)
    line = format_statistics(
        snapshot(), audio, jitter, session=SessionStats(foreign_datagrams=2, bad_datagrams=1)
    )
    for part in (
        "Sync Error ms: +0.25",
        "Net Sync PPM: -12.0",
        "All Sync PPM: +3.5",
        "Source Drift PPM: n/a",
        "Packets: 1200",
        "Missing: 7",
        "Late: 3",
        "Resend Reqs: 5",
        "Resent: 6",
        "Lost: 2",
        "Undecodable: 4",
        "Dropped: 4",
        "Flushed: 0",
        "Refused: 3",
        "Min DAC Queue: 2914",
        "Underruns: 4",
        "Underflows: 1",
        "Resyncs: 2",
        "Realigned: 0",
        "Gain dB: 0.0",
        "Bit-exact: yes",
    ):
        assert part in line
    assert "Device" not in line  # only shown after a device problem
    # Packets replaced or dropped in the interval: not bit-exact, whatever the output did.
    line = format_statistics(snapshot(), audio, jitter, replaced_in_interval=1)
    assert "Bit-exact: no" in line


def test_statistics_line_flags_attenuation_and_a_lost_device() -> None:
    lost = AlsaCounters(
        opened=False,
        underruns=1,
        device_errors=1,
        reopen_attempts=5,
        reopens=0,
        timestamped=False,
        clockless=False,
    )
    line = format_statistics(snapshot(gain=0.1, interval_bit_exact=False, sink=lost))
    assert "Gain dB: -20.0" in line and "Bit-exact: no" in line
    assert "Device: absent" in line and "Reopens: 0/5" in line
    assert "Gain dB: mute" in format_statistics(snapshot(gain=0.0))
    assert format_statistics(None).startswith("Sync Error ms: n/a")


def test_daemon_mixer_device_and_idle_statistics_line() -> None:
    from raopd.config import load_config
    from raopd.core.session import ReceiverInfo
    from raopd.daemon import DaemonState, _card_of, statistics_line

    assert _card_of("hw:1,0") == "hw:1"
    assert _card_of("plughw:CARD=DAC,DEV=0") == "hw:CARD=DAC"
    assert _card_of("default") == "default"
    config = load_config({}, {}, None)
    state = DaemonState(config=config, receiver=ReceiverInfo(name="x", hw_addr=b"\x02" * 6))
    assert "Sync Error ms: n/a" in statistics_line(state)
    assert config.statistics is False  # off unless asked for


def test_statistics_line_shows_corrections_and_the_clock_counters() -> None:
    from raopd.core.clock import ClockStats
    from raopd.core.playout import PlayoutStats

    playout = PlayoutStats(frames_inserted=12, frames_dropped=3, drift_ppm=-84.5, band_ms=2.31)
    clock = ClockStats(syncs_late=7, stamp_spread_ms=61.0, anchor_resets=1, rejected=2, steps=0)
    line = format_statistics(snapshot(playout=playout), clock=clock)
    for part in (
        "Corrections: +12/-3",
        "DAC Drift PPM: -84.5",
        "Band ms: 2.31",
        "Late Syncs: 7",
        "Stamp Spread ms: 61.0",
        "Anchor Resets: 1",
        "Timing Rejected: 2",
        "Clock Steps: 0",
    ):
        assert part in line
