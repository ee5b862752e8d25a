"""Two replicas sharing one PostgreSQL prediction log, and a replica whose log database is down.

Replica A's statistics and live stream include what replica B predicted; a service whose log cannot be reached
answers predictions as before, counts what it could not log and says why the observability routes are off.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket

from ..healing.conftest import PG_URL, postgres_reachable
from .conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.long_running]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ATTACK_FLOW: dict[str, Any] = json.loads((FIXTURES / "original_attack_flow.json").read_text())
FAST = {"NIDS_PREDICTION_LOG_FLUSH_SECONDS": "0.1", "NIDS_REALTIME_POLL_SECONDS": "0.1"}


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def replicas(model_store: Any, serve: Callable[..., Server]) -> Iterator[tuple[Server, Server]]:
    if reason := postgres_reachable():
        pytest.skip(reason)
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    env = {**FAST, "NIDS_PREDICTION_LOG_URL": PG_URL, "NIDS_PREDICTION_LOG_TABLE_PREFIX": prefix}
    yield serve(model_store.home, **env), serve(model_store.home, **env)
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {prefix}predictions, {prefix}predictions_schema")


def test_a_replica_streams_and_counts_what_another_predicted(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    client = websocket.create_connection(a.url.replace("http://", "ws://") + "/ws/realtime", timeout=15)
    try:
        assert json.loads(client.recv())["type"] == "connection"
        flows = [{**ATTACK_FLOW, "flow_id": f"b-{i}", "src_ip": "203.0.113.50"} for i in range(3)]
        assert post(b, "/analyze", {"flows": flows}).status_code == 200
        seen = set()
        while len(seen) < 3:
            event = json.loads(client.recv())
            if event["type"] == "prediction":
                seen.add(event["flow_id"])
        assert seen == {"b-0", "b-1", "b-2"}
    finally:
        client.close()
    stats = httpx.get(a.url + "/api/v1/predictions/stats").json()
    assert stats["total_predictions"] == 3 and stats["attack_type_distribution"] == {"SSH-Patator": 3}
    assert post(a, "/analyze", {"flows": flows[:1]}).status_code == 200

    def both_counted() -> bool:
        return httpx.get(b.url + "/api/v1/predictions/stats").json()["total_predictions"] == 4

    from .test_observability import wait_for

    wait_for(both_counted)


def test_predictions_go_on_when_the_log_database_is_down(model_store: Any, serve: Callable[..., Server]) -> None:
    down = serve(model_store.home, NIDS_PREDICTION_LOG_URL="postgresql://postgres@127.0.0.1:1/none")
    for _ in range(3):
        assert post(down, "/analyze", {"flows": [ATTACK_FLOW, ATTACK_FLOW]}).status_code == 200
    metrics = httpx.get(down.url + "/metrics").text
    lost = re.search(r'^nids_prediction_log_lost_total\{reason="store_error"\} (\S+)$', metrics, re.MULTILINE)
    assert lost and float(lost.group(1)) == 6
    response = httpx.get(down.url + "/api/v1/predictions/stats")
    assert response.status_code == 503
    assert "the prediction log cannot be opened" in response.json()["error"]
    assert "cannot be opened" in down.log.read_text()
