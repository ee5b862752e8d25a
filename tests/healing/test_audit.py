from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from nids.core.settings import Settings
from nids.healing import HealingEngine
from nids.healing.audit import AuditStore, AuditUnavailable, BlockConflict, SqliteAuditStore, open_audit_store
from nids.healing.schemas import ActionQuery, ActionRecord

from .conftest import PG_URL, POLICY_FILE, ROOT, T0, drop_tables, postgres_reachable

WRITER = """
import json
from nids.healing import AttackEvent, HealingEngine
from nids.core.settings import Settings

engine = HealingEngine.from_settings(Settings())
actions = engine.handle([
    AttackEvent(attack_type="SSH-Patator", confidence=0.97, src_ip="203.0.113.7", flow_id="f-1", model_version="m:3"),
    AttackEvent(attack_type=2, confidence=0.91, target_service="nginx", timestamp="2017-07-07T15:56:00"),
    AttackEvent(attack_type="PortScan", confidence=0.4, src_ip="198.51.100.4"),
])
engine.revert(actions[2].action_id)
engine.close()
print(json.dumps([action.model_dump(mode="json") for action in actions]))
"""
READER = """
import json
from nids.healing import HealingEngine
from nids.core.settings import Settings

engine = HealingEngine.from_settings(Settings())
print(json.dumps([record.model_dump(mode="json") for record in engine.list_actions()]))
engine.close()
"""


def record(action_id: str = "a1", created: float = T0, **values) -> ActionRecord:
    when = datetime.fromtimestamp(created, UTC)
    base = dict(
        action_id=action_id,
        created_at=when,
        updated_at=when,
        attack_type="SSH-Patator",
        confidence=0.9,
        model_version="attack_classifier:abc",
        src_ip="203.0.113.7",
        dst_ip="10.0.0.5",
        target_service=None,
        flow_id="f-9",
        event_timestamp=None,
        rule="brute-force-block",
        action_type="block_ip",
        mode="enforce",
        status="executed",
        description="Block",
        params={"address": "203.0.113.7", "block_seconds": 60},
        reason=None,
        command="nft add element inet nids_bento blocked_v4 '{ 203.0.113.7 }'",
        outcome="ok",
        expires_at=datetime.fromtimestamp(created + 60, UTC),
        parent_id=None,
        ended_at=None,
        undo_command=None,
        undo_outcome=None,
    )
    return ActionRecord(**(base | values))


def test_roundtrip_update_and_filters(store: AuditStore):
    first = record("a1")
    second = record("a2", T0 + 10, action_type="alert_admin", status="dry_run", src_ip="198.51.100.1", expires_at=None)
    store.insert([first, second])
    assert store.get("a1") == first
    assert store.get("missing") is None
    assert [r.action_id for r in store.list(ActionQuery())] == ["a2", "a1"]
    assert [r.action_id for r in store.list(ActionQuery(action_type="alert_admin"))] == ["a2"]
    assert [r.action_id for r in store.list(ActionQuery(status="executed", address="10.0.0.5"))] == ["a1"]
    assert [r.action_id for r in store.list(ActionQuery(address="198.51.100.1"))] == ["a2"]
    assert [r.action_id for r in store.list(ActionQuery(since=T0 + 5))] == ["a2"]
    assert [r.action_id for r in store.list(ActionQuery(until=datetime.fromtimestamp(T0 + 5, UTC)))] == ["a1"]
    store.update("a1", status="reverted", ended_at=T0 + 30, undo_outcome="ok")
    updated = store.get("a1")
    assert (updated.status, updated.ended_at.timestamp(), updated.undo_outcome) == ("reverted", T0 + 30, "ok")
    with pytest.raises(ValueError, match="not audit columns"):
        store.update("a1", colour="blue")


def test_live_and_due_blocks(store: AuditStore):
    store.insert(
        [
            record("live"),
            record("dry", mode="dry_run", status="dry_run"),
            record("ended", src_ip="203.0.113.8", ended_at=datetime.fromtimestamp(T0, UTC)),
            record("extension", src_ip="203.0.113.9", status="extended", parent_id="elsewhere"),
        ]
    )
    assert store.live_block("203.0.113.7", "enforce").action_id == "live"
    assert store.live_block("203.0.113.7", "dry_run").action_id == "dry"
    assert store.live_block("203.0.113.8", "enforce") is None
    assert store.live_block("203.0.113.9", "enforce") is None
    assert store.due_blocks(T0 + 59) == []
    assert {r.action_id for r in store.due_blocks(T0 + 60)} == {"live", "dry"}
    assert [r.action_id for r in store.enforced_blocks()] == ["live"]


def test_one_live_block_per_address_even_across_processes(store: AuditStore):
    store.insert([record("first")])
    with pytest.raises(BlockConflict):
        store.insert([record("second"), record("unrelated", src_ip="203.0.113.99")])
    assert store.get("unrelated") is None, "the conflicting batch is rolled back whole"
    store.update("first", ended_at=T0 + 1)
    store.insert([record("second")])
    assert store.live_block("203.0.113.7", "enforce").action_id == "second"


def test_flags(store: AuditStore):
    assert store.get_flag("enforcement") is None
    store.set_flag("enforcement", "stopped")
    store.set_flag("enforcement", "on")
    assert store.get_flag("enforcement") == "on"


def test_unknown_audit_url_is_refused_at_start(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NIDS_HEALING_AUDIT_URL", "mysql://db/audit")
    with pytest.raises(ValidationError, match=r"healing_audit_url\n.*URL scheme should be 'sqlite', 'postgresql'"):
        Settings()
    with pytest.raises(ValidationError, match="URL scheme should be 'sqlite', 'postgresql'"):
        open_audit_store("mysql://db/audit")


def test_sqlite_urls_name_relative_and_absolute_files(tmp_path: Path):
    assert Settings(data_dir=Path("var")).audit_url.path == "/var/healing-audit.sqlite3"
    store = open_audit_store(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    store.close()
    assert (tmp_path / "audit.sqlite3").is_file()


def _python(script: str, env: dict[str, str]) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_audit_rows_survive_a_restart_of_the_service_process(backend: str, tmp_path: Path):
    """One process decides (and reverts one action), exits; a new process reads every row back."""
    env = {**os.environ, "NIDS_DATA_DIR": str(tmp_path), "NIDS_HEALING_POLICY_FILE": str(POLICY_FILE)}
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    if backend == "postgresql":
        reason = postgres_reachable()
        if reason:
            pytest.skip(reason)
        env |= {"NIDS_HEALING_AUDIT_URL": PG_URL, "NIDS_HEALING_AUDIT_TABLE_PREFIX": prefix}
    try:
        written = _python(WRITER, env)
        read = {row["action_id"]: row for row in _python(READER, env)}
    finally:
        if backend == "postgresql":
            drop_tables(prefix)
    if backend == "sqlite":
        assert (tmp_path / "healing-audit.sqlite3").is_file()
    assert set(read) == {action["action_id"] for action in written}
    block, restart, alert = (read[action["action_id"]] for action in written)
    assert (block["action_type"], block["status"], block["src_ip"]) == ("block_ip", "dry_run", "203.0.113.7")
    assert (block["flow_id"], block["model_version"], block["confidence"]) == ("f-1", "m:3", 0.97)
    assert block["command"] == "nft add element inet nids_bento blocked_v4 '{ 203.0.113.7 }'"
    assert (restart["attack_type"], restart["params"], restart["event_timestamp"]) == (
        "DDoS",
        {"service": "nginx"},
        "2017-07-07T15:56:00",
    )
    assert (alert["status"], alert["undo_outcome"]) == ("reverted", "nothing ran (dry run)")
    assert alert["ended_at"] is not None


def test_sqlite_default_lives_in_the_data_directory(tmp_path: Path):
    from nids.core.settings import Settings

    engine = HealingEngine.from_settings(Settings(data_dir=tmp_path / "state", healing_policy_file=POLICY_FILE))
    engine.close()
    assert (tmp_path / "state" / "healing-audit.sqlite3").is_file()


def test_an_audit_store_that_fails_says_since_when_and_how_often_until_it_works(tmp_path: Path) -> None:
    """What /readyz lists under `degraded` while the audit log is unavailable (nids.core.database.Outage)."""
    store = SqliteAuditStore(tmp_path / "audit.sqlite3")
    try:
        assert store.outage.describe("audit log") == ""
        store.db.execute([(f"DROP TABLE {store.state}", {})])  # every flag read now fails in the driver
        for _ in range(2):
            with pytest.raises(AuditUnavailable):
                store.get_flag("x")
        said = store.outage.describe("audit log")
        assert said.startswith("audit log unavailable since ") and "2 failed attempts" in said
        store.create_schema()  # repaired: the next call works and the outage is over
        assert store.get_flag("x") is None and store.outage.describe("audit log") == ""
    finally:
        store.close()
