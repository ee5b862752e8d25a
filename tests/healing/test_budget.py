"""Callers not authorised to enforce (issue 19): outside the rate limits, held to a budget of their own, counted in
aggregate past it; the audit log's retention."""

from __future__ import annotations

import pytest

from nids.core.actions import AttackEvent
from nids.core.errors import TooManyRequests
from nids.healing.audit import AuditStore
from nids.healing.budget import Retention, UnauthorisedBudget

from .conftest import make_policy


def ssh(address: str) -> AttackEvent:
    return AttackEvent(attack_type="SSH-Patator", confidence=0.97, src_ip=address)


def dos() -> AttackEvent:
    return AttackEvent(attack_type="DoS Hulk", confidence=0.99)


def addresses(n: int, offset: int = 0) -> list[AttackEvent]:
    return [ssh(f"198.51.{(i + offset) // 250}.{(i + offset) % 250 + 1}") for i in range(n)]


def test_unauthorised_decisions_never_use_the_rate_limits_of_enforced_actions(engine_factory, clock) -> None:
    engine = engine_factory(make_policy(enforce=["block_ip", "restart_service"]))
    anonymous = engine.handle([*addresses(40), dos()], caller=None, requester="anonymous")
    assert all(action.mode == "dry_run" and "rate limit" not in (action.reason or "") for action in anonymous)
    block, restart = engine.handle([ssh("203.0.113.9"), dos()], caller="sensor")
    assert (block.mode, block.action_type, block.status) == ("enforce", "block_ip", "queued")
    assert (restart.mode, restart.action_type) == ("enforce", "restart_service")
    assert engine.get_action(block.action_id).caller == "sensor"
    assert engine.get_action(anonymous[0].action_id).caller is None


def test_past_its_budget_an_unauthorised_caller_is_refused_and_counted_in_aggregate(engine_factory, clock) -> None:
    engine = engine_factory(budget=UnauthorisedBudget(per_minute=100, per_request=50, clock=clock))
    with pytest.raises(TooManyRequests, match="at most 50 events per request"):
        engine.handle(addresses(51), caller=None, requester="anonymous")
    engine.handle(addresses(50), caller=None, requester="anonymous")
    engine.handle(addresses(50, 50), caller=None, requester="anonymous")
    for _ in range(3):
        with pytest.raises(TooManyRequests, match="past its budget of 100 events a minute"):
            engine.handle(addresses(10), caller=None, requester="anonymous")
    engine.handle(addresses(10), caller=None, requester="viewer-soc")  # a budget per requester
    (enforced,) = engine.handle([ssh("203.0.113.9")], caller="sensor", requester="sensor")  # never budgeted
    assert enforced.status != "rate_limited"
    assert len(engine.list_actions(limit=1000)) == 50 + 50 + 10 + 1, "refused requests are not decided row by row"
    minute = clock() // 60 * 60
    assert engine.store.refusals() == [(minute, "anonymous", 4, 51 + 30)]
    clock.advance(61)
    engine.handle(addresses(10), caller=None, requester="anonymous")  # a new minute, a new budget


def test_retention_keeps_the_newest_rows_and_every_live_block(engine_factory, clock) -> None:
    policy = make_policy(enforce=["block_ip"])
    engine = engine_factory(policy, retention=Retention(max_age_seconds=3600, max_rows=30, every_seconds=3600))
    live = engine.handle([ssh("203.0.113.9")], caller="sensor")[0]  # an enforced block, live for an hour
    engine.wait_idle()
    for i in range(4):  # dry-run blocks: records only, pruned like any decision
        clock.advance(1)
        engine.handle(addresses(25, 25 * i), caller=None)
    assert engine.prune() == 101 - 30 - 1
    assert engine.store.count() == 30 + 1, "the newest 30, and the live block"
    assert engine.get_action(live.action_id) is not None, "a live block is never pruned"
    clock.advance(3601)
    engine.store.update(live.action_id, ended_at=clock())
    engine.prune()
    assert engine.store.count() == 0, "older than the age limit"


def test_an_audit_log_written_before_the_caller_column_gets_it(store: AuditStore) -> None:
    store.db.execute([(f"ALTER TABLE {store.actions} DROP COLUMN caller", {})])  # as the previous release wrote it
    store.db.execute(
        [
            (
                f"INSERT INTO {store.actions} (action_id, action_type, status, created_at) "
                "VALUES ('old', 'block_ip', 'dry_run', 5)",
                {},
            )
        ]
    )
    reopened = AuditStore(store.actions.removesuffix("actions"), store.db)
    assert reopened.count_recent({"block_ip": (0.0, 10)}) == {"block_ip": 1}, "older rows still count"
    AuditStore(store.actions.removesuffix("actions"), store.db)  # and once added, it is found
