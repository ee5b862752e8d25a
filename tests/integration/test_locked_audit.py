"""A locked audit database never stalls inference, and an action that could not be recorded is never reported."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server

pytestmark = [pytest.mark.integration]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
THREAT_BODY = json.loads((FIXTURES / "detect_threat.json").read_text())
LOCK_SECONDS = 8  # NIDS_HEALING_AUDIT_LOCK_SECONDS: how long the self_heal call below waits for the lock
EVENT = {"attack_type": "SSH-Patator", "confidence": 0.97, "src_ip": "198.51.100.77"}


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.sqlite3"


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server], audit_file: Path) -> Server:
    return serve(
        model_store.home,
        NIDS_HEALING_AUDIT_URL=f"sqlite:///{audit_file}",
        NIDS_HEALING_AUDIT_LOCK_SECONDS=str(LOCK_SECONDS),
    )


def test_inference_answers_while_self_heal_waits_on_a_locked_audit_database(server: Server, audit_file: Path) -> None:
    with server.client() as http:
        assert http.post("/detect_threat", json=THREAT_BODY).status_code == 200
        before = http.post("/healing_actions", json={"address": EVENT["src_ip"]}).json()

    healed: dict[str, httpx.Response] = {}
    sent = threading.Event()

    def self_heal() -> None:
        with server.client() as client:
            sent.set()
            healed["response"] = client.post("/self_heal", json={"events": [EVENT]})

    writer = sqlite3.connect(audit_file, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        healer = threading.Thread(target=self_heal)
        healer.start()
        sent.wait(10)
        with server.client() as http:
            answers = [http.post("/detect_threat", json=THREAT_BODY) for _ in range(16)]
        still_waiting = healer.is_alive() and "response" not in healed
    finally:
        healer.join(LOCK_SECONDS + 20)
        writer.execute("ROLLBACK")
        writer.close()

    assert [answer.status_code for answer in answers] == [200] * 16
    assert still_waiting, "self_heal answered while the audit database was still locked"
    response = healed["response"]
    assert response.status_code == 503, response.text
    assert response.json()["error"].startswith("audit log unavailable: its database is locked by another writer")
    with server.client() as http:  # nothing was recorded (nor reported) for the refused call
        assert http.post("/healing_actions", json={"address": EVENT["src_ip"]}).json() == before
        retried = http.post("/self_heal", json={"events": [EVENT]})
    assert retried.status_code == 200, retried.text
