"""The self-healing engine: decide fast on the request path, execute safely in the background.

`handle` applies the policy and the safety rules to each event, writes one audit row per decision and queues
enforced actions; it never waits for an executor. Callers not authorised to enforce are held to a budget of their
own (nids.healing.budget) and never use the rate limits of enforced actions; the audit log is pruned in the
background (retention by age and rows). One worker thread per action type runs the queue (so a slow
webhook never delays a block), re-checking the stop switch before each execution; the block_ip worker also
lifts expired blocks.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nids.core.actions import ACTION_TYPES, ActionStatus, ActionType, AttackEvent, HealingAction, Mode
from nids.core.errors import Conflict, NotFound
from nids.core.settings import Settings
from nids.healing.audit import PRUNE_BATCH, AuditStore, BlockConflict, When, open_audit_store
from nids.healing.budget import Retention, UnauthorisedBudget
from nids.healing.executors import Executor, default_executors
from nids.healing.policy import AlertRule, BlockRule, Policy, RestartRule, Rule, load_policy
from nids.healing.schemas import ActionQuery, ActionRecord

logger = logging.getLogger("nids.healing")
Clock = Callable[[], float]
DISRUPTIVE: frozenset[str] = frozenset({"block_ip", "restart_service"})
ENFORCEMENT_FLAG = "enforcement"
REVERTIBLE = frozenset({ActionStatus.DRY_RUN, ActionStatus.QUEUED, ActionStatus.EXECUTED, ActionStatus.REVERT_FAILED})
STALE_RUNNING_SECONDS = 600.0  # far beyond any executor's timeouts
NOT_AUTHORISED = "caller not authorised to enforce"
IN_PROCESS = "in-process"  # the caller of `handle` without a token: the stream worker, a script, the tests
DECIDE_ATTEMPTS = 3  # a batch is decided again when a concurrent block or expiry changed what it relied on


class ActionNotFound(NotFound):
    """No audit record has this id."""


class NotRevertible(Conflict):
    """The action cannot be reverted (already ended, or nothing ran)."""


class RateQuota:
    """What one batch of decisions may still use of each sliding-window limit (`max_actions` per `per_seconds`).

    The decisions already counted are those in the audit log, so every process and replica sharing the log shares
    the limits (as the stop switch); nothing is charged for a batch that was not recorded, so re-deciding a batch
    never charges twice. Batches decided at the same instant in two processes may each take the last slot.
    """

    def __init__(self, policy: Policy, store: AuditStore, now: float) -> None:
        self.limits = policy.rate_limits
        windows = {name: (now - limit.per_seconds, limit.max_actions) for name, limit in self.limits.items()}
        self.used = store.count_recent(windows)

    def allow(self, action_type: ActionType) -> bool:
        limit = self.limits.get(action_type)
        if limit is None:
            return True
        if self.used[action_type] >= limit.max_actions:
            return False
        self.used[action_type] += 1
        return True


def host_addresses() -> list[str]:
    """The addresses this host's name resolves to (part of the service's own addresses)."""
    try:
        return sorted({str(info[4][0]).split("%")[0] for info in socket.getaddrinfo(socket.gethostname(), None)})
    except OSError:
        return []


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


class HealingEngine:
    """Policy + safety rules + audit log + background executors.

    `executors` maps every action type to its executor (default: nftables, systemctl, webhook, log);
    `clock` gives epoch seconds (tests inject one); `own_addresses` join the allowlist; `enforcement_stopped`
    is the stop setting; the block_ip worker lifts expired blocks every `sweep_seconds` (None: only when
    `sweep_expired` is called).
    """

    def __init__(
        self,
        policy: Policy,
        store: AuditStore,
        executors: Mapping[str, Executor] | None = None,
        *,
        clock: Clock = time.time,
        own_addresses: Iterable[str] = (),
        enforcement_stopped: bool = False,
        sweep_seconds: float | None = 5.0,
        budget: UnauthorisedBudget | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.executors = dict(executors or default_executors(policy))
        missing = [name for name in ACTION_TYPES if name not in self.executors]
        if missing:
            raise ValueError(f"no executor for action types {missing}")
        self.clock = clock
        try:
            self.allowlist = policy.networks(list(own_addresses))
        except ValueError as error:
            raise ValueError(f"own addresses (NIDS_HEALING_OWN_ADDRESSES): {error}") from None
        self.stopped_by_setting = enforcement_stopped
        self.sweep_seconds = sweep_seconds
        self._lock = threading.Lock()  # decisions: rate limits and one live block per address
        self._undo_lock = threading.Lock()  # reverts and expiries never race each other
        self._closed = False
        self._queues: dict[str, queue.Queue[str | None]] = {
            name: queue.Queue(policy.queue_size) for name in self.executors
        }
        self._workers = [
            threading.Thread(target=self._work, args=(name,), name=f"healing-{name}", daemon=True)
            for name in self.executors
        ]
        self.budget = budget
        self.retention = retention
        self._stopping = threading.Event()
        if retention is not None:
            self._workers.append(threading.Thread(target=self._retain, name="healing-retention", daemon=True))
        for worker in self._workers:
            worker.start()
        for pending in self.store.list(
            ActionQuery(status=ActionStatus.QUEUED, limit=1000)
        ):  # accepted before a restart
            self._enqueue(pending)

    @classmethod
    def from_settings(cls, settings: Settings) -> HealingEngine:
        """Load and validate the policy (PolicyError stops startup), open the audit log, start the workers."""
        policy = load_policy(settings.healing_policy_file)
        store = open_audit_store(
            settings.audit_url, settings.healing_audit_table_prefix, settings.healing_audit_lock_seconds
        )
        return cls(
            policy,
            store,
            own_addresses=[*settings.healing_own_addresses, *host_addresses()],
            enforcement_stopped=settings.healing_enforcement_stopped,
            budget=UnauthorisedBudget.from_settings(settings),
            retention=Retention.from_settings(settings),
        )

    # --- the stop switch -----------------------------------------------------------------------------
    @property
    def enforcement_enabled(self) -> bool:
        """False when the setting or the switch (shared through the audit store) stops all enforcement."""
        return not self.stopped_by_setting and self.store.get_flag(ENFORCEMENT_FLAG) != "stopped"

    def set_enforcement(self, enabled: bool) -> None:
        """Stop (or resume) all enforcement at once, for every replica sharing the audit store.

        Stopped: new decisions are recorded as dry_run and queued executions are suppressed. Live blocks
        still expire (lifting a block is always safe).
        """
        if enabled and self.stopped_by_setting:
            raise Conflict("enforcement is stopped by NIDS_HEALING_ENFORCEMENT_STOPPED; change it and restart")
        self.store.set_flag(ENFORCEMENT_FLAG, "on" if enabled else "stopped")
        logger.warning("self-healing enforcement %s", "resumed" if enabled else "STOPPED")

    # --- deciding ---------------------------------------------------------------------------------------
    def handle(
        self, events: Sequence[AttackEvent], *, caller: str | None = IN_PROCESS, requester: str | None = None
    ) -> list[HealingAction]:
        """Decide and audit every event, queue what is enforced; never waits for an executor.

        `caller` is the label of the token that sent the events, recorded as `authorised_by` in the parameters of
        every enforced action; None (a caller without a sensor token): what would be enforced is recorded as
        dry_run with the reason NOT_AUTHORISED, outside the rate limits. Such a caller's events are charged to
        `requester` (who sent them over HTTP: a viewer's label, `anonymous`) against the budget: past it,
        TooManyRequests, and the request is counted in aggregate rather than decided.
        """
        if caller is None and requester is not None and self.budget is not None:
            refused = self.budget.refusal(requester, len(events))
            if refused is not None:
                self.store.count_refused(requester, self.clock() // 60 * 60, len(events))
                raise refused
        enforcing = self.enforcement_enabled
        with self._lock:
            records = self._decide_retrying(events, enforcing, caller)
        for record in records:
            if record.status == ActionStatus.QUEUED:
                self._enqueue(record)
        return [record.to_action() for record in records]

    def _decide_retrying(
        self, events: Sequence[AttackEvent], enforcing: bool, caller: str | None
    ) -> list[ActionRecord]:
        for _ in range(DECIDE_ATTEMPTS):
            try:
                return self._decide_all(events, enforcing, caller)
            except BlockConflict:  # another process blocked, or a sweep lifted, one of the addresses meanwhile
                continue
        raise Conflict(
            f"the blocks on these addresses changed under {DECIDE_ATTEMPTS} concurrent decisions; send the events again"
        )

    def _decide_all(self, events: Sequence[AttackEvent], enforcing: bool, caller: str | None) -> list[ActionRecord]:
        """Decide a batch and record it in one insert; BlockConflict when a block it relies on changed meanwhile."""
        now = self.clock()
        quota = RateQuota(self.policy, self.store, now)
        blocks: dict[tuple[str, str], ActionRecord] = {}  # blocks decided in this batch, by (address, mode)
        records = [self._decide(event, now, enforcing, blocks, quota, caller) for event in events]
        decided = {record.action_id for record in records}
        # extend first: if an expiry sweep claimed a block before, decide again (a new block)
        for record in records:
            parent = record.parent_id
            if (
                parent is not None
                and parent not in decided
                and not self.store.extend_block(parent, record.expires_at or now, now)
            ):
                raise BlockConflict(f"block {parent} ended while it was being extended")
        self.store.insert(records)
        return records

    def _degrade_reason(self, event: AttackEvent, rule: Rule, service: str | None) -> str | None:
        minimum = self.policy.min_confidence
        if event.confidence is None:
            return f"no classifier confidence given; {rule.action} needs at least {minimum}"
        if event.confidence < minimum:
            return f"confidence {event.confidence:.3f} is below min_confidence {minimum}"
        if isinstance(rule, BlockRule):
            if event.src_ip is None:
                return "no source IP to block"
            address = ipaddress.ip_address(event.src_ip)
            network = next((net for net in self.allowlist if address in net), None)
            if network is not None:
                return f"source {address} is allowlisted ({network}); it is never blocked"
        if isinstance(rule, RestartRule) and service not in self.policy.services:
            return f"target service {service!r} is not one of the configured services {self.policy.services}"
        return None

    def _decide(
        self,
        event: AttackEvent,
        now: float,
        enforcing: bool,
        blocks: dict[tuple[str, str], ActionRecord],
        quota: RateQuota,
        caller: str | None = IN_PROCESS,
    ) -> ActionRecord:
        """The audit record of one decision (a block extension when the address is already blocked)."""
        attack = str(event.attack_type)
        rule = self.policy.rule_for(attack)
        action: ActionType = rule.action
        service = (event.target_service or rule.params.service) if isinstance(rule, RestartRule) else None
        reason = self._degrade_reason(event, rule, service) if action in DISRUPTIVE else None
        block_seconds = (rule.params.block_seconds or self.policy.block.seconds) if isinstance(rule, BlockRule) else 0
        mode: Mode = "enforce" if enforcing and caller and action in self.policy.enforce else "dry_run"
        if reason is None and action == "block_ip":
            key = (str(event.src_ip), mode)
            live = blocks.get(key) or self.store.live_block(*key)
            if live is not None:
                return self._extension(event, rule, live, now, now + block_seconds, caller)
        if reason is None and action in DISRUPTIVE and caller is not None and not quota.allow(action):
            limit = self.policy.rate_limits[action]
            reason = f"rate limit of {action} reached ({limit.max_actions} per {limit.per_seconds:g} s)"
        if reason is not None:
            action = "alert_admin"
        mode = "enforce" if enforcing and action in self.policy.enforce else "dry_run"
        unauthorised = mode == "enforce" and caller is None
        if unauthorised:
            mode = "dry_run"
        status = ActionStatus.DRY_RUN if mode == "dry_run" else ActionStatus.QUEUED
        if action in ("alert_admin", "log_only") and caller is not None and not quota.allow(action):
            status = ActionStatus.RATE_LIMITED
        params = self._params(action, event, rule, service, block_seconds, reason)
        if mode == "enforce":
            params["authorised_by"] = caller
        record = self._record(
            event,
            rule,
            caller=caller,
            action=action,
            mode=mode,
            status=status,
            params=params,
            reason="; ".join(filter(None, [reason, NOT_AUTHORISED if unauthorised else None])) or None,
            command=self.executors[action].plan(params).text,
            now=now,
            expires_at=now + block_seconds if action == "block_ip" else None,
        )
        if action == "block_ip":
            blocks[(str(event.src_ip), mode)] = record
        return record

    def _params(
        self, action: str, event: AttackEvent, rule: Rule, service: str | None, block_seconds: int, reason: str | None
    ) -> dict[str, Any]:
        if action == "block_ip":
            return {"address": event.src_ip, "block_seconds": block_seconds}
        if action == "restart_service":
            return {"service": service}
        context = event.model_dump(exclude_none=True) | {"rule": rule.name}
        if action == "log_only":
            return context
        severity = rule.params.severity if isinstance(rule, AlertRule) else "high"
        return context | {"severity": severity} | ({"degraded_from": rule.action, "reason": reason} if reason else {})

    def _record(
        self,
        event: AttackEvent,
        rule: Rule,
        *,
        caller: str | None,
        action: ActionType,
        mode: Mode,
        status: ActionStatus,
        params: dict[str, Any],
        reason: str | None,
        command: str | None,
        now: float,
        expires_at: float | None = None,
        parent_id: str | None = None,
    ) -> ActionRecord:
        return ActionRecord(
            action_id=uuid.uuid4().hex,
            created_at=_time(now),
            updated_at=_time(now),
            attack_type=str(event.attack_type),
            confidence=event.confidence,
            model_version=event.model_version,
            src_ip=event.src_ip,
            dst_ip=event.dst_ip,
            target_service=event.target_service,
            flow_id=event.flow_id,
            event_timestamp=event.timestamp,
            rule=rule.name,
            action_type=action,
            mode=mode,
            status=status,
            description=_describe(action, params, _time(expires_at), extends=parent_id),
            params=params,
            reason=reason,
            command=command,
            outcome=None,
            expires_at=_time(expires_at),
            parent_id=parent_id,
            ended_at=None,
            undo_command=None,
            undo_outcome=None,
            caller=caller,
        )

    def _extension(
        self, event: AttackEvent, rule: Rule, live: ActionRecord, now: float, expires_at: float, caller: str | None
    ) -> ActionRecord:
        return self._record(
            event,
            rule,
            caller=caller,
            action="block_ip",
            mode=live.mode,
            status=ActionStatus.EXTENDED,
            params={**live.params, "extends": live.action_id},
            reason=None,
            command=None,
            now=now,
            expires_at=max(expires_at, live.expires_at.timestamp() if live.expires_at else expires_at),
            parent_id=live.action_id,
        )

    # --- executing --------------------------------------------------------------------------------------
    def _enqueue(self, record: ActionRecord) -> None:
        try:
            self._queues[record.action_type].put_nowait(record.action_id)
        except queue.Full:
            self._finish(record.action_id, ActionStatus.FAILED, "execution queue full")

    def _work(self, action_type: str) -> None:
        pending = self._queues[action_type]
        next_sweep = 0.0
        if action_type == "block_ip":
            try:
                self._restore_blocks()
            except Exception:  # the worker must start anyway; the log says why blocks were not restored
                logger.exception("self-healing could not restore live blocks")
        while True:
            sweeping = action_type == "block_ip" and self.sweep_seconds is not None
            try:
                action_id = pending.get(timeout=self.sweep_seconds if sweeping else None)
            except queue.Empty:
                action_id = ""
            if action_id is None:
                pending.task_done()
                return
            try:
                if action_id:
                    self._execute(action_id)
                if sweeping and self.clock() >= next_sweep:
                    next_sweep = self.clock() + (self.sweep_seconds or 0.0)
                    self.sweep_expired()
            except Exception:  # a worker must outlive any failure; the audit row keeps the decision
                logger.exception("self-healing worker %s failed", action_type)
            finally:
                if action_id:
                    pending.task_done()

    def _restore_blocks(self) -> None:
        """Re-apply live enforced blocks (nftables is empty after a reboot); adding an element is idempotent."""
        if not self.enforcement_enabled:
            return
        executor = self.executors["block_ip"]
        for block in self.store.enforced_blocks():
            try:
                executor.run(executor.plan(block.params))
            except Exception as error:
                logger.error("self-healing could not restore block %s: %s", block.action_id, error)

    def _execute(self, action_id: str) -> None:
        if not self.store.transition(action_id, ActionStatus.QUEUED, ActionStatus.RUNNING, self.clock()):
            return  # reverted (or taken by another replica) before it ran
        record = self.store.get(action_id)
        if record is None:
            return
        if not self.enforcement_enabled:
            self._finish(action_id, ActionStatus.SUPPRESSED, "enforcement stopped before execution")
            return
        executor = self.executors[record.action_type]
        try:
            outcome = executor.run(executor.plan(record.params))
        except Exception as error:
            logger.error("self-healing %s %s failed: %s", record.action_type, action_id, error)
            self._finish(action_id, ActionStatus.FAILED, str(error))
            return
        self.store.update(action_id, status=ActionStatus.EXECUTED, outcome=outcome, updated_at=self.clock())

    def _finish(self, action_id: str, status: ActionStatus, outcome: str) -> None:
        """End an action that did nothing (failed or suppressed): nothing left to undo, no live block."""
        now = self.clock()
        self.store.update(action_id, status=status, outcome=outcome, updated_at=now, ended_at=now)

    def wait_idle(self) -> None:
        """Block until every queued execution has run (tests, orderly shutdown)."""
        for pending in self._queues.values():
            pending.join()

    # --- undoing ---------------------------------------------------------------------------------------
    def revert(self, action_id: str) -> ActionRecord:
        """Undo an action (an extension reverts the block it extended); audited. Returns the updated record."""
        record = self.get_action(action_id)
        if record is None:
            raise ActionNotFound(f"no self-healing action with id {action_id!r}")
        target = self.get_action(record.parent_id) if record.parent_id else record
        if target is None:
            raise ActionNotFound(f"action {action_id!r} extends {record.parent_id!r}, which is not in the audit log")
        with self._undo_lock:
            return self._end(target.action_id, ActionStatus.REVERTED)

    def sweep_expired(self) -> list[ActionRecord]:
        """Lift every block whose expiry has passed (the block_ip worker calls this every few seconds)."""
        lifted = []
        with self._undo_lock:
            now = self.clock()
            for block in self.store.due_blocks(now):
                if not self.store.claim_expiry(block.action_id, now):
                    continue  # extended (or ended) since it was found due: still in force
                try:
                    lifted.append(self._end(block.action_id, ActionStatus.EXPIRED, claimed=True))
                except NotRevertible:
                    self.store.update(block.action_id, ended_at=None)  # still running: lifted on a later sweep
        return lifted

    def _end(self, action_id: str, final_status: ActionStatus, *, claimed: bool = False) -> ActionRecord:
        """End an action (undoing what ran); `claimed`: an expiry sweep already marked it as ending."""
        record = self.store.get(action_id)
        if record is None:
            raise ActionNotFound(f"no self-healing action with id {action_id!r}")
        now = self.clock()
        cancelled = record.status == ActionStatus.QUEUED and self.store.transition(
            action_id, ActionStatus.QUEUED, final_status, now
        )
        if not cancelled and record.status == ActionStatus.QUEUED:
            record = self.store.get(action_id) or record  # a worker took it meanwhile
        # an action left `running` by a process that died is treated as executed once it is stale
        stale = record.status == ActionStatus.RUNNING and now - record.updated_at.timestamp() > STALE_RUNNING_SECONDS
        ended_before = record.ended_at is not None and not claimed
        if not (cancelled or stale) and (ended_before or record.status not in REVERTIBLE):
            raise NotRevertible(f"action {action_id} cannot be reverted now: its status is '{record.status}'")
        executor = self.executors[record.action_type]
        undo = executor.undo_plan(record.params)
        status, outcome = final_status, "cancelled before it ran" if cancelled else "nothing ran (dry run)"
        if stale or record.status in (ActionStatus.EXECUTED, ActionStatus.REVERT_FAILED):
            try:
                outcome = executor.run(undo)
            except Exception as error:
                status, outcome = ActionStatus.REVERT_FAILED, str(error)
        ended_at = None if status == ActionStatus.REVERT_FAILED else now  # a failed undo leaves the block live
        self.store.update(
            action_id, status=status, undo_command=undo.text, undo_outcome=outcome, updated_at=now, ended_at=ended_at
        )
        logger.info("self-healing %s %s: %s", status, action_id, outcome)
        return self.store.get(action_id)  # type: ignore[return-value]

    # --- reading ---------------------------------------------------------------------------------------
    def list_actions(
        self,
        *,
        action_type: str | None = None,
        status: ActionStatus | None = None,
        address: str | None = None,
        since: When | None = None,
        until: When | None = None,
        limit: int = 100,
    ) -> list[ActionRecord]:
        """Newest first; ValidationError names a bad filter (address, limit within [1, 1000], ...)."""
        query = ActionQuery(
            action_type=action_type, status=status, address=address, since=since, until=until, limit=limit
        )
        return self.store.list(query)

    def get_action(self, action_id: str) -> ActionRecord | None:
        return self.store.get(action_id)

    # --- retention ---------------------------------------------------------------------------------------
    def prune(self) -> int:
        """Apply the retention once (batch after batch); the decisions deleted."""
        assert self.retention is not None
        deleted = 0
        while True:
            older_than = self.clock() - self.retention.max_age_seconds
            n = self.store.prune(older_than, self.retention.max_rows)
            deleted += n
            if n < PRUNE_BATCH:
                return deleted

    def _retain(self) -> None:
        assert self.retention is not None
        while not self._stopping.wait(self.retention.every_seconds):
            try:
                if deleted := self.prune():
                    logger.info("audit log retention: %d decisions deleted", deleted)
            except Exception as error:  # the store is down: try again next time
                logger.warning("audit log retention failed: %s", error)

    def close(self) -> None:
        """Stop the workers after the queued executions have run, then close the audit store."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        for pending in self._queues.values():
            pending.put(None)
        for worker in self._workers:
            worker.join()
        self.store.close()


def _describe(action: str, params: Mapping[str, Any], expires_at: datetime | None, extends: str | None) -> str:
    if extends is not None:
        return f"Extend the block on {params['address']} (action {extends}) until {expires_at:%Y-%m-%d %H:%M:%S} UTC"
    if action == "block_ip":
        return f"Block traffic from {params['address']} with nftables until {expires_at:%Y-%m-%d %H:%M:%S} UTC"
    if action == "restart_service":
        return f"Restart service {params['service']} with systemctl"
    if action == "alert_admin":
        cause = f" ({params['reason']})" if params.get("reason") else ""
        return f"Alert the administrator ({params['severity']}): {params['attack_type']}{cause}"
    return f"Log the {params['attack_type']} verdict"
