"""The latency budget: every sender's latency shared out so that audio is never late."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raopd.core.latency import (
    MIN_REPAIR_WINDOW,
    SAFETY,
    latency_budget,
    output_lead,
)

ALSA = {"buffer_frames": 8192, "period_frames": 2048}


def test_a_2s_sender_keeps_todays_budget():
    budget = latency_budget(2.0, max_batch_delay=0.25, **ALSA)
    assert budget.batch_delay == 0.25  # the CPU cost measured for 250 ms batches
    assert budget.output_fill_frames == 8192  # the whole device buffer
    assert budget.write_frames == 2048  # a period at a time
    assert budget.repair_window == pytest.approx(2.0 - 0.25 - 10240 / 44100 - SAFETY)
    assert (budget.resend_first_delay, budget.resend_interval) == (0.1, 0.25)


def test_pipewire_250ms_fits_with_room_for_repair():
    """PipeWire's sync packets carry latency 0: it allows 11025 frames (250 ms)."""
    budget = latency_budget(11025 / 44100, max_batch_delay=0.25, **ALSA)
    lead = (budget.output_fill_frames + budget.write_frames) / 44100
    assert budget.batch_delay == pytest.approx(0.03125)
    assert lead < 0.11
    assert budget.batch_delay + budget.repair_window + lead + SAFETY == pytest.approx(0.25)
    assert budget.repair_window > 0.08
    # Resends still fit inside the window: asked early, repeated, not too late to arrive.
    assert budget.resend_first_delay + budget.resend_last_margin < budget.repair_window


@given(latency=st.floats(0.0, 10.0), batch=st.sampled_from([0.0, 0.1, 0.25]))
def test_the_shares_never_exceed_the_latency_unless_it_is_below_the_minimum(latency, batch):
    budget = latency_budget(latency, max_batch_delay=batch, **ALSA)
    lead = (budget.output_fill_frames + budget.write_frames) / 44100
    total = budget.batch_delay + budget.repair_window + lead + SAFETY
    assert budget.batch_delay <= batch
    assert budget.write_frames <= budget.output_fill_frames <= 8192
    if budget.repair_window > MIN_REPAIR_WINDOW and budget.repair_window < 4.0:
        assert total == pytest.approx(latency)
    elif budget.repair_window == 4.0:
        assert total <= latency + 1e-9


def test_a_file_has_no_lead():
    budget = latency_budget(2.0, max_batch_delay=0.0, buffer_frames=0, period_frames=0)
    assert (budget.output_fill_frames, budget.write_frames, budget.batch_delay) == (0, 0, 0.0)
    assert budget.repair_window == pytest.approx(2.0 - SAFETY)


def test_output_lead_is_a_quarter_of_the_latency_within_the_buffer():
    assert output_lead(0.25, 8192, 2048) == (2756, 1378)
    assert output_lead(2.0, 8192, 2048) == (8192, 2048)
    assert output_lead(0.0, 8192, 2048) == (256, 256)
