from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from nids.core.errors import Conflict
from nids.healing import ActionNotFound, AttackEvent, HealingEngine, NotRevertible
from nids.healing.audit import SqliteAuditStore
from nids.healing.executors import default_executors

from .conftest import T0, make_policy

ATTACKER = "203.0.113.7"


def ssh(src_ip: str | None = ATTACKER, confidence: float | None = 0.95) -> AttackEvent:
    return AttackEvent(attack_type="SSH-Patator", confidence=confidence, src_ip=src_ip, flow_id="f-1")


def ddos(service: str | None = None, confidence: float = 0.99) -> AttackEvent:
    return AttackEvent(attack_type="DDoS", confidence=confidence, target_service=service, model_version="m:1")


def test_dry_run_records_the_exact_command_and_audits_context(engine_factory):
    engine = engine_factory()
    block, restart, alert, log = engine.handle(
        [
            ssh(),
            ddos("nginx"),
            AttackEvent(attack_type=3, confidence=0.9, src_ip="198.51.100.2"),
            AttackEvent(attack_type=0),
        ]
    )
    assert (block.action_type, block.mode, block.status) == ("block_ip", "dry_run", "dry_run")
    assert block.command == f"nft add element inet nids_bento blocked_v4 '{{ {ATTACKER} }}'"
    assert block.expires_at.timestamp() == T0 + 3600
    assert restart.command == "systemctl restart nginx"
    assert (alert.action_type, alert.action_params["severity"]) == ("alert_admin", "high")
    assert alert.command.startswith("POST ")
    assert log.action_type == "log_only"
    record = engine.get_action(restart.action_id)
    assert (record.attack_type, record.confidence, record.model_version, record.rule) == (
        "DDoS",
        0.99,
        "m:1",
        "dos-restart",
    )
    assert record.created_at.timestamp() == T0
    assert engine.get_action(block.action_id).flow_id == "f-1"


def test_default_service_comes_from_the_rule(engine_factory):
    (action,) = engine_factory().handle([ddos()])
    assert action.action_params == {"service": "apache2"}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ssh(confidence=0.5), "confidence 0.500 is below min_confidence 0.8"),
        (ssh(confidence=None), "no classifier confidence given"),
        (ssh(src_ip=None), "no source IP to block"),
        (ssh(src_ip="127.0.0.53"), "127.0.0.53 is allowlisted (127.0.0.0/8)"),
        (ssh(src_ip="::1"), "::1 is allowlisted (::1/128)"),
        (ssh(src_ip="10.20.0.9"), "10.20.0.9 is allowlisted (10.20.0.0/16)"),
        (ssh(src_ip="192.0.2.10"), "192.0.2.10 is allowlisted (192.0.2.10/32)"),
        (ddos("sshd"), "target service 'sshd' is not one of the configured services"),
        (ddos(confidence=0.3), "confidence 0.300 is below"),
    ],
)
def test_degrades_to_alert_admin_with_the_reason(engine_factory, event: AttackEvent, reason: str):
    engine = engine_factory(make_policy(allowlist=["10.20.0.0/16"]), own_addresses=["192.0.2.10"])
    (action,) = engine.handle([event])
    assert action.action_type == "alert_admin"
    assert reason in action.reason
    assert action.action_params["degraded_from"] in ("block_ip", "restart_service")
    assert action.rule in ("brute-force-block", "dos-restart")
    assert engine.get_action(action.action_id).reason == action.reason


def test_block_expires_and_is_extended_while_the_source_keeps_attacking(engine_factory, clock):
    engine = engine_factory(make_policy(block={"seconds": 1000}))
    (block,) = engine.handle([ssh()])
    clock.advance(600)
    (again,) = engine.handle([ssh()])
    assert (again.status, again.action_params["extends"]) == ("extended", block.action_id)
    assert engine.get_action(block.action_id).expires_at.timestamp() == T0 + 1600
    clock.advance(500)  # past the first expiry, before the extended one
    assert engine.sweep_expired() == []
    clock.advance(500)
    (expired,) = engine.sweep_expired()
    assert (expired.action_id, expired.status) == (block.action_id, "expired")
    assert expired.undo_command == f"nft delete element inet nids_bento blocked_v4 '{{ {ATTACKER} }}'"
    (fresh,) = engine.handle([ssh()])
    assert fresh.status == "dry_run" and fresh.action_id != block.action_id


def test_one_active_block_per_address(engine_factory):
    engine = engine_factory()
    actions = engine.handle([ssh(), ssh(), ssh("203.0.113.8"), ssh()])
    assert [action.status for action in actions] == ["dry_run", "extended", "dry_run", "extended"]
    blocks = engine.list_actions(action_type="block_ip", status="dry_run")
    assert sorted(block.src_ip for block in blocks) == [ATTACKER, "203.0.113.8"]


def test_rate_limit_per_action_type(engine_factory, clock):
    engine = engine_factory()  # restart_service: 1 per 300 s
    first, second = engine.handle([ddos(), ddos("nginx")])
    assert first.action_type == "restart_service"
    assert second.action_type == "alert_admin"
    assert "rate limit of restart_service reached (1 per 300 s)" in second.reason
    clock.advance(300)
    (third,) = engine.handle([ddos()])
    assert third.action_type == "restart_service"


def test_alerts_over_their_limit_are_recorded_as_rate_limited(engine_factory):
    engine = engine_factory(make_policy(rate_limits={"alert_admin": {"max_actions": 2, "per_seconds": 60}}))
    actions = engine.handle([AttackEvent(attack_type="Bot", src_ip="198.51.100.1")] * 3)
    assert [action.status for action in actions] == ["dry_run", "dry_run", "rate_limited"]
    assert len(engine.list_actions(status="rate_limited")) == 1


def test_enforce_runs_in_the_background_and_revert_undoes(engine_factory, runner):
    engine = engine_factory(make_policy(enforce=["block_ip", "restart_service"]))
    block, restart = engine.handle([ssh(), ddos()])
    assert (block.mode, block.status) == ("enforce", "queued")
    engine.wait_idle()
    assert engine.get_action(block.action_id).status == "executed"
    assert engine.get_action(restart.action_id).status == "executed"
    assert ("nft", "-f", "-") in runner.calls
    assert ("nft", "add", "element", "inet", "nids_bento", "blocked_v4", f"{{ {ATTACKER} }}") in runner.calls
    assert ("systemctl", "restart", "apache2") in runner.calls
    reverted = engine.revert(block.action_id)
    assert (reverted.status, reverted.undo_outcome) == ("reverted", "ok")
    assert runner.calls[-1] == ("nft", "delete", "element", "inet", "nids_bento", "blocked_v4", f"{{ {ATTACKER} }}")
    with pytest.raises(NotRevertible, match="'reverted'"):
        engine.revert(block.action_id)
    with pytest.raises(ActionNotFound):
        engine.revert("no-such-id")


def test_reverting_an_extension_lifts_its_block(engine_factory):
    engine = engine_factory()
    block, extension = engine.handle([ssh(), ssh()])
    assert engine.revert(extension.action_id).action_id == block.action_id
    assert engine.get_action(block.action_id).status == "reverted"


def test_failing_executor_records_the_failure_and_keeps_the_decision(engine_factory, runner):
    runner.fail = "systemctl: unit apache2.service not found"
    engine = engine_factory(make_policy(enforce=["restart_service", "block_ip"]))
    restart, block = engine.handle([ddos(), ssh()])
    engine.wait_idle()
    failed = engine.get_action(restart.action_id)
    assert (failed.status, failed.outcome) == ("failed", "systemctl: unit apache2.service not found")
    assert failed.attack_type == "DDoS" and failed.rule == "dos-restart"
    assert engine.get_action(block.action_id).ended_at is not None, "a failed block is not live"
    runner.fail = None
    (retry,) = engine.handle([ssh()])
    assert retry.status == "queued", "a failed block does not count as the address's active block"


def test_stop_switch(engine_factory, runner):
    engine = engine_factory(make_policy(enforce=["block_ip"]))
    runner.hold.clear()  # the block worker waits inside its first command (or has not started yet)
    first, second = engine.handle([ssh(), ssh("203.0.113.8")])
    engine.set_enforcement(False)
    runner.hold.set()
    engine.wait_idle()
    assert engine.get_action(first.action_id).status in ("executed", "suppressed")
    suppressed = engine.get_action(second.action_id)
    assert (suppressed.status, suppressed.outcome) == ("suppressed", "enforcement stopped before execution")
    (stopped,) = engine.handle([ssh("203.0.113.9")])
    assert (stopped.mode, stopped.status) == ("dry_run", "dry_run")
    assert not engine.enforcement_enabled
    engine.set_enforcement(True)
    (resumed,) = engine.handle([ssh("203.0.113.10")])
    assert (resumed.mode, resumed.status) == ("enforce", "queued")


def test_stop_switch_is_shared_through_the_audit_store(engine_factory, tmp_path: Path):
    first = engine_factory(make_policy(enforce=["block_ip"]))
    second = engine_factory(make_policy(enforce=["block_ip"]))
    first.set_enforcement(False)
    assert not second.enforcement_enabled
    assert second.handle([ssh()])[0].mode == "dry_run"


def test_stop_setting_cannot_be_overridden_at_runtime(engine_factory):
    engine = engine_factory(make_policy(enforce=["block_ip"]), enforcement_stopped=True)
    assert engine.handle([ssh()])[0].mode == "dry_run"
    with pytest.raises(Conflict, match="NIDS_HEALING_ENFORCEMENT_STOPPED"):
        engine.set_enforcement(True)


def test_unreachable_webhook_never_blocks_handle(tmp_path: Path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    webhook = {"url": f"http://127.0.0.1:{port}/hook", "retries": 2, "backoff_seconds": 0.01, "timeout_seconds": 1}
    policy = make_policy(enforce=["alert_admin"], webhook=webhook)
    engine = HealingEngine(policy, SqliteAuditStore(tmp_path / "a.sqlite3"), sweep_seconds=None)
    try:
        (alert,) = engine.handle([AttackEvent(attack_type="PortScan", confidence=0.9)])
        assert alert.status == "queued"
        engine.wait_idle()
        failed = engine.get_action(alert.action_id)
        assert failed.status == "failed"
        assert "webhook failed after 3 attempt(s)" in failed.outcome
    finally:
        engine.close()


def test_list_filters(engine_factory, clock):
    engine = engine_factory()
    block, _ = engine.handle([ssh(), ddos()])
    clock.advance(100)
    (alert,) = engine.handle([AttackEvent(attack_type="Bot", src_ip="198.51.100.1", dst_ip=ATTACKER)])
    assert [a.action_id for a in engine.list_actions(action_type="block_ip")] == [block.action_id]
    assert [a.action_id for a in engine.list_actions(address=ATTACKER)] == [alert.action_id, block.action_id]
    assert [a.action_id for a in engine.list_actions(since=T0 + 50)] == [alert.action_id]
    assert len(engine.list_actions(until=T0 + 50)) == 2
    assert len(engine.list_actions(status="dry_run", limit=1)) == 1
    with pytest.raises(ValidationError, match="limit\n  Input should be greater than or equal to 1"):
        engine.list_actions(limit=0)
    with pytest.raises(ValidationError, match="address\n  Value error, 'me' is not a valid IPv4 or IPv6 address"):
        engine.list_actions(address="me")


def test_blocks_expire_in_the_background(tmp_path: Path):
    """Real clock: the block_ip worker lifts a 1-second block by itself."""
    policy = make_policy(block={"seconds": 1})
    executors = default_executors(policy)
    engine = HealingEngine(policy, SqliteAuditStore(tmp_path / "a.sqlite3"), executors, sweep_seconds=0.05)
    try:
        (block,) = engine.handle([ssh()])
        deadline = time.monotonic() + 60
        while engine.get_action(block.action_id).status != "expired" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.get_action(block.action_id).status == "expired"
    finally:
        engine.close()


def test_reverting_a_queued_action_cancels_it(engine_factory, runner):
    engine = engine_factory(make_policy(enforce=["block_ip"]))
    runner.hold.clear()
    first, second = engine.handle([ssh(), ssh("203.0.113.8")])
    cancelled = engine.revert(second.action_id)
    runner.hold.set()
    engine.wait_idle()
    assert (cancelled.status, cancelled.undo_outcome) == ("reverted", "cancelled before it ran")
    assert engine.get_action(second.action_id).status == "reverted"
    assert not any("203.0.113.8" in " ".join(call) for call in runner.calls)
    assert engine.get_action(first.action_id).status in ("executed", "reverted")


def test_actions_queued_before_a_crash_run_after_restart(engine_factory, runner, monkeypatch):
    policy = make_policy(enforce=["restart_service"])
    crashed = engine_factory(policy)
    monkeypatch.setattr(crashed, "_enqueue", lambda record: None)  # the process dies before executing
    (restart,) = crashed.handle([ddos()])
    crashed.close()
    restarted = engine_factory(policy)
    restarted.wait_idle()
    assert restarted.get_action(restart.action_id).status == "executed"
    assert runner.calls == [("systemctl", "restart", "apache2")]


def test_a_block_left_running_by_a_dead_process_still_expires(engine_factory, clock, runner):
    engine = engine_factory(make_policy(enforce=["block_ip"], block={"seconds": 60}))
    (block,) = engine.handle([ssh()])
    engine.wait_idle()
    engine.store.update(block.action_id, status="running")  # as if the process died inside the executor
    clock.advance(60)
    with pytest.raises(NotRevertible, match="'running'"):
        engine.revert(block.action_id)
    clock.advance(600)
    (expired,) = engine.sweep_expired()
    assert (expired.status, expired.undo_outcome) == ("expired", "ok")
    assert runner.calls[-1][:2] == ("nft", "delete")


def test_a_block_recorded_by_another_process_meanwhile_is_extended(engine_factory, monkeypatch):
    other, engine = engine_factory(), engine_factory()
    (block,) = other.handle([ssh()])
    checks = []
    real_check = engine.store.live_block

    def check_before_other_wrote(address: str, mode: str):
        checks.append(address)
        return None if len(checks) == 1 else real_check(address, mode)

    monkeypatch.setattr(engine.store, "live_block", check_before_other_wrote)
    (action,) = engine.handle([ssh()])
    assert len(checks) == 2, "the unique index refused the second block and the decision was taken again"
    assert (action.status, action.action_params["extends"]) == ("extended", block.action_id)
    assert len(engine.list_actions(action_type="block_ip")) == 2


def test_an_unauthorised_caller_never_enforces(engine_factory, runner):
    """Access control: events from a caller without a sensor token are decided, audited, never enforced."""
    engine = engine_factory(make_policy(enforce=["block_ip", "restart_service"]))
    block, restart = engine.handle([ssh(), ddos()], caller=None)
    for action in (block, restart):
        assert (action.mode, action.status) == ("dry_run", "dry_run")
        assert engine.get_action(action.action_id).reason == "caller not authorised to enforce"
    engine.wait_idle()
    assert runner.calls == []
    (enforced,) = engine.handle([ssh(src_ip="203.0.113.8")], caller="sensor-dc1")
    assert (enforced.mode, enforced.status) == ("enforce", "queued")
    assert engine.get_action(enforced.action_id).params["authorised_by"] == "sensor-dc1"  # a label, never a token
