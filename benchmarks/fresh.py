"""Fresh-server benchmark (issue 23, warm before ready): `python -m benchmarks.fresh [--runs 5] [--seconds 20]`.

Each run starts a fresh `bentoml serve service:NIDSService` (a data directory of its own: empty prediction log and
audit log), waits for /readyz 200 (loadtest.run.serve), and at once sends 200 req/s of single flows, `detect_threat`
then `classify_attack` (Locust, open loop, `--seconds` each), exactly as benchmarks.served's steady runs. The same
run is made with the warm-up (NIDS_WARM_UP_REQUESTS, default 64) and without (0), alternately, the order swapped
from one run to the next (this machine's speed drifts). Reported per run and API: the first 1,000 requests'
p50/p99, the rest's p99, failures, and the seconds from the start of `bentoml serve` to /readyz 200.
Prints Markdown; every Locust run keeps its results under loadtest/results/benchmarks/fresh-<time>/.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.served import Bench, _cpu, _ms
from loadtest.run import DEFAULT_SERVICE, RESULTS, RunError, git_version, serve
from loadtest.summary import REQUEST_LOG, RequestLog

APIS = ("detect_threat", "classify_attack")
FIRST = 1000


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def first_and_rest(directory: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Latencies (ms) of the run's first FIRST requests and of the rest, by start time; failures."""
    log = RequestLog.read(directory / REQUEST_LOG)
    ms = log.ms[np.argsort(log.start, kind="stable")]
    return ms[:FIRST], ms[FIRST:], int((~log.ok).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20, help="per API, at 200 req/s")
    parser.add_argument("--warm-up-requests", type=int, default=64, help="NIDS_WARM_UP_REQUESTS of the warm runs")
    args = parser.parse_args()
    directory = RESULTS / "benchmarks" / f"fresh-{datetime.now():%Y%m%d-%H%M%S}"
    bench = Bench(directory, {}, args.seconds, 0)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        "| run | warm-up | seconds to /readyz 200 | API | first 1,000: p50 / p99 ms | rest: p99 ms | failures | "
        "CPU server / Locust / machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        for run in range(1, args.runs + 1):
            modes = (args.warm_up_requests, 0) if run % 2 else (0, args.warm_up_requests)
            for requests in modes:
                with tempfile.TemporaryDirectory(prefix="nids-fresh-") as data:
                    os.environ.update({"NIDS_DATA_DIR": data, "NIDS_WARM_UP_REQUESTS": str(requests)})
                    began = time.monotonic()
                    log = directory / f"run{run}-warm{requests}" / "server.log"
                    with serve(DEFAULT_SERVICE, log) as (url, pid):
                        ready = time.monotonic() - began
                        for api in APIS:
                            key = f"run{run}-warm{requests}-{api}"
                            summary = bench.steady_run(api, url, pid, DEFAULT_SERVICE, key)
                            first, rest, failures = first_and_rest(directory / key)
                            lines.append(
                                f"| {run} | {requests or 'off'} | {ready:.1f} | {api} | "
                                f"{_ms(_percentile(first, 50))} / {_ms(_percentile(first, 99))} | "
                                f"{_ms(_percentile(rest, 99))} | {failures} | {_cpu(summary)} |"
                            )
                            print(lines[-1], file=sys.stderr, flush=True)
    except RunError as exc:
        print(f"benchmark not run: {exc}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    text = (
        f"Fresh servers, {started}, git {git_version()}, load average at the end {load[0]:.1f} / {load[1]:.1f}, "
        f"200 req/s single flow from /readyz 200, {args.seconds:g} s per API:\n\n" + "\n".join(lines) + "\n"
    )
    print(text)
    (directory / "report.md").write_text(text, encoding="utf-8")
    print(f"results: {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
