"""Run one load-test scenario end to end: `python -m loadtest.run SCENARIO [--shape steady|ramp|spike|closed]`.

Starts the service (`bentoml serve service:NIDSService` on a free 127.0.0.1 port, waits for /readyz) unless
--url names a running one, runs Locust headless for a bounded time (one process, FastHttpUser), samples the CPU
of the server's process tree and of Locust, and writes into loadtest/results/<time>-<scenario>-<shape>/:
Locust's CSV and HTML reports, every request (requests.csv), the phases, summary.md and summary.json.
Exit status: 0 when the run meets the SLA (p99 < 100 ms, no failed request, target rate reached; for a ramp:
its first step does), 1 when it does not, 2 when the run could not be made. See docs/loadtest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from loadtest.scenarios import SCENARIOS
from loadtest.shapes import add_shape_options, schedule, total_seconds
from loadtest.summary import PHASE_LOG, REQUEST_LOG, Verdict, summarise

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "loadtest" / "results"
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_SERVICE = "service:NIDSService"
READY_TIMEOUT_S = 180.0
SAMPLE_EVERY_S = 0.5


class RunError(RuntimeError):
    """The run could not be made (service did not start, Locust crashed): exit status 2."""


def parse_duration(text: str) -> float:
    """Locust-style durations: '30s', '2m', '1h30m', '1m30s' or plain seconds ('45')."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"duration {text!r}: use e.g. 30s, 2m, 1m30s")
    return sum(float(number) * {"h": 3600, "m": 60, "s": 1}[unit] for number, unit in parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RunError(f"the service exited with status {process.returncode} before it was ready")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{url}/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RunError(f"{url}/readyz did not answer 200 within {timeout:.0f} s")


@contextlib.contextmanager
def serve(target: str, log_file: Path, working_dir: Path = REPO) -> Iterator[tuple[str, int]]:
    """`bentoml serve TARGET` on a free 127.0.0.1 port, run in `working_dir`; yields (url, pid)."""
    port = free_port()
    command = [
        sys.executable, "-m", "bentoml", "serve", target, "--working-dir", str(working_dir),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=working_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process)
            yield url, process.pid
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    """SIGTERM a process started in a session of its own and its whole group; SIGKILL after `seconds`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tree_cpu_seconds(root: psutil.Process) -> tuple[float, int]:
    """User + system CPU seconds of a process and all its descendants, and how many processes that is."""
    total, count = 0.0, 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = process.cpu_times()
                total += times.user + times.system
                count += 1
    return total, count


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


@dataclass(frozen=True)
class CpuSample:
    at: float  # epoch seconds
    server: float | None
    server_processes: int
    locust: float
    machine: float


class CpuSampler(threading.Thread):
    """Samples CPU seconds of the server tree, Locust and the whole machine every SAMPLE_EVERY_S seconds."""

    def __init__(self, server_pid: int | None, locust_pid: int) -> None:
        super().__init__(daemon=True)
        self.server = psutil.Process(server_pid) if server_pid else None
        self.locust = psutil.Process(locust_pid)
        self.samples: list[CpuSample] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(psutil.NoSuchProcess):
                server, processes = _tree_cpu_seconds(self.server) if self.server else (None, 0)
                times = self.locust.cpu_times()
                self.samples.append(
                    CpuSample(time.time(), server, processes, times.user + times.system, _machine_busy_seconds())
                )
            self.stopped.wait(SAMPLE_EVERY_S)

    def usage(self, start: float, end: float) -> dict[str, Any]:
        """Average CPU between the samples nearest inside [start, end]: % of one core per process, machine %."""
        inside = [sample for sample in self.samples if start <= sample.at <= end] or self.samples
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        wall = last.at - first.at
        cores = psutil.cpu_count() or 1

        def entry(before: float, after: float, processes: int) -> dict[str, Any]:
            return {
                "percent": 100 * (after - before) / wall,
                "cpu_seconds": after - before,
                "wall_seconds": wall,
                "processes": processes,
            }

        return {
            "server": None
            if first.server is None or last.server is None
            else entry(first.server, last.server, last.server_processes),
            "locust": entry(first.locust, last.locust, 1),
            "machine_percent": 100 * (last.machine - first.machine) / (wall * cores),
            "cores": cores,
        }


def git_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


@dataclass(frozen=True)
class LoadOptions:
    scenario: str
    shape: str = "steady"
    rate: float = 200.0
    step: float = 100.0
    step_seconds: float = 10.0
    max_rate: float = 3000.0
    spike_factor: float = 5.0
    users: int = 4
    per_user_rate: float = 10.0
    run_time: float | None = None  # None: the shape's own length (+ a margin), or 30 s for open-ended shapes

    def bounded_run_time(self) -> float:
        if self.run_time is not None:
            return self.run_time
        length = total_seconds(self.phases())
        return 30.0 if length is None else length + 2.0

    def phases(self) -> list[Any]:
        return schedule(
            self.shape,
            rate=self.rate,
            step=self.step,
            step_seconds=self.step_seconds,  # type: ignore[arg-type]
            max_rate=self.max_rate,
            spike_factor=self.spike_factor,
            users=self.users,
            per_user_rate=self.per_user_rate,
        )

    def locust_args(self) -> list[str]:
        return [
            "--scenario", self.scenario, "--shape", self.shape, "--rate", f"{self.rate:g}", "--step", f"{self.step:g}",
            "--step-seconds", f"{self.step_seconds:g}", "--max-rate", f"{self.max_rate:g}",
            "--spike-factor", f"{self.spike_factor:g}", "--closed-users", str(self.users),
            "--per-user-rate", f"{self.per_user_rate:g}",
        ]  # fmt: skip


def run_locust(
    options: LoadOptions, url: str, directory: Path, *, server_pid: int | None, service: str
) -> tuple[Verdict, str, dict[str, Any]]:
    """One bounded headless Locust run against `url`; returns the verdict, the Markdown summary and the run record."""
    directory.mkdir(parents=True, exist_ok=True)
    run_time = options.bounded_run_time()
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
        "--run-time", f"{run_time:g}s", "--stop-timeout", "5", "--only-summary", "--loglevel", "WARNING",
        "--csv", str(directory / "locust"), "--csv-full-history", "--html", str(directory / "report.html"),
        "--results-dir", str(directory), *options.locust_args(),
    ]  # fmt: skip
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with (directory / "locust.log").open("wb") as log:
        locust = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        sampler = CpuSampler(server_pid, locust.pid)
        sampler.start()
        try:
            locust.wait(timeout=run_time + 120)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait()
            raise RunError(f"Locust did not stop within {run_time + 120:.0f} s") from None
        finally:
            sampler.stopped.set()
            sampler.join()
    if not (directory / REQUEST_LOG).is_file() or not (directory / PHASE_LOG).is_file():
        raise RunError(
            f"Locust exited with status {locust.returncode} without its logs: see {directory / 'locust.log'}"
        )
    phases = json.loads((directory / PHASE_LOG).read_text(encoding="utf-8"))
    cpu = sampler.usage(phases[0]["start"], phases[-1]["end"]) if phases else {}
    scenario = SCENARIOS[options.scenario]
    run = {
        "scenario": options.scenario,
        "scenario_description": scenario.description,
        "path": scenario.path,
        "shape": options.shape,
        "options": options.__dict__,
        "url": url,
        "service": service,
        "started": started,
        "git": git_version(),
        "command": shlex.join(["python", "-m", "loadtest.run", *sys.argv[1:]]),
        "cpu": cpu,
    }
    verdict, markdown = summarise(directory, run)
    return verdict, markdown, run


def results_dir(scenario: str, shape: str) -> Path:
    return RESULTS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{scenario}-{shape}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--url", help="target a running service (e.g. http://10.0.0.5:3000) instead of starting one")
    p.add_argument("--server-pid", type=int, help="with --url on this machine: pid of `bentoml serve`, for its CPU")
    p.add_argument("--service", default=DEFAULT_SERVICE, help="what `bentoml serve` starts when --url is not given")
    p.add_argument("--working-dir", type=Path, default=REPO, help="where `bentoml serve` runs (default: the repo)")
    p.add_argument("-t", "--run-time", help="bound of the run (30s, 2m); default 30s, or the shape's length")
    add_shape_options(p)
    p.add_argument("--users", type=int, default=4, help="closed shape: concurrent users")
    p.add_argument("--out", type=Path, help="results directory (default loadtest/results/<time>-<scenario>-<shape>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = LoadOptions(
        scenario=args.scenario, shape=args.shape, rate=args.rate, step=args.step, step_seconds=args.step_seconds,
        max_rate=args.max_rate, spike_factor=args.spike_factor, users=args.users, per_user_rate=args.per_user_rate,
        run_time=None if args.run_time is None else parse_duration(args.run_time),
    )  # fmt: skip
    directory = args.out or results_dir(args.scenario, args.shape)
    try:
        if args.url:
            url = args.url.rstrip("/")
            wait_ready(url, None, timeout=10)
            verdict, markdown, _ = run_locust(options, url, directory, server_pid=args.server_pid, service="given URL")
        else:
            with serve(args.service, directory / "server.log", args.working_dir) as (url, pid):
                verdict, markdown, _ = run_locust(
                    options,
                    url,
                    directory,
                    server_pid=pid,
                    service=f"started by the runner: bentoml serve {args.service}",
                )
    except RunError as exc:
        print(f"load test not run: {exc}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"results: {directory}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
