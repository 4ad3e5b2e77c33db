"""Sync on the paced output with real receivers, one sender, one recording (tests/live_sync.py).

Bounded for CI: 20 s of audio per scenario, three scenarios. benchmarks/sync_live.py runs the
same at 60 s and more combinations. Needs root (a network namespace), pulseaudio and
libasound2-plugins; the shairport-sync scenario also shairport-sync, avahi-daemon and dbus.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.live_sync import Run, scenario
from tests.paced import Disturbances, until_undisturbed

SECONDS = 20.0


def measured(directory: Path, kinds: tuple[str, str], burst: float = 0.0) -> Run:
    """One undisturbed run of the scenario (`until_undisturbed`: a machine that pauses stops
    the paced sink too); the scenario runs its own paced output."""

    def run(attempt_directory: Path) -> tuple[Run, Disturbances]:
        result = scenario(attempt_directory, kinds, seconds=SECONDS, burst=burst)
        assert result.disturbances is not None
        return result, result.disturbances

    return until_undisturbed(run, directory)


def report(run: Run) -> str:
    """Everything a failed run measured, for the test's message."""
    return json.dumps(run.as_dict(), default=float)


def raopd_ok(figures: dict, why: str) -> None:
    """What every raopd must show with a good sender: no resync, its own error small, bit-exact
    but for the corrections the (fast) paced sink needs.

    The acceptance figures (own error p99 <= 2 ms, >= 99.9 % bit-exact) are met on a quiet
    machine (benchmarks/sync_live.py); a CI box shared by other jobs delays the output thread
    and PulseAudio by a few ms at times (longer pauses are caught by `measured`), which shows
    as real errors for a moment. So CI holds the median to the target and the p99 looser.
    """
    assert figures["resyncs"] == 0, why
    assert figures["own_sync_error_ms"]["median"] <= 0.5, why
    assert figures["own_sync_error_ms"]["p99"] <= 5.0, why
    assert figures["bit_exact_fraction"] >= 0.995, why
    assert figures["source_frames_found"] >= 0.99, why


# How far this rig's delay reading (the `pulse` plugin's snd_pcm_delay, PulseAudio's latency
# estimate) lets a receiver that follows it be off the sender's timeline, or off another one,
# over 20 s on a shared host: two ideal players on it were 0.49-5.93 ms apart at p99
# (docs/alsa-delay.md). Undisturbed fresh-clone CI runs here (host steal <= 20 ms): two raopd,
# each holding its own error under 0.9 ms median, were up to 6.2 ms off the sender's timeline
# at the median and up to 3.5 ms apart, one's reading 13 ms off the recording at its worst;
# quiet runs: 0.24-1.17 ms off, -0.54..+0.32 ms apart. The limit catches what the issue was
# about (19-31 ms median errors with resyncs), not the rig's wander; benchmarks/sync_live.py
# on a quiet machine measures the accuracy.
RIG_READING_MS = 10.0


def test_two_raopd_on_a_good_sender_agree(tmp_path: Path) -> None:
    run = measured(tmp_path, ("raopd", "raopd"))
    for figures in run.receivers:
        raopd_ok(figures, report(run))
        # Against the sender's own timeline, through snd_pcm_delay.
        assert figures["true_error_ms"]["median"] <= RIG_READING_MS, report(run)
    assert abs(run.offset_ms["median"]) <= RIG_READING_MS, report(run)


def test_two_raopd_on_a_late_stamping_sender_never_resync(tmp_path: Path) -> None:
    """node-airtunes2's pacing: syncs stamped when their 100 ms burst goes out. The anchor
    follows the earliest stamps and slews to them: no resync, and both receivers, which see
    the same stamps, agree."""
    run = measured(tmp_path, ("raopd", "raopd"), burst=0.1)
    for figures in run.receivers:
        assert figures["resyncs"] == 0, report(run)
        assert figures["source_frames_found"] >= 0.98, report(run)
    assert abs(run.offset_ms["median"]) <= RIG_READING_MS, report(run)


def test_raopd_and_shairport_sync_agree(tmp_path: Path) -> None:
    """Both read snd_pcm_delay now (raopd read buffer - avail: 8-9 ms apart before). What is
    left is shairport-sync's 2 ms tolerance band: on this sink, which runs ~150 ppm fast, it
    lets its error run to the band's edge before correcting, while raopd corrects its drift
    out (docs/alsa-delay.md)."""
    run = measured(tmp_path, ("raopd", "shairport-sync"))
    raopd_ok(run.receivers[0], report(run))
    assert run.receivers[1]["source_frames_found"] >= 0.99, report(run)
    assert abs(run.offset_ms["median"]) <= 3.0, report(run)
