"""Served benchmark: `python -m benchmarks.served [--url URL --server-pid PID] [--quick]`.

Against one `bentoml serve service:NIDSService` process (started here unless --url is given), in one run:
1. the issue's steady target: `detect_threat` and `classify_attack` at 200 req/s;
2. step ramps (single-flow requests) on the no-model `ping` API - the serving ceiling of this machine with
   the load generator on it - then on `detect_threat`, `classify_attack` and `analyze`: the highest rate whose
   step keeps p99 < 100 ms with no failure, and its ratio to the ceiling;
3. bulk throughput: closed-loop requests of 1,000 flows to each batch API, flows per second, next to the speed of
   the served model alone in this process at batch 1,024 (the same tag, read from /model_info; measured just
   before and just after each bulk run, the ratio taken to their mean): issue 12's target is API >= 50% of the
   model alone.
If the service has no `ping` API, the ceiling is measured on benchmarks.ping_service (a separate service
started right after, on the same machine) and the report says so. Prints Markdown; every Locust run keeps its
full results under loadtest/results/benchmarks/served-<time>/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.inprocess import HOT_PATH_BATCH, matrix, per_call_seconds
from loadtest.payloads import request_bodies
from loadtest.run import DEFAULT_SERVICE, REPO, RESULTS, LoadOptions, RunError, git_version, run_locust, serve
from loadtest.scenarios import SCENARIOS
from nids.models.artifacts import load_model

PING_SERVICE = "benchmarks.ping_service:PingService"
SINGLE_APIS = ("detect_threat", "classify_attack", "analyze")
BULK_SCENARIOS = ("bulk_detect_threat_1000", "bulk_classify_attack_1000", "bulk_analyze_1000")
TARGET_RATIO = 0.7
TARGET_BULK_FLOWS_PER_S = 50_000
TARGET_BULK_MODEL_RATIO = 0.5
BULK_ROLES = {"bulk_detect_threat_1000": "threat", "bulk_classify_attack_1000": "attack"}


def has_ping(url: str) -> bool:
    body = request_bodies(SCENARIOS["ping"])[0].data
    request = urllib.request.Request(f"{url}/ping", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


@contextlib.contextmanager
def target(
    url: str | None, pid: int | None, service: str, log: Path, working_dir: Path = REPO
) -> Iterator[tuple[str, int | None, str]]:
    if url:
        yield url.rstrip("/"), pid, f"given URL {url}"
    else:
        with serve(service, log, working_dir) as (started_url, started_pid):
            where = "" if working_dir == REPO else f" in {working_dir}"
            yield started_url, started_pid, f"bentoml serve {service}{where} (started by the benchmark)"


class Bench:
    def __init__(self, directory: Path, ramp: dict[str, float], steady_seconds: float, bulk_seconds: float) -> None:
        self.directory = directory
        self.ramp = ramp
        self.steady_seconds = steady_seconds
        self.bulk_seconds = bulk_seconds
        self.runs: dict[str, dict[str, Any]] = {}
        # bulk run -> flows/s of its served model alone at batch 1,024, measured just before and just after it
        self.model_alone: dict[str, tuple[float, float]] = {}

    def _run(self, key: str, options: LoadOptions, url: str, pid: int | None, service: str) -> dict[str, Any]:
        print(f"[{datetime.now():%H:%M:%S}] {key} ...", file=sys.stderr, flush=True)
        run_locust(options, url, self.directory / key, server_pid=pid, service=service)
        summary = json.loads((self.directory / key / "summary.json").read_text(encoding="utf-8"))
        self.runs[key] = summary
        return summary

    def ramp_run(self, scenario: str, url: str, pid: int | None, service: str) -> dict[str, Any]:
        options = LoadOptions(scenario=scenario, shape="ramp", **self.ramp)  # type: ignore[arg-type]
        return self._run(f"ramp-{scenario}", options, url, pid, service)

    def steady_run(
        self, scenario: str, url: str, pid: int | None, service: str, key: str | None = None
    ) -> dict[str, Any]:
        options = LoadOptions(scenario=scenario, shape="steady", rate=200, run_time=self.steady_seconds)
        return self._run(key or f"steady-{scenario}", options, url, pid, service)

    def measure_model(self, url: str, role: str, seconds: float = 3.0) -> float | None:
        """Flows/s of the served model of `role` alone, in this process, on the load-test pools (None: not here)."""
        request = urllib.request.Request(f"{url}/model_info", data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            info = json.loads(response.read())
        try:
            model = load_model(info[role]["tag"])
        except Exception as error:  # a remote service's model may not be in this store
            print(f"model alone not measured for {role}: {error}", file=sys.stderr)
            return None
        X = matrix(model, role, HOT_PATH_BATCH)
        return HOT_PATH_BATCH / per_call_seconds(lambda: model.predict_proba(X), seconds)

    def bulk_run(self, scenario: str, url: str, pid: int | None, service: str, users: int) -> dict[str, Any]:
        """The closed-loop run, with its model alone measured just before and just after it: the ratio compares
        figures taken minutes apart at most (this VM's speed moves by up to 1.8x within an hour)."""
        key = f"bulk-{scenario}-{users}users"
        role = BULK_ROLES.get(scenario)
        before = self.measure_model(url, role) if role else None
        options = LoadOptions(scenario=scenario, shape="closed", users=users, run_time=self.bulk_seconds)
        summary = self._run(key, options, url, pid, service)
        after = self.measure_model(url, role) if role else None
        if before is not None and after is not None:
            self.model_alone[key] = (before, after)
        return summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _best_phase(summary: dict[str, Any]) -> dict[str, Any] | None:
    best = summary["highest_rate_within_sla"]
    return next((p for p in summary["phases"] if p["target_rate"] == best), None)


def _cpu(summary: dict[str, Any]) -> str:
    cpu = summary["run"]["cpu"]
    server = cpu.get("server")
    server_text = "-" if server is None else f"{server['percent']:.0f}"
    return f"{server_text}% / {cpu['locust']['percent']:.0f}% / {cpu['machine_percent']:.0f}%"


def report(bench: Bench, ceiling_source: str) -> str:
    lines = ramp_table(bench, ceiling_source) if "ramp-ping" in bench.runs else []
    return "\n".join(lines + steady_and_bulk_tables(bench)) + "\n"


def ramp_table(bench: Bench, ceiling_source: str) -> list[str]:
    ceiling = bench.runs["ramp-ping"]["highest_rate_within_sla"] or 0.0
    lines = [
        f"Ceiling: {ceiling_source}. Ramp: {bench.ramp['rate']:g} req/s, +{bench.ramp['step']:g} every "
        f"{bench.ramp['step_seconds']:g} s, stopped after the first step breaking the SLA (p99 >= 100 ms, a failure, "
        "or under 90% of the step's rate achieved).",
        "",
        "| API (single flow) | highest rate within SLA, req/s | achieved req/s | p50 / p99 ms at that rate | "
        "ratio to ceiling | >= 70%? | CPU server / Locust / machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario in ("ping", *SINGLE_APIS):
        summary = bench.runs.get(f"ramp-{scenario}")
        if summary is None:
            continue
        best, phase = summary["highest_rate_within_sla"], _best_phase(summary)
        ratio = (best or 0.0) / ceiling if ceiling else 0.0
        stats = phase["stats"] if phase else None
        lines.append(
            f"| {scenario} | {best or 0:g} | {_ms(stats and stats['rate'])} | "
            f"{_ms(stats and stats['p50'])} / {_ms(stats and stats['p99'])} | "
            f"{'ceiling' if scenario == 'ping' else f'{ratio:.0%}'} | "
            f"{'-' if scenario == 'ping' else ('yes' if ratio >= TARGET_RATIO else 'no')} | {_cpu(summary)} |"
        )
    return lines


def steady_and_bulk_tables(bench: Bench) -> list[str]:
    steady = [(name, bench.runs[f"steady-{name}"]) for name in SINGLE_APIS if f"steady-{name}" in bench.runs]
    bulk = [(key, summary) for key, summary in bench.runs.items() if key.startswith("bulk-")]
    lines: list[str] = []
    if steady:
        lines += [
            "",
            "Steady 200 req/s, single flow (target: no failure, p99 <= 50 ms, aim <= 20 ms):",
            "",
            "| API | achieved req/s | requests | failures | p50 ms | p95 ms | p99 ms | max ms | verdict | "
            "CPU server / Locust / machine |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for scenario, summary in steady:
        o = summary["overall"]
        meets = o["failures"] == 0 and o["p99"] <= 50
        lines.append(
            f"| {scenario} | {o['rate']:.1f} | {o['requests']:,} | {o['failures']:,} | {_ms(o['p50'])} | "
            f"{_ms(o['p95'])} | {_ms(o['p99'])} | {_ms(o['max'])} | {'meets' if meets else 'misses'} target | "
            f"{_cpu(summary)} |"
        )
    if bulk:
        lines += [
            "",
            f"Bulk, closed loop, 1,000 flows per request (targets: >= {TARGET_BULK_FLOWS_PER_S:,} flows/s; "
            f">= {TARGET_BULK_MODEL_RATIO:.0%} of the model alone, measured in this run at batch {HOT_PATH_BATCH:,}):",
            "",
            "| scenario | users | flows/s | model alone flows/s (before / after) | API / model (mean) | req/s | "
            "failures | p50 ms | p99 ms | CPU server / Locust / machine |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for key, summary in bulk:
        o = summary["overall"]
        alone = bench.model_alone.get(key)
        ratio = "-" if alone is None else f"{o['flows_per_second'] / statistics.mean(alone):.0%}"
        lines.append(
            f"| {summary['run']['scenario']} | {summary['run']['options']['users']} | {o['flows_per_second']:,.0f} | "
            f"{'-' if alone is None else f'{alone[0]:,.0f} / {alone[1]:,.0f}'} | {ratio} | {o['rate']:.1f} | "
            f"{o['failures']:,} | "
            f"{_ms(o['p50'])} | {_ms(o['p99'])} | {_cpu(summary)} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark a running service instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: pid of its `bentoml serve`, for CPU figures")
    parser.add_argument("--service", default=DEFAULT_SERVICE)
    parser.add_argument("--working-dir", type=Path, default=REPO, help="where `bentoml serve` runs")
    parser.add_argument("--start-rate", type=float, default=100)
    parser.add_argument("--step", type=float, default=100)
    parser.add_argument("--step-seconds", type=float, default=8)
    parser.add_argument("--steady-seconds", type=float, default=30)
    parser.add_argument("--bulk-seconds", type=float, default=20)
    parser.add_argument("--bulk-users", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--only", choices=("ramp", "steady", "bulk"), nargs="+", default=["ramp", "steady", "bulk"])
    args = parser.parse_args()
    directory = RESULTS / "benchmarks" / f"served-{datetime.now():%Y%m%d-%H%M%S}"
    ramp = {"rate": args.start_rate, "step": args.step, "step_seconds": args.step_seconds, "max_rate": 5000.0}
    bench = Bench(directory, ramp, args.steady_seconds, args.bulk_seconds)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    ceiling_source = "the `ping` API of the same service process"
    try:
        with target(args.url, args.server_pid, args.service, directory / "server.log", args.working_dir) as (
            url,
            pid,
            service,
        ):
            own_ping, served = has_ping(url), service
            # steady first: the batcher of a freshly started process, not one just pushed past saturation
            if "steady" in args.only:
                for scenario in ("detect_threat", "classify_attack"):
                    bench.steady_run(scenario, url, pid, service)
            if "ramp" in args.only:
                if own_ping:
                    bench.ramp_run("ping", url, pid, service)
                for scenario in SINGLE_APIS:
                    bench.ramp_run(scenario, url, pid, service)
            if "bulk" in args.only:
                for scenario in BULK_SCENARIOS:
                    for users in args.bulk_users:
                        bench.bulk_run(scenario, url, pid, service, users)
        if "ramp" in args.only and not own_ping:
            ceiling_source = f"the service has no `ping` API: {PING_SERVICE}, started right after on this machine"
            with target(None, None, PING_SERVICE, directory / "ping-server.log") as (url, pid, service):
                bench.ramp_run("ping", url, pid, service)
    except RunError as exc:
        print(f"benchmark not run: {exc}", file=sys.stderr)
        return 2
    text = f"Served benchmark, {started}, git {git_version()}, {served}.\n\n" + report(bench, ceiling_source)
    print(text)
    (directory / "report.md").write_text(text, encoding="utf-8")
    document = {"runs": bench.runs, "model_alone_flows_per_second": bench.model_alone}
    (directory / "runs.json").write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    print(f"results: {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
