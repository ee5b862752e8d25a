"""Errors reach the caller with their status and cause, 5xx included; refusals are not logged as server faults."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.healing.conftest import PG_URL, drop_tables, postgres_reachable

from .conftest import Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    name = f"errors_{uuid.uuid4().hex[:8]}_"
    yield name
    drop_tables(name)


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server], prefix: str) -> Server:
    return serve(model_store.home, NIDS_HEALING_AUDIT_URL=PG_URL, NIDS_HEALING_AUDIT_TABLE_PREFIX=prefix)


def test_a_refused_body_names_each_field_and_is_logged_without_a_traceback(server: Server) -> None:
    response = httpx.post(f"{server.url}/detect_threat", json={"flows": [{"service": "http"}]})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "9 invalid field(s) in the request"
    assert {tuple(error["loc"]) for error in body["detail"]} >= {("flows", 0, "flag"), ("flows", 0, "src_bytes")}
    assert all(error["type"] == "missing" and "input" not in error for error in body["detail"])
    log = server.log.read_text()
    assert "400 9 invalid field(s)" in log
    assert "Traceback" not in log and "Exception on /detect_threat" not in log


def test_not_found_and_conflict_keep_their_messages(server: Server) -> None:
    missing = httpx.post(f"{server.url}/healing_action", json={"action_id": "no-such-action"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "no self-healing action with id 'no-such-action'"}


def test_a_503_tells_the_caller_its_cause(server: Server, prefix: str) -> None:
    assert httpx.post(f"{server.url}/healing_actions", json={}).status_code == 200
    drop_tables(prefix)  # the audit log's tables vanish under the running service
    response = httpx.post(f"{server.url}/healing_actions", json={})
    assert response.status_code == 503
    assert response.json()["error"].startswith("audit log unavailable: its tables are missing")
    assert prefix not in response.text, "the driver's text (naming the table) stays in the server's log"
