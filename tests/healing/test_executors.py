from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nids.healing import AttackEvent, HealingEngine
from nids.healing.audit import SqliteAuditStore
from nids.healing.executors import (
    CommandRunner,
    ExecutionError,
    NftablesExecutor,
    SystemctlExecutor,
    WebhookExecutor,
    default_executors,
)
from nids.healing.policy import BlockSettings, WebhookSettings

from .conftest import make_policy


class Hook:
    """A real local webhook receiver that answers 500 to the first `failures` requests."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.bodies.append(body)
                self.send_response(500 if len(hook.bodies) <= hook.failures else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook(request: pytest.FixtureRequest) -> Iterator[Hook]:
    server = Hook(getattr(request, "param", 0))
    yield server
    server.server.shutdown()
    server.server.server_close()


def webhook(url: str, retries: int = 3) -> WebhookExecutor:
    waits: list[float] = []
    executor = WebhookExecutor(WebhookSettings(url=url, retries=retries, backoff_seconds=0.5), sleep=waits.append)
    executor.waits = waits  # type: ignore[attr-defined]
    return executor


@pytest.mark.parametrize("hook", [2], indirect=True)
def test_webhook_retries_with_exponential_backoff(hook: Hook):
    executor = webhook(hook.url)
    outcome = executor.run(executor.plan({"attack_type": "PortScan", "severity": "high"}))
    assert outcome == "HTTP 204 after 3 attempt(s)"
    assert executor.waits == [0.5, 1.0]
    assert hook.bodies == [{"event": "nids.alert", "attack_type": "PortScan", "severity": "high"}] * 3


@pytest.mark.parametrize("hook", [10], indirect=True)
def test_webhook_gives_up_after_its_retries(hook: Hook):
    executor = webhook(hook.url, retries=2)
    with pytest.raises(ExecutionError, match=r"webhook failed after 3 attempt\(s\): Internal Server Error"):
        executor.run(executor.plan({"attack_type": "Bot"}))
    assert len(hook.bodies) == 3


def test_enforced_alert_and_its_retraction_reach_the_webhook(hook: Hook, tmp_path):
    policy = make_policy(enforce=["alert_admin"], webhook={"url": hook.url})
    engine = HealingEngine(policy, SqliteAuditStore(tmp_path / "a.sqlite3"), sweep_seconds=None)
    try:
        (alert,) = engine.handle([AttackEvent(attack_type="Bot", confidence=0.9, src_ip="198.51.100.3")])
        engine.wait_idle()
        assert engine.get_action(alert.action_id).status == "executed"
        assert engine.revert(alert.action_id).status == "reverted"
    finally:
        engine.close()
    sent, retracted = hook.bodies
    assert (sent["event"], sent["attack_type"], sent["src_ip"], sent["severity"]) == (
        "nids.alert",
        "Bot",
        "198.51.100.3",
        "high",
    )
    assert retracted["event"] == "nids.alert_retracted"


def test_systemctl_only_touches_configured_services():
    executor = SystemctlExecutor(["apache2", "nginx"], CommandRunner())
    assert executor.plan({"service": "nginx"}).text == "systemctl restart nginx"
    assert executor.undo_plan({"service": "nginx"}).text == "systemctl is-active nginx"
    with pytest.raises(ExecutionError, match="'sshd' is not one of the configured services"):
        executor.plan({"service": "sshd"})


def nft(netns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *argv], capture_output=True, text=True, check=True
    ).stdout


def test_nftables_block_and_unblock_in_a_network_namespace(netns: str):
    """Real nft in a namespace the test creates: our table only; another table's rules stay untouched."""
    nft(netns, "add", "table", "inet", "other")
    nft(netns, "add", "chain", "inet", "other", "input", "{ type filter hook input priority 0 ; }")
    nft(netns, "add", "rule", "inet", "other", "input", "tcp", "dport", "22", "accept")
    before = nft(netns, "list", "table", "inet", "other")
    executor = NftablesExecutor(BlockSettings(), CommandRunner(prefix=("ip", "netns", "exec", netns)))
    for address in ("203.0.113.7", "2001:db8::7"):
        executor.run(executor.plan({"address": address}))
    assert "203.0.113.7" in nft(netns, "list", "set", "inet", "nids_bento", "blocked_v4")
    assert "2001:db8::7" in nft(netns, "list", "set", "inet", "nids_bento", "blocked_v6")
    chain = nft(netns, "list", "chain", "inet", "nids_bento", "input")
    assert "ip saddr @blocked_v4 drop" in chain and "ip6 saddr @blocked_v6 drop" in chain
    executor.run(executor.undo_plan({"address": "203.0.113.7"}))
    assert "203.0.113.7" not in nft(netns, "list", "set", "inet", "nids_bento", "blocked_v4")
    assert "2001:db8::7" in nft(netns, "list", "set", "inet", "nids_bento", "blocked_v6")
    again = NftablesExecutor(BlockSettings(), CommandRunner(prefix=("ip", "netns", "exec", netns)))
    again.run(again.plan({"address": "198.51.100.9"}))  # a restarted service sets up again without duplicates
    assert nft(netns, "list", "chain", "inet", "nids_bento", "input").count("drop") == 2
    assert nft(netns, "list", "table", "inet", "other") == before
    assert executor.run(executor.undo_plan({"address": "203.0.113.7"})) == "already absent"


def test_engine_enforces_and_expires_a_real_block(netns: str, engine_factory, clock):
    policy = make_policy(enforce=["block_ip"], block={"seconds": 60})
    executors = default_executors(policy, CommandRunner(prefix=("ip", "netns", "exec", netns)))
    engine = engine_factory(policy, executors=executors)
    (block,) = engine.handle([AttackEvent(attack_type="FTP-Patator", confidence=0.99, src_ip="192.0.2.66")])
    engine.wait_idle()
    assert engine.get_action(block.action_id).status == "executed"
    assert "192.0.2.66" in nft(netns, "list", "set", "inet", "nids_bento", "blocked_v4")
    clock.advance(60)
    (expired,) = engine.sweep_expired()
    assert (expired.status, expired.undo_outcome) == ("expired", "ok")
    assert "192.0.2.66" not in nft(netns, "list", "set", "inet", "nids_bento", "blocked_v4")


def test_live_blocks_are_restored_after_nftables_was_reset(netns: str, engine_factory):
    policy = make_policy(enforce=["block_ip"])
    runner = CommandRunner(prefix=("ip", "netns", "exec", netns))
    first = engine_factory(policy, executors=default_executors(policy, runner))
    first.handle([AttackEvent(attack_type="SSH-Patator", confidence=0.99, src_ip="192.0.2.77")])
    first.wait_idle()
    first.close()
    nft(netns, "delete", "table", "inet", "nids_bento")  # a reboot empties nftables
    second = engine_factory(policy, executors=default_executors(policy, runner))
    second.wait_idle()  # the block_ip worker restores before it takes new work
    second.handle([AttackEvent(attack_type="SSH-Patator", confidence=0.99, src_ip="192.0.2.78")])
    second.wait_idle()
    blocked = nft(netns, "list", "set", "inet", "nids_bento", "blocked_v4")
    assert "192.0.2.77" in blocked and "192.0.2.78" in blocked
