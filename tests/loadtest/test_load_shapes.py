"""Load shapes: the phases each shape runs, with their rates, users and lengths."""

from __future__ import annotations

import pytest

from loadtest.shapes import phase_at, schedule, total_seconds, users_for


def test_users_hold_the_rate_at_most_per_user_rate_each():
    assert users_for(200, 10) == 20
    assert users_for(205, 10) == 21
    assert users_for(0.5, 10) == 1
    with pytest.raises(ValueError):
        users_for(0, 10)


def test_steady_is_one_open_ended_paced_phase():
    [phase] = schedule("steady", rate=200)
    assert (phase.rate, phase.users, phase.seconds) == (200, 20, None)
    assert phase.period == pytest.approx(0.1)  # each of 20 users sends every 100 ms: 200 req/s
    assert total_seconds([phase]) is None


def test_ramp_steps_up_to_max_rate():
    phases = schedule("ramp", rate=100, step=100, step_seconds=8, max_rate=450)
    assert [p.rate for p in phases] == [100, 200, 300, 400]
    assert all(p.seconds == 8 for p in phases)
    assert total_seconds(phases) == 32
    assert all(p.users / p.period == pytest.approx(p.rate) for p in phases)
    with pytest.raises(ValueError):
        schedule("ramp", rate=100, step=0)


def test_spike_is_base_peak_recovery():
    phases = schedule("spike", rate=100, spike_factor=5, step_seconds=10)
    assert [p.rate for p in phases] == [100, 500, 100]
    assert [p.name.split()[0] for p in phases] == ["base", "spike", "recovery"]


def test_closed_loop_sends_without_waiting():
    [phase] = schedule("closed", rate=1, users=3)
    assert (phase.rate, phase.users, phase.period) == (None, 3, 0.0)


def test_phase_at_walks_the_schedule_and_ends():
    phases = schedule("spike", rate=100, step_seconds=10)
    assert [phase_at(phases, t) for t in (0, 9.99, 10, 25, 29.99)] == [0, 0, 1, 2, 2]
    assert phase_at(phases, 30) is None
    assert phase_at(schedule("steady", rate=10), 1e9) == 0


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="unknown shape"):
        schedule("sine", rate=1)  # type: ignore[arg-type]
