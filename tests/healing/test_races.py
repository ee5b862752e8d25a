"""Interleavings of concurrent decisions, forced by direct calls at the exact point where they race.

Each test stands a second process in for the race (a second engine on the same audit file, or the sweep) and
runs it from inside the first engine's store call, so the interleaving happens every time, without sleeps.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from nids.core.actions import ActionStatus
from nids.core.errors import Conflict
from nids.healing.audit import AuditStore

from .conftest import T0, make_policy
from .test_engine import ATTACKER, ddos, ssh


def test_a_retried_batch_charges_the_rate_limit_once(engine_factory, monkeypatch):
    """A block recorded by another process makes the batch decide again; its restart is not charged twice."""
    other, engine = engine_factory(), engine_factory()  # restart_service: 1 per 300 s
    real_check = engine.store.live_block
    checks = []

    def other_blocks_first(address: str, mode: str):
        checks.append(address)
        if len(checks) == 1:
            other.handle([ssh()])  # another process blocks the address just after this one looked
            return None
        return real_check(address, mode)

    monkeypatch.setattr(engine.store, "live_block", other_blocks_first)
    restart, block = engine.handle([ddos(), ssh()])
    assert len(checks) == 2, "the unique index refused the second block and the batch was decided again"
    assert (restart.action_type, restart.reason) == ("restart_service", None)
    assert block.status == "extended"


def test_a_conflict_on_every_attempt_is_a_409_and_records_nothing(engine_factory, monkeypatch):
    other, engine = engine_factory(), engine_factory()
    other.handle([ssh()])
    monkeypatch.setattr(engine.store, "live_block", lambda address, mode: None)  # never sees the other's block
    before = len(engine.list_actions())
    with pytest.raises(Conflict, match="send the events again") as caught:
        engine.handle([ddos(), ssh()])
    assert caught.value.status_code == 409
    assert len(engine.list_actions()) == before
    (restart,) = engine.handle([ddos()])  # nothing was charged either
    assert restart.action_type == "restart_service"


def test_an_extension_racing_a_sweep_that_lifted_the_block_becomes_a_new_block(engine_factory, clock, monkeypatch):
    engine = engine_factory(make_policy(block={"seconds": 100}))
    (block,) = engine.handle([ssh()])
    clock.advance(150)  # due, not yet swept
    real_check = engine.store.live_block

    def found_then_swept(address: str, mode: str):
        live = real_check(address, mode)
        if live is not None and live.action_id == block.action_id:
            assert [lifted.action_id for lifted in engine.sweep_expired()] == [block.action_id]
        return live  # what the decision saw: the block, already lifted by the sweep

    monkeypatch.setattr(engine.store, "live_block", found_then_swept)
    (action,) = engine.handle([ssh()])
    assert action.status == "dry_run" and action.action_id != block.action_id, "never 'extended' after a lift"
    assert action.action_description.startswith("Block traffic from")
    assert engine.get_action(block.action_id).status == "expired"


def test_a_sweep_racing_an_extension_leaves_the_block_in_force(engine_factory, clock, monkeypatch):
    engine = engine_factory(make_policy(block={"seconds": 100}))
    (block,) = engine.handle([ssh()])
    clock.advance(150)  # due
    real_due = engine.store.due_blocks
    extended = []

    def due_then_extended(now):
        due = real_due(now)
        extended.extend(engine.handle([ssh()]))  # the source attacks again between the sweep's read and its lift
        return due

    monkeypatch.setattr(engine.store, "due_blocks", due_then_extended)
    assert engine.sweep_expired() == []
    (extension,) = extended
    assert (extension.status, extension.action_params["extends"]) == ("extended", block.action_id)
    live = engine.get_action(block.action_id)
    assert live.ended_at is None and live.status == "dry_run"
    assert live.expires_at.timestamp() == T0 + 250


def test_rate_limits_are_shared_by_every_process_on_the_audit_log(engine_factory):
    first, second = engine_factory(), engine_factory()  # two processes, one audit file
    (restart,) = first.handle([ddos()])
    (degraded,) = second.handle([ddos()])
    assert restart.action_type == "restart_service"
    assert degraded.action_type == "alert_admin"
    assert "rate limit of restart_service reached (1 per 300 s)" in degraded.reason


def _block(store: AuditStore, expires_at: float) -> str:
    """A live dry-run block recorded directly (the engine's own record shape)."""
    from nids.healing.schemas import ActionRecord

    action_id = uuid.uuid4().hex
    when = datetime.fromtimestamp(T0, UTC)
    store.insert(
        [
            ActionRecord(
                action_id=action_id,
                created_at=when,
                updated_at=when,
                attack_type="SSH-Patator",
                confidence=0.95,
                model_version=None,
                src_ip=ATTACKER,
                dst_ip=None,
                target_service=None,
                flow_id=None,
                event_timestamp=None,
                rule="brute-force-block",
                action_type="block_ip",
                mode="dry_run",
                status=ActionStatus.DRY_RUN,
                description="block",
                params={"address": ATTACKER, "block_seconds": 100},
                reason=None,
                command="nft ...",
                outcome=None,
                expires_at=datetime.fromtimestamp(expires_at, UTC),
                parent_id=None,
                ended_at=None,
                undo_command=None,
                undo_outcome=None,
                caller="sensor",
            )
        ]
    )
    return action_id


def test_extension_and_expiry_claim_exclude_each_other_in_both_stores(store: AuditStore):
    extended_first = _block(store, T0 + 100)
    assert store.extend_block(extended_first, T0 + 400, T0 + 150)
    assert not store.claim_expiry(extended_first, T0 + 150), "extended: no longer due"
    store.update(extended_first, ended_at=T0 + 160)
    claimed_first = _block(store, T0 + 100)
    assert store.claim_expiry(claimed_first, T0 + 150)
    assert not store.extend_block(claimed_first, T0 + 400, T0 + 150), "claimed: ending, never extended"
    counts = store.count_recent({"block_ip": (T0 - 1, 10), "restart_service": (T0 - 1, 10)})
    assert counts == {"block_ip": 2, "restart_service": 0}
    assert store.count_recent({"block_ip": (T0 - 1, 1)}) == {"block_ip": 1}, "counted up to the limit"
    assert store.count_recent({"block_ip": (T0, 10)}) == {"block_ip": 0}, "only inside the window"


def test_a_block_that_cannot_be_recorded_is_never_applied(tmp_path, clock, runner):
    """Audit store locked by another writer: handle fails (503 for the caller), nothing is queued or executed."""
    import sqlite3

    from nids.healing import HealingEngine
    from nids.healing.audit import AuditUnavailable, SqliteAuditStore
    from nids.healing.executors import default_executors

    policy = make_policy(enforce=["block_ip"])
    store = SqliteAuditStore(tmp_path / "audit.sqlite3", lock_seconds=0.2)
    engine = HealingEngine(policy, store, default_executors(policy, runner), clock=clock, sweep_seconds=None)
    writer = sqlite3.connect(tmp_path / "audit.sqlite3", isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AuditUnavailable, match="database is locked") as caught:
            engine.handle([ssh()])
        assert caught.value.status_code == 503
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    engine.wait_idle()
    assert runner.calls == [] and engine.list_actions() == []
    (block,) = engine.handle([ssh()])  # once the store answers, the same event is decided and applied
    engine.wait_idle()
    assert block.status == "queued" and runner.calls[0][0] == "nft"
    assert engine.get_action(block.action_id).status == "executed"
    engine.close()
