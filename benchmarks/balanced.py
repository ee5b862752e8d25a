"""Balanced benchmark: `python -m benchmarks.balanced IMAGE [--seconds 15] [--users 16]`.

In one run on this machine, closed-loop throughput (each of `--users` clients sends its next request as soon as
the last was answered) of:
1. one replica of the image, direct;
2. one replica behind HAProxy (deploy/haproxy/haproxy.cfg): the balancer's own cost;
3. two replicas behind HAProxy.
for `detect_threat` with 1 flow and `analyze` with 100 flows. The replicas run with the host's network on
loopback ports (no port-publishing proxy in the path). Reports requests/s, flows/s, p50/p99, failures, the CPU
seconds of the load generator (this process), HAProxy and the replicas over each run, and how busy the whole
machine was (other work on a shared machine shows there). Prints Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import psutil

from benchmarks.replicas import REPO, Container, Outcome, closed, free_port, haproxy, start_container

FIXTURES = REPO / "tests" / "fixtures"


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    body: bytes
    flows: int


def workloads() -> list[Workload]:
    threat = json.loads((FIXTURES / "detect_threat.json").read_text())
    mixed = json.loads((FIXTURES / "analyze.json").read_text())["flows"] * 50
    return [
        Workload("detect_threat, 1 flow", "/detect_threat", json.dumps(threat).encode(), len(threat["flows"])),
        Workload("analyze, 100 flows", "/analyze", json.dumps({"flows": mixed}).encode(), len(mixed)),
    ]


def tree_cpu(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants (those still running)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class Result:
    setup: str
    workload: Workload
    seconds: float
    outcomes: list[Outcome]
    cpu: dict[str, float]
    machine_busy: float  # share of all cores' time not idle, everything on the machine included

    def row(self) -> str:
        ok = sorted(outcome.done - outcome.sent for outcome in self.outcomes if outcome.status == 200)
        failed = len(self.outcomes) - len(ok)
        rate = len(ok) / self.seconds

        def pct(q: float) -> str:
            return f"{ok[min(len(ok) - 1, int(q * len(ok)))] * 1000:.1f}" if ok else "-"

        cpu = " / ".join(f"{self.cpu[part]:.1f}" for part in ("generator", "haproxy", "replicas"))
        return (
            f"| {self.setup} | {self.workload.name} | {rate:,.0f} | {rate * self.workload.flows:,.0f} | {pct(0.5)} | "
            f"{pct(0.99)} | {failed} | {cpu} | {self.machine_busy:.0%} |"
        )


def measure(
    setup: str, url: str, workload: Workload, users: int, seconds: float, parts: dict[str, list[int]]
) -> Result:
    """One closed-loop run; parts: the PIDs whose process trees' CPU is reported, by part."""
    asyncio.run(closed(url, workload.path, workload.body, users, 2))  # warm-up: connections, caches, batching
    before = {part: tree_cpu(ids) for part, ids in parts.items()}
    generator = time.process_time()
    machine = psutil.cpu_times()
    start = time.monotonic()
    outcomes = asyncio.run(closed(url, workload.path, workload.body, users, seconds))
    elapsed = time.monotonic() - start
    cpu = {part: tree_cpu(ids) - before[part] for part, ids in parts.items()}
    cpu["generator"] = time.process_time() - generator
    after = psutil.cpu_times()
    total = sum(after) - sum(machine)
    idle = (after.idle + after.iowait) - (machine.idle + machine.iowait)
    return Result(setup, workload, elapsed, outcomes, cpu, 1 - idle / total if total else 0.0)


@contextmanager
def replicas(image: str, count: int) -> Iterator[list[Container]]:
    started: list[Container] = []
    try:
        for _ in range(count):
            started.append(start_container(image, host_network=True))
        yield started
    finally:
        for container in started:
            container.remove()


def run(image: str, users: int, seconds: float) -> list[Result]:
    results = []
    with ExitStack() as stack:
        first, second = stack.enter_context(replicas(image, 2))
        # HAProxy's second slot is a port nothing listens on: its health check keeps it out (one replica behind it)
        alone = stack.enter_context(haproxy([first.address, f"127.0.0.1:{free_port()}"]))
        both = stack.enter_context(haproxy([first.address, second.address]))
        for balancer, servers in ((alone, ("replica1",)), (both, ("replica1", "replica2"))):
            for server in servers:
                balancer.wait_status(server, "UP")
        alone.wait_status("replica2", "DOWN")
        for workload in workloads():
            setups = (
                ("1 replica, direct", first.url, {"haproxy": [], "replicas": [first.pid()]}),
                ("1 replica behind HAProxy", alone.url, {"haproxy": [alone.process.pid], "replicas": [first.pid()]}),
                (
                    "2 replicas behind HAProxy",
                    both.url,
                    {"haproxy": [both.process.pid], "replicas": [first.pid(), second.pid()]},
                ),
            )
            for setup, url, parts in setups:
                results.append(measure(setup, url, workload, users, seconds, parts))
    return results


def report(results: list[Result], image: str, users: int, seconds: float) -> str:
    lines = [
        f"Image `{image}`, {os.cpu_count()} cores, closed loop: {users} clients for {seconds:.0f} s per row "
        "(after 2 s of warm-up), load generator (httpx, asyncio) on the same machine.",
        "",
        "| setup | request | req/s | flows/s | p50 ms | p99 ms | failed | CPU s: generator / HAProxy / replicas "
        "| machine busy |",
        "|---|---|---|---|---|---|---|---|---|",
        *(result.row() for result in results),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="the image tag, e.g. the last line of `make container`")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--users", type=int, default=16)
    args = parser.parse_args()
    print(report(run(args.image, args.users, args.seconds), args.image, args.users, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
