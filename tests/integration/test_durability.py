"""An action returned to a caller is durable: SIGKILL `bentoml serve` under load, restart, every id is in the log.

About 200 requests per second of `self_heal` and `analyze` (loopback, a few seconds), the whole process group
killed with SIGKILL in the middle, the service started again on the same audit log (SQLite file, then
PostgreSQL with private tables). Requests cut by the kill may fail; every action id any caller received must be
in the audit log, and the restarted service must show it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.healing.conftest import PG_URL, drop_tables, postgres_reachable

from .conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.long_running]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ATTACK_FLOW: dict[str, Any] = json.loads((FIXTURES / "original_attack_flow.json").read_text())
CLIENTS = 4
RATE_PER_CLIENT = 50  # 200 requests per second in all
KILL_AFTER_ACTIONS = 100  # the crash comes once callers received this many actions, however fast the machine


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {"NIDS_HEALING_AUDIT_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}"}
        return
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    prefix = f"dur_{uuid.uuid4().hex[:8]}_"
    yield {"NIDS_HEALING_AUDIT_URL": PG_URL, "NIDS_HEALING_AUDIT_TABLE_PREFIX": prefix}
    drop_tables(prefix)


def recorded_ids(env: dict[str, str]) -> set[str]:
    """Every action id in the audit log, read from the database itself."""
    url = env["NIDS_HEALING_AUDIT_URL"]
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return {row[0] for row in conn.execute("SELECT action_id FROM healing_actions")}
    import psycopg

    with psycopg.connect(url) as conn:
        table = f"{env['NIDS_HEALING_AUDIT_TABLE_PREFIX']}actions"
        return {row[0] for row in conn.execute(f"SELECT action_id FROM {table}")}


def kill_server(server: Server) -> None:
    """SIGKILL the process group listening on the server's port (bentoml serve and its workers)."""
    port = int(server.url.rsplit(":", 1)[1])
    (listener,) = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
    os.killpg(os.getpgid(listener), signal.SIGKILL)


def load(server: Server, stop: threading.Event, client_index: int, received: list[str], failures: list[str]) -> None:
    """One client: alternate self_heal and analyze at RATE_PER_CLIENT per second until `stop`."""
    period = 1.0 / RATE_PER_CLIENT
    with httpx.Client(base_url=server.url, timeout=10) as http:
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            n += 1
            source = f"198.51.{client_index}.{n % 250 + 1}"
            try:
                if n % 2:
                    event = {"attack_type": "PortScan", "confidence": 0.9, "src_ip": source}
                    response = http.post("/self_heal", json={"events": [event]})
                    ids = [action["action_id"] for action in response.json()] if response.status_code == 200 else []
                else:
                    response = http.post("/analyze", json={"flows": [{**ATTACK_FLOW, "src_ip": source}]})
                    results = response.json()["results"] if response.status_code == 200 else []
                    ids = [r["self_healing_action"]["action_id"] for r in results if r["self_healing_action"]]
                received.extend(ids)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            except (httpx.TransportError, ValueError) as error:  # cut by the kill
                failures.append(type(error).__name__)
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))


def test_every_action_a_caller_received_survives_sigkill(
    model_store: Any, serve: Callable[..., Server], audit_env: dict[str, str]
) -> None:
    server = serve(model_store.home, **audit_env)
    received: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=load, args=(server, stop, i, received, failures), daemon=True) for i in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 120
    while len(set(received)) < KILL_AFTER_ACTIONS:
        assert time.monotonic() < deadline, f"only {len(set(received))} actions; failures: {failures[:5]}"
        time.sleep(0.05)
    kill_server(server)  # mid-load: requests in flight are cut
    stop.set()
    for client in clients:
        client.join(15)

    answered = set(received)
    missing = answered - recorded_ids(audit_env)
    assert not missing, f"{len(missing)} of {len(answered)} actions returned to callers are not in the audit log"

    restarted = serve(model_store.home, **audit_env)
    with restarted.client() as http:
        for action_id in sorted(answered)[:20]:
            response = http.post("/healing_action", json={"action_id": action_id})
            assert response.status_code == 200, response.text
