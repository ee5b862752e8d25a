"""Soak benchmark: `python -m benchmarks.soak [--minutes 10] [--rate 200] [--scenario S] [--url URL --server-pid PID]`.

Steady mixed traffic for a long run: by default the `mixed_apis` scenario, `detect_threat` and `classify_attack`
single flows and `analyze` requests of 1-4 held-out flows (threat and attack mixed, so every third request also
decides and audits self-healing actions) in turn; `--scenario analyze` soaks the heaviest API alone. The
resident memory of the whole `bentoml serve` process tree is sampled every few seconds. Passes with 0 failed
requests and the memory at the end within 10% of the memory after the first minute (the warm-up); the latency
and the achieved rate are reported (Locust's verdict against the 100 ms SLA) but are not the soak's criteria.
Not a CI test: it takes its full length. Prints Markdown; Locust's results are kept under
loadtest/results/benchmarks/soak-<time>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from datetime import UTC, datetime

import psutil

from benchmarks.served import target
from loadtest.run import RESULTS, LoadOptions, RunError, run_locust

SAMPLE_SECONDS = 5.0
WARM_UP_SECONDS = 60.0
MEMORY_TOLERANCE = 0.10


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its children (the server and its workers)."""
    root = psutil.Process(pid)
    total = 0
    for process in (root, *root.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def sample(pid: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    started = datetime.now(UTC).timestamp()
    while not stop.wait(SAMPLE_SECONDS):
        samples.append((datetime.now(UTC).timestamp() - started, tree_rss(pid)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument(
        "--scenario", default="mixed_apis", help="loadtest scenario (default: detect_threat, classify_attack, analyze)"
    )
    parser.add_argument("--url", help="soak a running service instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: pid of its `bentoml serve`, for memory")
    args = parser.parse_args(argv)
    directory = RESULTS / "benchmarks" / f"soak-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    options = LoadOptions(scenario=args.scenario, shape="steady", rate=args.rate, run_time=args.minutes * 60)
    samples: list[tuple[float, int]] = []
    try:
        with target(args.url, args.server_pid, "service:NIDSService", directory / "server.log") as (
            url,
            pid,
            where,
        ):
            if pid is None:
                raise RunError("memory needs the server's pid: give --server-pid with --url")
            stop = threading.Event()
            sampler = threading.Thread(target=sample, args=(pid, stop, samples), daemon=True)
            sampler.start()
            verdict, markdown, _ = run_locust(options, url, directory, server_pid=pid, service=where)
            stop.set()
            sampler.join()
    except RunError as error:
        print(f"soak not run: {error}", file=sys.stderr)
        return 2
    warm = next(rss for seconds, rss in samples if seconds >= WARM_UP_SECONDS)
    end = samples[-1][1]
    growth = end / warm - 1
    overall = json.loads((directory / "summary.json").read_text())["overall"]
    passed = overall["requests"] > 0 and overall["failures"] == 0 and growth <= MEMORY_TOLERANCE
    report = {
        "minutes": args.minutes,
        "rate": args.rate,
        "memory_after_warm_up_mb": round(warm / 2**20, 1),
        "memory_at_end_mb": round(end / 2**20, 1),
        "memory_growth": round(growth, 4),
        "requests": overall["requests"],
        "failures": overall["failures"],
        "p99_ms": overall["p99"],
        "sla_verdict": {"passed": verdict.passed, "reasons": verdict.reasons},
        "passed": passed,
        "samples": [(round(seconds), rss) for seconds, rss in samples],
    }
    (directory / "soak.json").write_text(json.dumps(report, indent=2))
    print(markdown)
    print(
        f"\nServer memory (process tree RSS): {report['memory_after_warm_up_mb']} MB after the first minute, "
        f"{report['memory_at_end_mb']} MB at the end ({growth:+.1%}; limit +{MEMORY_TOLERANCE:.0%}); "
        f"{overall['failures']} failures in {overall['requests']:,} requests. "
        f"{'PASS' if passed else 'FAIL'}. Results: {directory}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
