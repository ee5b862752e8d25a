"""Executors: each runs one action type and can undo what it did.

An executor first *plans* (the exact command line or request, recorded in dry_run and enforce alike), then
`run`s or `undo`es a plan. Commands go through a `Runner` so deployments (and tests) can prefix them, e.g.
with `ip netns exec NAME`. Failures raise ExecutionError; the engine records them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nids.healing.policy import BlockSettings, Policy, WebhookSettings

logger = logging.getLogger("nids.healing")


class ExecutionError(RuntimeError):
    """An executor could not do (or undo) its action."""


@dataclass(frozen=True)
class Plan:
    """What an action does: a command line, or a JSON POST to a URL. `text` is what the audit log records."""

    argv: tuple[str, ...] = ()
    stdin: str | None = None
    url: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        if self.url is not None:
            return f"POST {self.url} {json.dumps(self.body, sort_keys=True)}"
        return shlex.join(self.argv) + (f" <<< {self.stdin!r}" if self.stdin else "")


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> str: ...


@dataclass(frozen=True)
class CommandRunner:
    """Runs a command (optionally behind a prefix such as `ip netns exec NAME`); ExecutionError on failure."""

    prefix: tuple[str, ...] = ()
    timeout_seconds: float = 30.0

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> str:
        command = [*self.prefix, *argv]
        try:
            done = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=self.timeout_seconds, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ExecutionError(f"{shlex.join(command)}: {error}") from None
        if done.returncode != 0:
            raise ExecutionError(f"{shlex.join(command)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout.strip() or "ok"


class Executor(Protocol):
    def plan(self, params: Mapping[str, Any]) -> Plan: ...
    def undo_plan(self, params: Mapping[str, Any]) -> Plan: ...
    def run(self, plan: Plan) -> str: ...


class CommandExecutor:
    """Executors whose plans are command lines."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def run(self, plan: Plan) -> str:
        return self.runner(plan.argv, plan.stdin)


class NftablesExecutor(CommandExecutor):
    """block_ip: adds the address to a set in a table and chain of our own (family inet); undo removes it.

    Setup (once, atomically with `nft -f -`) creates the table, an input chain, one set per IP family and the
    two drop rules; it flushes only our own chain. Nothing outside our table is ever touched.
    """

    def __init__(self, settings: BlockSettings, runner: Runner, nft: str = "nft") -> None:
        super().__init__(runner)
        self.settings = settings
        self.nft = nft
        self._ready = False
        self._lock = threading.Lock()

    def setup_script(self) -> str:
        table, chain = f"inet {self.settings.table}", self.settings.chain
        return "\n".join(
            [
                f"add table {table}",
                f"add chain {table} {chain} {{ type filter hook input priority {self.settings.priority} ; }}",
                f"add set {table} blocked_v4 {{ type ipv4_addr ; }}",
                f"add set {table} blocked_v6 {{ type ipv6_addr ; }}",
                f"flush chain {table} {chain}",
                f"add rule {table} {chain} ip saddr @blocked_v4 drop",
                f"add rule {table} {chain} ip6 saddr @blocked_v6 drop",
                "",
            ]
        )

    def _element(self, verb: str, params: Mapping[str, Any]) -> Plan:
        address = ipaddress.ip_address(params["address"])
        family_set = "blocked_v4" if address.version == 4 else "blocked_v6"
        return Plan(argv=(self.nft, verb, "element", "inet", self.settings.table, family_set, f"{{ {address} }}"))

    def plan(self, params: Mapping[str, Any]) -> Plan:
        return self._element("add", params)

    def undo_plan(self, params: Mapping[str, Any]) -> Plan:
        return self._element("delete", params)

    def run(self, plan: Plan) -> str:
        with self._lock:
            if not self._ready:
                self.runner((self.nft, "-f", "-"), self.setup_script())
                self._ready = True
        try:
            return super().run(plan)
        except ExecutionError as error:
            if plan.argv[1] == "delete" and "No such file or directory" in str(error):
                return "already absent"  # lifted by hand, or nftables was reset: the address is not blocked
            self._ready = False  # our table may have been removed: set it up again next time
            raise


class SystemctlExecutor(CommandExecutor):
    """restart_service: `systemctl restart NAME`, only for services named in the policy.

    A restart cannot be taken back; its undo checks that the service is running again (`systemctl is-active`).
    """

    def __init__(self, services: Sequence[str], runner: Runner, systemctl: str = "systemctl") -> None:
        super().__init__(runner)
        self.services = frozenset(services)
        self.systemctl = systemctl

    def _service(self, params: Mapping[str, Any]) -> str:
        service = str(params["service"])
        if service not in self.services:
            raise ExecutionError(f"service {service!r} is not one of the configured services {sorted(self.services)}")
        return service

    def plan(self, params: Mapping[str, Any]) -> Plan:
        return Plan(argv=(self.systemctl, "restart", self._service(params)))

    def undo_plan(self, params: Mapping[str, Any]) -> Plan:
        return Plan(argv=(self.systemctl, "is-active", self._service(params)))


class WebhookExecutor:
    """alert_admin: POSTs the alert as JSON, retrying with exponential backoff; undo POSTs a retraction."""

    def __init__(self, settings: WebhookSettings, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.sleep = sleep

    def _post(self, params: Mapping[str, Any], event: str) -> Plan:
        return Plan(url=self.settings.url or "(webhook.url not set)", body={"event": event, **params})

    def plan(self, params: Mapping[str, Any]) -> Plan:
        return self._post(params, "nids.alert")

    def undo_plan(self, params: Mapping[str, Any]) -> Plan:
        return self._post(params, "nids.alert_retracted")

    def run(self, plan: Plan) -> str:
        if self.settings.url is None:
            raise ExecutionError("webhook.url is not set in the policy")
        data = json.dumps(plan.body).encode()
        errors: list[str] = []
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self.sleep(self.settings.backoff_seconds * 2 ** (attempt - 1))
            request = urllib.request.Request(
                self.settings.url, data=data, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.settings.timeout_seconds) as response:
                    return f"HTTP {response.status} after {attempt + 1} attempt(s)"
            except (urllib.error.URLError, OSError) as error:
                errors.append(str(getattr(error, "reason", error)))
        raise ExecutionError(f"webhook failed after {len(errors)} attempt(s): {'; '.join(errors)}")


class LogExecutor:
    """log_only: writes the decision to the `nids.healing` logger; nothing to undo."""

    def plan(self, params: Mapping[str, Any]) -> Plan:
        return Plan(argv=("log", json.dumps(dict(params), sort_keys=True)))

    def undo_plan(self, params: Mapping[str, Any]) -> Plan:
        return Plan(argv=("log", "retracted", json.dumps(dict(params), sort_keys=True)))

    def run(self, plan: Plan) -> str:
        logger.info("self-healing: %s", " ".join(plan.argv[1:]))
        return "logged"


def default_executors(policy: Policy, runner: Runner | None = None) -> dict[str, Executor]:
    runner = runner or CommandRunner()
    return {
        "block_ip": NftablesExecutor(policy.block, runner),
        "restart_service": SystemctlExecutor(policy.services, runner),
        "alert_admin": WebhookExecutor(policy.webhook),
        "log_only": LogExecutor(),
    }
