"""Budgets per caller over a live server (issue 19): callers without a sensor token cannot use up the rate limits
of enforced actions, are answered 429 past a budget of their own (counted in aggregate), and the audit log stays
within its configured size however much they send."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import REPO, Server

SENSOR = {"authorization": "Bearer budgets-sensor-token"}
PER_MINUTE, PER_REQUEST, MAX_ROWS = 1000, 100, 500


def events(n: int, offset: int = 0) -> list[dict]:
    """Half SSH brute force from distinct sources (block_ip), half benign (log_only)."""
    return [
        {
            "attack_type": "SSH-Patator",
            "confidence": 0.97,
            "src_ip": f"198.51.{(i + offset) // 250}.{(i + offset) % 250 + 1}",
        }
        if i % 2 == 0
        else {"attack_type": "BENIGN", "confidence": 0.99}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def server(serve, model_store, tmp_path_factory: pytest.TempPathFactory) -> Server:
    policy = yaml.safe_load((REPO / "config" / "healing.yaml").read_text())
    policy["enforce"] = ["log_only"]  # runs nothing outside the process: a log line
    policy["rate_limits"]["log_only"] = {"max_actions": 5, "per_seconds": 60}
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, allow_unicode=True))
    return serve(
        model_store.home,
        NIDS_HEALING_POLICY_FILE=str(path),
        NIDS_SENSOR_TOKEN=SENSOR["authorization"].removeprefix("Bearer "),
        NIDS_HEALING_UNAUTHORISED_EVENTS_PER_MINUTE=str(PER_MINUTE),
        NIDS_HEALING_UNAUTHORISED_EVENTS_PER_REQUEST=str(PER_REQUEST),
        NIDS_HEALING_AUDIT_MAX_ROWS=str(MAX_ROWS),
        NIDS_HEALING_AUDIT_PRUNE_SECONDS="0.5",
    )


def audit_db(server: Server) -> Path:
    return server.log.parent / "var" / "healing-audit.sqlite3"


def test_anonymous_events_leave_the_sensors_rate_limits_alone(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for i in range(PER_MINUTE // PER_REQUEST):  # 1,000 anonymous events (dry-run: no sensor token)
            response = http.post("/self_heal", json={"events": events(PER_REQUEST, i * PER_REQUEST)})
            assert response.status_code == 200, response.text
            assert {a["mode"] for a in response.json()} == {"dry_run"}
        block, benign = http.post("/self_heal", json={"events": events(2, 5000)}, headers=SENSOR).json()
    assert block["action_type"] == "block_ip" and "rate limit" not in (block["reason"] or "")
    assert (benign["action_type"], benign["mode"]) == ("log_only", "enforce")
    assert benign["status"] != "rate_limited", "1,000 anonymous log_only decisions did not use the limit of 5"


def test_anonymous_floods_get_429_and_the_audit_log_keeps_its_size(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        too_many = http.post("/self_heal", json={"events": events(PER_REQUEST + 1)})
        assert too_many.status_code == 429
        assert "NIDS_HEALING_UNAUTHORISED_EVENTS_PER_REQUEST" in too_many.json()["error"]
        flood = [http.post("/self_heal", json={"events": events(PER_REQUEST)}).status_code for _ in range(20)]
        assert flood.count(429) >= 10, flood  # the first test spent the minute's budget
        sensor = http.post("/self_heal", json={"events": events(2, 7000)}, headers=SENSOR)
        assert sensor.status_code == 200, "a sensor is never held to the unauthorised budget"
    deadline = time.monotonic() + 60  # retention runs every 0.5 s in the background
    with sqlite3.connect(audit_db(server)) as db:
        while (rows := db.execute("SELECT COUNT(*) FROM healing_actions").fetchone()[0]) > MAX_ROWS:
            assert time.monotonic() < deadline, f"the audit log holds {rows} decisions, over {MAX_ROWS}"
            time.sleep(0.2)
        refused = db.execute("SELECT SUM(requests), SUM(events), COUNT(*) FROM healing_refused").fetchone()
    assert refused[0] >= 11 and refused[1] >= 11 * PER_REQUEST, "refusals are counted in aggregate"
    assert refused[2] <= 4, "one row per requester and minute, not one per event"
