"""Statistics of a load-test run and its verdict against the SLA, from the per-request log the locustfile writes.

The log holds every request (start time, response time, success, flows carried), so percentiles are exact
(Locust's own CSV rounds response times into buckets) and can be cut along the phases of the load shape.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.scenarios import SLA_MS

REQUEST_LOG = "requests.csv"
PHASE_LOG = "phases.json"
REQUEST_LOG_HEADER = ("start", "ms", "ok", "flows")
# a phase whose achieved rate is below this share of its target did not get the load it was meant to test
SUSTAINED_SHARE = 0.9


@dataclass(frozen=True)
class RequestLog:
    start: np.ndarray  # seconds since the epoch at which each request was sent
    ms: np.ndarray  # response time, milliseconds
    ok: np.ndarray  # bool
    flows: np.ndarray  # flows carried by each request

    @classmethod
    def read(cls, path: Path) -> RequestLog:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows or tuple(rows[0]) != REQUEST_LOG_HEADER:
            raise ValueError(f"{path}: not a request log (header {REQUEST_LOG_HEADER})")
        return cls.from_rows(rows[1:])

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float | int | str]]) -> RequestLog:
        """From (start, ms, ok, flows) rows."""
        data = np.array(rows, dtype=np.float64).reshape(-1, len(REQUEST_LOG_HEADER))
        return cls(start=data[:, 0], ms=data[:, 1], ok=data[:, 2].astype(bool), flows=data[:, 3])

    def window(self, start: float, end: float) -> RequestLog:
        mask = (self.start >= start) & (self.start < end)
        return RequestLog(self.start[mask], self.ms[mask], self.ok[mask], self.flows[mask])


@dataclass(frozen=True)
class LatencyStats:
    requests: int
    failures: int
    seconds: float
    rate: float  # requests per second
    flows_per_second: float  # flows of successful requests
    p50: float
    p95: float
    p99: float
    max: float

    def within_sla(self, sla_ms: float = SLA_MS) -> bool:
        return self.requests > 0 and self.failures == 0 and self.p99 < sla_ms


def percentile(ms: np.ndarray, q: float) -> float:
    """Nearest-rank percentile (a value that was actually observed; never interpolated downwards)."""
    if ms.size == 0:
        return math.nan
    return float(np.percentile(ms, q, method="inverted_cdf"))


def latency_stats(log: RequestLog, seconds: float) -> LatencyStats:
    """Stats of every request in `log` (failed ones included in the percentiles) over `seconds` of load."""
    seconds = max(seconds, 1e-9)
    return LatencyStats(
        requests=int(log.ms.size),
        failures=int((~log.ok).sum()),
        seconds=seconds,
        rate=log.ms.size / seconds,
        flows_per_second=float(log.flows[log.ok].sum()) / seconds,  # flows answered, not merely sent
        p50=percentile(log.ms, 50),
        p95=percentile(log.ms, 95),
        p99=percentile(log.ms, 99),
        max=float(log.ms.max()) if log.ms.size else math.nan,
    )


@dataclass(frozen=True)
class PhaseResult:
    name: str
    target_rate: float | None
    users: int
    stats: LatencyStats

    @property
    def sustained(self) -> bool:
        """The achieved rate reached SUSTAINED_SHARE of the target (always true for closed-loop phases)."""
        return self.target_rate is None or self.stats.rate >= SUSTAINED_SHARE * self.target_rate

    @property
    def within_sla(self) -> bool:
        return self.stats.within_sla() and self.sustained


def phase_result(log: RequestLog, phase: dict[str, Any]) -> PhaseResult:
    """Stats of the requests sent during `phase` (a dict with name, rate, users, start, end in epoch seconds)."""
    return PhaseResult(
        name=phase["name"],
        target_rate=phase["rate"],
        users=phase["users"],
        stats=latency_stats(log.window(phase["start"], phase["end"]), phase["end"] - phase["start"]),
    )


def phase_results(log: RequestLog, phases: list[dict[str, Any]]) -> list[PhaseResult]:
    return [phase_result(log, phase) for phase in phases]


def highest_rate_within_sla(results: list[PhaseResult]) -> PhaseResult | None:
    """Last phase of the ramp's unbroken run of phases within the SLA (None when the first already breaks it)."""
    best = None
    for result in results:
        if not result.within_sla:
            break
        best = result
    return best


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def verdict(shape: str, overall: LatencyStats, results: list[PhaseResult], sla_ms: float = SLA_MS) -> Verdict:
    """Pass/fail of a run.

    steady, spike, closed: every request succeeded, p99 < SLA over the whole run, and every paced phase
    reached its target rate. ramp: the ramp exists to find where the SLA breaks, so it passes when at least
    its first step is within the SLA; the highest step within the SLA is its result.
    """
    reasons: list[str] = []
    if overall.requests == 0:
        return Verdict(False, ["no request was completed"])
    if shape == "ramp":
        if highest_rate_within_sla(results) is None:
            reasons.append(f"the first step ({results[0].name}) already breaks the SLA" if results else "no step ran")
        return Verdict(not reasons, reasons)
    if overall.failures:
        reasons.append(f"{overall.failures} of {overall.requests} requests failed")
    if not overall.p99 < sla_ms:
        reasons.append(f"p99 {overall.p99:.1f} ms >= SLA {sla_ms:g} ms")
    reasons.extend(
        f"{result.name}: achieved {result.stats.rate:.1f} req/s, below {SUSTAINED_SHARE:.0%} of the target"
        for result in results
        if not result.sustained
    )
    return Verdict(not reasons, reasons)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _target(rate: float | None) -> str:
    return "closed loop" if rate is None else f"{rate:g}"


def _row(name: str, target: str, stats: LatencyStats) -> str:
    return (
        f"| {name} | {target} | {stats.rate:.1f} | {stats.flows_per_second:,.0f} | {stats.requests:,} | "
        f"{stats.failures:,} | {_ms(stats.p50)} | {_ms(stats.p95)} | {_ms(stats.p99)} | {_ms(stats.max)} |"
    )


def _cpu_text(cpu: dict[str, Any]) -> list[str]:
    lines = []
    for role, label in (("server", "server (process tree)"), ("locust", "load generator (Locust, 1 process)")):
        entry = cpu.get(role)
        if entry is None:
            lines.append(f"- {label}: not measured (no local process id)")
        else:
            lines.append(
                f"- {label}: {entry['percent']:.0f}% of one core on average "
                f"({entry['cpu_seconds']:.1f} CPU s over {entry['wall_seconds']:.1f} s, {entry['processes']} processes)"
            )
    if "machine_percent" in cpu:
        lines.append(f"- whole machine: {cpu['machine_percent']:.0f}% busy of {cpu['cores']} cores")
        if cpu.get("server") is not None:
            other = cpu["machine_percent"] * cpu["cores"] - cpu["server"]["percent"] - cpu["locust"]["percent"]
            lines.append(f"- other processes on the machine: {max(other, 0.0):.0f}% of one core (noise in the figures)")
    return lines


def render_markdown(run: dict[str, Any], overall: LatencyStats, results: list[PhaseResult], result: Verdict) -> str:
    """The human summary of a run: verdict, one row per phase plus the whole run, CPU use, files."""
    lines = [
        f"# Load test: {run['scenario']} ({run['shape']})",
        "",
        f"- scenario: {run['scenario_description']} -> `POST {run['path']}`",
        f"- target: {run['url']} ({run['service']})",
        f"- started {run['started']}, git {run['git']}, command: `{run['command']}`",
        f"- verdict: **{'PASS' if result.passed else 'FAIL'}**"
        + ("" if result.passed else " - " + "; ".join(result.reasons)),
    ]
    if run["shape"] == "ramp":
        best = highest_rate_within_sla(results)
        lines.append(
            "- highest step within the SLA (p99 < 100 ms, no failure, rate sustained): "
            + ("none" if best is None else f"**{best.target_rate:g} req/s** (achieved {best.stats.rate:.1f} req/s)")
        )
    lines += [
        "",
        "| phase | target req/s | achieved req/s | flows/s | requests | failures | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in results:
        mark = "" if phase.within_sla or run["shape"] != "ramp" else " (breaks SLA)"
        lines.append(_row(phase.name + mark, _target(phase.target_rate), phase.stats))
    lines.append(_row("**whole run**", "-", overall))
    lines += [
        "",
        "CPU during the run:",
        *_cpu_text(run["cpu"]),
        "",
        "Files in this directory: "
        "`locust_stats.csv`, `locust_stats_history.csv`, `locust_failures.csv`, `report.html` (Locust), "
        f"`{REQUEST_LOG}` (every request), `{PHASE_LOG}`, `summary.json`.",
    ]
    return "\n".join(lines) + "\n"


def summarise(directory: Path, run: dict[str, Any]) -> tuple[Verdict, str]:
    """Read the logs in `directory`, write summary.md and summary.json there; the verdict and the Markdown."""
    log = RequestLog.read(directory / REQUEST_LOG)
    phases = json.loads((directory / PHASE_LOG).read_text(encoding="utf-8"))
    results = phase_results(log, phases)
    seconds = (phases[-1]["end"] - phases[0]["start"]) if phases else 0.0
    overall = latency_stats(log, seconds)
    result = verdict(run["shape"], overall, results)
    markdown = render_markdown(run, overall, results, result)
    (directory / "summary.md").write_text(markdown, encoding="utf-8")
    document = {
        "run": run,
        "verdict": asdict(result),
        "overall": asdict(overall),
        "phases": [{**asdict(r), "sustained": r.sustained, "within_sla": r.within_sla} for r in results],
    }
    best = highest_rate_within_sla(results)
    document["highest_rate_within_sla"] = None if best is None else best.target_rate
    (directory / "summary.json").write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    return result, markdown
