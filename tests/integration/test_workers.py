"""Several workers: they share one audit log (its rate limits hold for the whole service, not per process), and
connections are spread over them."""

from __future__ import annotations

import array
import http.client
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nids.serving.balance import BOARD_FILE
from nids.serving.rundir import server_dir

from .conftest import STARTUP_SECONDS, Server, wait_for

pytestmark = [pytest.mark.integration]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
THREAT_BODY = json.loads((FIXTURES / "detect_threat.json").read_text())
SENSOR_TOKEN = "workers-sensor-token"  # rate limits count (and limit) only callers authorised to enforce


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    return serve(model_store.home, NIDS_WORKERS="2", NIDS_SENSOR_TOKEN=SENSOR_TOKEN)


def test_two_workers_serve_and_share_the_restart_rate_limit(server: Server) -> None:
    """config/healing.yaml allows 1 restart_service per 300 s: across every request, whichever worker takes it."""
    started = {f"[entry_service:nids:{worker}] Service nids initialized" for worker in (1, 2)}
    deadline = time.monotonic() + STARTUP_SECONDS  # /livez answers once the first worker is up
    while not all(line in server.log.read_text() for line in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(line in server.log.read_text() for line in started), "both workers start"
    actions = []
    for _ in range(8):  # a fresh connection each time, so both workers take requests
        assert httpx.post(f"{server.url}/detect_threat", json=THREAT_BODY).status_code == 200
        response = httpx.post(
            f"{server.url}/self_heal",
            json={"events": [{"attack_type": "DDoS", "confidence": 0.99}]},
            headers={"authorization": f"Bearer {SENSOR_TOKEN}"},
        )
        assert response.status_code == 200, response.text
        actions.extend(response.json())
    assert [action["action_type"] for action in actions].count("restart_service") == 1
    assert all(
        "rate limit of restart_service reached" in a["reason"] for a in actions if a["action_type"] != "restart_service"
    )


def test_keep_alive_connections_are_spread_over_the_workers(server: Server) -> None:
    """Two clients that keep their connection open, one connecting after the other, are served by two workers
    (nids.serving.balance): before, both usually landed on the worker that woke first."""
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(THREAT_BODY).encode()
    for _ in range(5):
        connections = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(2)]
        ports = []
        for connection in connections:  # one after the other: the first is open and idle when the second connects
            connection.request("POST", "/detect_threat", body, {"Content-Type": "application/json"})
            assert connection.getresponse().read() and connection.sock is not None
            ports.append(connection.sock.getsockname()[1])
        for connection in connections:
            connection.close()
        wait_for(lambda: not any(open_connections(server)))  # the workers saw both closed: the next pair is new
        workers = {_worker_of(server, client_port) for client_port in ports}
        assert len(workers) == 2, f"connections from ports {ports} served by workers {workers}"


def open_connections(server: Server) -> array.array[int]:
    """The open-connection count each worker published on its server's board (nids.serving.balance)."""
    return array.array("i", (server_dir(server_pid=server.pid) / BOARD_FILE).read_bytes())


def _worker_of(server: Server, client_port: int) -> str:
    """The worker that logged a request from this client port (BentoML's access log names it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = re.findall(rf"\[entry_service:nids:(\d+)\] 127\.0\.0\.1:{client_port} ", server.log.read_text())
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no request from port {client_port} in the server log")
