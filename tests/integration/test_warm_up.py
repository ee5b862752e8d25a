"""Warm before ready (nids.serving.warmup): a real `bentoml serve` answers /readyz 503 naming the warm-up step each
worker still waits for, then 200 once every worker ran its served paths; the warm-up's predictions are in neither
the statistics, the prediction list nor the Prometheus counters.

The audit log is made unopenable at start (its directory's place taken by a file), so the warm-up passes the
batched APIs and stops at `analyze` (which needs the audit log): a pending step the test can see without racing
the clock. Removing the file lets the service open the log on its next retry; the warm-up then completes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO, Server, logged_predictions, wait_for

pytestmark = [pytest.mark.integration]

DETECT = json.loads((REPO / "tests" / "fixtures" / "detect_threat.json").read_text())
CLASSIFY = json.loads((REPO / "tests" / "fixtures" / "classify_attack.json").read_text())
WORKERS = 2


def _readyz(server: Server) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def _counter(metrics: str, name: str) -> float:
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.MULTILINE))


def test_unready_naming_the_pending_step_until_every_worker_is_warm_and_nothing_counted(
    serve: Callable[..., Server], model_store: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the audit log's directory should be")
    server = serve(
        model_store.home,
        NIDS_WORKERS=str(WORKERS),
        NIDS_HEALING_AUDIT_URL=f"sqlite:///{blocker}/audit.sqlite3",
        NIDS_MODEL_STATE_URL=f"sqlite:///{tmp_path}/state.sqlite3",  # else in the audit log's database
        NIDS_WARM_UP_REQUESTS="16",
    )

    def waiting_at_analyze() -> str:
        response = _readyz(server)
        reason = response.json().get("error", "") if response.status_code == 503 else ""
        return reason if reason.count("analyze pending") == WORKERS else ""

    reason = wait_for(waiting_at_analyze, 90)
    assert "warming up (NIDS_WARM_UP_REQUESTS=16)" in reason
    assert "worker 1: analyze pending" in reason and "worker 2: analyze pending" in reason
    assert "the self-healing audit log cannot be opened" in reason

    blocker.unlink()
    wait_for(lambda: _readyz(server).status_code == 200, 90)
    assert "warming up" not in _readyz(server).text

    with server.client() as http:
        # 16 + 16 single flows and 4 analyze flows per worker ran, none of them counted
        assert http.get("/api/v1/predictions/stats").json()["total_predictions"] == 0
        assert http.get("/api/v1/predictions", params={"limit": 1000}).json() == []
        metrics = http.get("/metrics").text
        assert _counter(metrics, "nids_predictions_total") == 0
        # a user's predictions are logged as before
        flow_ids = {f"user-{uuid.uuid4().hex}" for _ in range(2)}
        threat_id, attack_id = sorted(flow_ids)
        body = {"flows": [{**DETECT["flows"][0], "flow_id": threat_id}]}
        assert http.post("/detect_threat", json=body).status_code == 200
        body = {"flows": [{**CLASSIFY["flows"][0], "flow_id": attack_id}]}
        assert http.post("/classify_attack", json=body).status_code == 200
        assert {row["flow_id"] for row in logged_predictions(http, flow_ids)} == flow_ids
        assert http.get("/api/v1/predictions/stats").json()["total_predictions"] == 2
        assert _counter(http.get("/metrics").text, "nids_predictions_total") == 2


def test_ready_with_the_prediction_log_disabled(model_store: Any, serve: Callable[..., Server]) -> None:
    """NIDS_PREDICTION_LOG_ENABLED=false: its routes answer 503 for good, so the warm-up skips that step."""
    server = serve(model_store.home, NIDS_PREDICTION_LOG_ENABLED="false")
    wait_for(lambda: _readyz(server).status_code == 200, 120)
