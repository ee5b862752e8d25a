"""The runner's own logic: durations, the bound of every run, and the CPU arithmetic."""

from __future__ import annotations

import pytest

from loadtest.run import CpuSample, CpuSampler, LoadOptions, parse_duration, parser
from loadtest.scenarios import SCENARIOS


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("45", 45)])
def test_durations_read_like_locust(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "m", "1m30"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_run_is_bounded():
    assert LoadOptions("detect_threat").bounded_run_time() == 30  # open-ended steady: 30 s by default
    assert LoadOptions("detect_threat", run_time=12).bounded_run_time() == 12
    ramp = LoadOptions("detect_threat", shape="ramp", rate=100, step=100, max_rate=300, step_seconds=5)
    assert ramp.bounded_run_time() == 3 * 5 + 2


def test_locust_receives_the_scenario_and_shape_options():
    args = LoadOptions("bulk_analyze_1000", shape="closed", users=3).locust_args()
    assert args[args.index("--scenario") + 1] == "bulk_analyze_1000"
    assert args[args.index("--closed-users") + 1] == "3"


def test_cli_offers_every_scenario_and_a_url():
    args = parser().parse_args(["classify_attack", "--url", "http://127.0.0.1:3000", "--shape", "spike"])
    assert args.url == "http://127.0.0.1:3000" and args.shape == "spike"
    assert set(SCENARIOS) >= {"detect_threat", "classify_attack", "analyze", "bulk_detect_threat_1000"}


def test_cpu_usage_is_averaged_over_the_load_window():
    sampler = CpuSampler.__new__(CpuSampler)
    sampler.samples = [
        CpuSample(at=0.0, server=0.0, server_processes=2, locust=0.0, machine=0.0),  # before the load: ignored
        CpuSample(at=10.0, server=1.0, server_processes=2, locust=0.5, machine=3.0),
        CpuSample(at=20.0, server=6.0, server_processes=2, locust=1.5, machine=15.0),
    ]
    usage = sampler.usage(5.0, 25.0)
    assert usage["server"]["percent"] == pytest.approx(50.0)  # 5 CPU s over 10 s
    assert usage["locust"]["percent"] == pytest.approx(10.0)
    assert usage["machine_percent"] == pytest.approx(100 * 12 / (10 * usage["cores"]))
