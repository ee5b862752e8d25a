"""The load-test summary: exact statistics, phases, and the SLA verdict the runner's exit status follows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loadtest.recorder import Recorder
from loadtest.shapes import Phase
from loadtest.summary import (
    PHASE_LOG,
    REQUEST_LOG,
    PhaseResult,
    RequestLog,
    highest_rate_within_sla,
    latency_stats,
    percentile,
    phase_results,
    summarise,
    verdict,
)


def log_of(ms: list[float], ok: list[bool] | None = None, flows: int = 1, start: float = 1000.0) -> RequestLog:
    n = len(ms)
    return RequestLog(
        start=np.linspace(start, start + 1, n, endpoint=False),
        ms=np.array(ms, dtype=float),
        ok=np.array(ok if ok is not None else [True] * n, dtype=bool),
        flows=np.full(n, flows, dtype=float),
    )


def phase(name: str, rate: float | None, ms: list[float], seconds: float = 1.0, **kwargs) -> PhaseResult:
    return PhaseResult(name=name, target_rate=rate, users=1, stats=latency_stats(log_of(ms, **kwargs), seconds))


def test_percentile_is_nearest_rank_never_interpolated():
    ms = np.arange(1, 101, dtype=float)  # 1..100
    assert percentile(ms, 50) == 50
    assert percentile(ms, 99) == 99
    assert percentile(np.array([1.0, 1000.0]), 99) == 1000.0  # the slow one is not averaged away
    assert math.isnan(percentile(np.array([]), 99))


def test_latency_stats_count_rate_flows_and_failures():
    stats = latency_stats(log_of([10.0] * 98 + [150.0, 300.0], ok=[True] * 99 + [False], flows=100), seconds=2.0)
    assert (stats.requests, stats.failures) == (100, 1)
    assert stats.rate == 50.0
    assert stats.flows_per_second == 99 * 100 / 2.0  # flows of the 99 successful requests
    assert (stats.p50, stats.p99, stats.max) == (10.0, 150.0, 300.0)


@pytest.mark.parametrize(
    ("ms", "ok", "passed"),
    [
        ([5.0] * 200, None, True),
        ([5.0] * 199 + [99.9], None, True),
        ([5.0] * 197 + [100.0] * 3, None, False),  # p99 == SLA is a breach (the SLA is < 100 ms)
        ([5.0] * 200, [True] * 199 + [False], False),  # a single failure fails the run
    ],
)
def test_steady_verdict_follows_the_sla(ms, ok, passed):
    result = phase("steady", 200.0, ms, ok=ok)
    assert verdict("steady", result.stats, [result]).passed is passed


def test_steady_run_below_its_target_rate_fails():
    result = phase("steady", 400.0, [5.0] * 200)  # 200 req/s achieved of 400
    outcome = verdict("steady", result.stats, [result])
    assert not outcome.passed
    assert "below 90% of the target" in outcome.reasons[0]


def test_ramp_result_is_the_last_step_before_the_first_breach():
    steps = [
        phase("100", 100.0, [5.0] * 100),
        phase("200", 200.0, [5.0] * 200),
        phase("300", 300.0, [5.0] * 290 + [150.0] * 10),  # breaks the SLA
        phase("400", 400.0, [5.0] * 400),  # within again (noise): does not count
    ]
    assert highest_rate_within_sla(steps).target_rate == 200.0
    overall = latency_stats(log_of([5.0] * 1000), 4.0)
    assert verdict("ramp", overall, steps).passed


def test_ramp_whose_first_step_breaks_the_sla_fails():
    steps = [phase("100", 100.0, [5.0] * 99, ok=[True] * 98 + [False])]
    outcome = verdict("ramp", steps[0].stats, steps)
    assert highest_rate_within_sla(steps) is None
    assert not outcome.passed


def test_run_without_requests_fails():
    result = phase("steady", 10.0, [])
    assert not verdict("steady", result.stats, [result]).passed


def test_recorder_log_and_phases_round_trip_into_a_summary(tmp_path):
    recorder = Recorder()
    recorder.begin_phase(Phase(name="steady 50 req/s", rate=50.0, users=5, seconds=None))
    start = recorder.phases[0]["start"]
    for i in range(50):
        recorder.on_request(
            start_time=start + i * 0.02, response_time=4.0 + i % 3, exception=None, context={"flows": 1}
        )
    recorder.on_request(start_time=start + 0.5, response_time=80.0, exception=RuntimeError("503"), context={})
    recorder.write(tmp_path)
    phases = json.loads((tmp_path / PHASE_LOG).read_text())
    phases[0]["end"] = phases[0]["start"] + 1.0  # pin the phase length: exactly one second
    (tmp_path / PHASE_LOG).write_text(json.dumps(phases))

    log = RequestLog.read(tmp_path / REQUEST_LOG)
    assert log.ms.size == 51 and int((~log.ok).sum()) == 1
    [result] = phase_results(log, phases)
    assert result.stats.requests == 51 and result.stats.failures == 1

    run = {
        "scenario": "detect_threat", "scenario_description": "one flow", "path": "/detect_threat", "shape": "steady",
        "url": "http://127.0.0.1:1", "service": "test", "started": "now", "git": "abc", "command": "python -m x",
        "cpu": {"server": None, "locust": {"percent": 5.0, "cpu_seconds": 0.05, "wall_seconds": 1.0, "processes": 1},
                "machine_percent": 20.0, "cores": 2},
    }  # fmt: skip
    outcome, markdown = summarise(tmp_path, run)
    assert not outcome.passed
    assert "1 of 51 requests failed" in markdown
    assert "**FAIL**" in markdown and "| steady 50 req/s | 50 | 51.0 |" in markdown
    assert "server (process tree): not measured" in markdown
    document = json.loads((tmp_path / "summary.json").read_text())
    assert document["overall"]["failures"] == 1
    assert (tmp_path / "summary.md").read_text() == markdown


def test_request_log_refuses_a_foreign_csv(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a request log"):
        RequestLog.read(path)
