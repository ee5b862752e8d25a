"""A real `bentoml serve service:NIDSService` subprocess on an ephemeral 127.0.0.1 port.

Each test module starts at most one server (module-scoped fixtures) and the teardown stops its whole
process group; the suite runs on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"
STARTUP_SECONDS = 90


@dataclass(frozen=True)
class Server:
    url: str
    log: Path
    pid: int  # of the `bentoml serve` process, the parent of its workers

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_store(home: Path, target: Path) -> Path:
    """A private copy of the session's model store (only the models)."""
    shutil.copytree(home / "models", target / "models")
    return target


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(check: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Poll `check` until it returns something true (returned), or fail after `seconds` (generous: a loaded machine)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"not true within {seconds} s")


def logged_predictions(http: httpx.Client, flow_ids: set[str], seconds: float = 30.0) -> list[dict[str, Any]]:
    """The logged predictions of these flow ids (the log is written off the request path: polled until all are)."""

    def found() -> list[dict[str, Any]]:
        rows = [p for p in http.get("/api/v1/predictions", params={"limit": 1000}).json() if p["flow_id"] in flow_ids]
        return rows if len(rows) == len(flow_ids) else []

    return wait_for(found, seconds)


def _warming_up(server: Server) -> bool:
    """Whether the warm-up (nids.serving.warmup) is all that keeps the server unready: tests start once it is done,
    or once something else is wrong too (a test of an unready server)."""
    response = httpx.get(f"{server.url}/readyz", timeout=10)
    return response.status_code == 503 and response.json().get("error", "").startswith("warming up")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """serve(home, **env) -> Server once /livez answers and its warm-up is done; every server started is stopped at
    module end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(home: Path, **env: str) -> Server:
        port = free_port()
        workdir = tmp_path_factory.mktemp("server")
        log = workdir / "server.log"
        environment = {
            **os.environ,
            "BENTOML_HOME": str(home),
            "NIDS_DATA_DIR": str(workdir / "var"),
            "NIDS_HEALING_POLICY_FILE": str(REPO / "config" / "healing.yaml"),
            "NIDS_WORKERS": "1",  # one process per test server, whatever the machine; test_workers.py asks for 2
            # `make test` runs several servers at once on 2 cores: a log writer at idle priority would wait for spare
            # CPU the suite seldom leaves (the idle priority itself: tests/observability/test_process.py)
            "NIDS_PREDICTION_LOG_PRIORITY": "normal",
            **env,
        }
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(BENTOML), "serve", "service:NIDSService", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO,
                env=environment,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(process)
        server = Server(url=f"http://127.0.0.1:{port}", log=log, pid=process.pid)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"bentoml serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/livez", timeout=2).status_code == 200 and not _warming_up(server):
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"bentoml serve did not answer /livez within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")

    yield start
    for process in processes:
        _stop(process)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    """A client of the module's `server` fixture."""
    with server.client() as client:
        yield client
