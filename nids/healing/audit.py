"""Durable audit log of every self-healing decision.

One storage interface (AuditStore) holds all the SQL, written once in a dialect both engines accept (`:name`
parameters, DOUBLE PRECISION epoch timestamps, ON CONFLICT upserts), and runs it on a nids.core.database
`Database`: SQLite (embedded default, a file in the data directory) or PostgreSQL (psycopg 3, for several
replicas sharing one log).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import AnyUrl

from nids.core.database import (
    Database,
    Outage,
    PostgresDatabase,
    SqliteDatabase,
    Statement,
    open_database,
    unavailable_reason,
)
from nids.core.errors import Unavailable
from nids.healing.schemas import ActionQuery, ActionRecord

COLUMNS: tuple[str, ...] = tuple(ActionRecord.model_fields)
_TIME_COLUMNS = frozenset({"created_at", "updated_at", "expires_at", "ended_at"})
_REAL_COLUMNS = _TIME_COLUMNS | {"confidence"}
LIVE_LIMIT = 100_000
PRUNE_BATCH = 5_000  # rows deleted per retention statement: no long lock on a store others write to
DEFAULT_LOCK_SECONDS = 5.0  # settings.healing_audit_lock_seconds
When = datetime | float


def epoch(value: When | None) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else value


def _record(row: Sequence[Any]) -> ActionRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    for column in _TIME_COLUMNS:
        if values[column] is not None:
            values[column] = datetime.fromtimestamp(values[column], UTC)
    values["params"] = json.loads(values["params"])
    return ActionRecord.model_validate(values)


def _row(record: ActionRecord) -> dict[str, Any]:
    values = record.model_dump()
    for column in _TIME_COLUMNS:
        values[column] = epoch(values[column])
    values["params"] = json.dumps(values["params"], sort_keys=True)
    return values


class BlockConflict(RuntimeError):
    """Another process recorded a live block on the same address first."""


class AuditUnavailable(Unavailable):
    """The audit database cannot be reached or written: no decision can be recorded (HTTP 503)."""


class AuditStore:
    """The audit log: insert decisions, update their outcome, list/show them, find live blocks, keep flags; the
    refusals of callers past their budget, in aggregate; retention (`prune`)."""

    def __init__(self, table_prefix: str, db: Database) -> None:
        self.actions, self.state, self.refused = db.tables(table_prefix, "audit", "actions", "state", "refused")
        self.db = db
        self.unique_violation = db.unique_violation
        self.outage = Outage()  # since when calls fail (reported on /readyz)
        self.create_schema()

    def close(self) -> None:
        self.db.close()

    def _run(self, statements: Sequence[Statement], *, schema: bool = False) -> list[tuple[Any, ...]]:
        """The statements, with driver failures other than a unique violation raised as AuditUnavailable."""
        try:
            if schema:  # creating tables: in turn with every other process (nids.core.database)
                self.db.create_schema(statements)
                rows = []
            else:
                rows = self.db.execute(statements)
        except self.db.unique_violation:
            raise
        except self.db.driver_error as error:
            self.outage.failed(error)  # reported on /readyz, with since when and how many calls failed
            raise AuditUnavailable(unavailable_reason("audit log unavailable", error)) from error
        self.outage.recovered()
        return rows

    def create_schema(self) -> None:
        types = {column: "DOUBLE PRECISION" if column in _REAL_COLUMNS else "TEXT" for column in COLUMNS}
        types["action_id"] = "TEXT PRIMARY KEY"
        columns = ", ".join(f"{column} {kind}" for column, kind in types.items())
        self._run(
            [
                (f"CREATE TABLE IF NOT EXISTS {self.actions} ({columns})", {}),
                (f"CREATE INDEX IF NOT EXISTS {self.actions}_created ON {self.actions} (created_at)", {}),
                (f"CREATE INDEX IF NOT EXISTS {self.actions}_src ON {self.actions} (src_ip, action_type)", {}),
                (  # rate limits, shared by every process: decisions per action type within a window
                    f"CREATE INDEX IF NOT EXISTS {self.actions}_by_type ON {self.actions} (action_type, created_at)",
                    {},
                ),
                (  # live blocks (sweeps, restores) without scanning every decision ever recorded
                    f"CREATE INDEX IF NOT EXISTS {self.actions}_live_blocks ON {self.actions} (expires_at) "
                    "WHERE action_type = 'block_ip' AND parent_id IS NULL AND ended_at IS NULL",
                    {},
                ),
                (  # one live block per address and mode, even with several processes or replicas
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {self.actions}_one_block ON {self.actions} (src_ip, mode) "
                    "WHERE action_type = 'block_ip' AND parent_id IS NULL AND ended_at IS NULL",
                    {},
                ),
                (f"CREATE TABLE IF NOT EXISTS {self.state} (key TEXT PRIMARY KEY, value TEXT NOT NULL)", {}),
                (  # callers past their budget: one row per caller and minute, however many events they sent
                    f"CREATE TABLE IF NOT EXISTS {self.refused} (minute DOUBLE PRECISION NOT NULL, "
                    "requester TEXT NOT NULL, requests INTEGER NOT NULL, events INTEGER NOT NULL, "
                    "PRIMARY KEY (minute, requester))",
                    {},
                ),
            ],
            schema=True,
        )
        self._add_caller_column()

    def _add_caller_column(self) -> None:
        """Logs written before the `caller` column get it; their rows count against the rate limits as before.
        Several processes may start at once: one adds it, the others find it added."""
        probe: list[Statement] = [(f"SELECT caller FROM {self.actions} LIMIT 1", {})]
        try:
            self.db.execute(probe)
            return
        except self.db.driver_error:
            pass
        try:
            self.db.execute(
                [
                    (f"ALTER TABLE {self.actions} ADD COLUMN caller TEXT", {}),
                    (f"UPDATE {self.actions} SET caller = 'before-access-control'", {}),
                ]
            )
        except self.db.driver_error:  # another process added it first
            self._run(probe)

    def insert(self, records: Sequence[ActionRecord]) -> None:
        sql = f"INSERT INTO {self.actions} ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"
        if not records:
            return
        try:
            self._run([(sql, _row(record)) for record in records])
        except self.db.unique_violation as error:
            raise BlockConflict(str(error)) from error

    def update(self, action_id: str, **values: Any) -> None:
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"not audit columns: {sorted(unknown)}")
        values = {key: epoch(value) if key in _TIME_COLUMNS else value for key, value in values.items()}
        assignments = ", ".join(f"{column} = :{column}" for column in values)
        self._run(
            [
                (
                    f"UPDATE {self.actions} SET {assignments} WHERE action_id = :action_id",
                    {**values, "action_id": action_id},
                )
            ]
        )

    def _select(
        self, where: Sequence[str], params: Mapping[str, Any], limit: int, order: str = "created_at DESC"
    ) -> list[ActionRecord]:
        condition = " AND ".join(where) or "1 = 1"
        sql = f"SELECT {', '.join(COLUMNS)} FROM {self.actions} WHERE {condition} ORDER BY {order} LIMIT :limit"
        return [_record(row) for row in self._run([(sql, {**params, "limit": limit})])]

    def get(self, action_id: str) -> ActionRecord | None:
        found = self._select(["action_id = :action_id"], {"action_id": action_id}, 1)
        return found[0] if found else None

    def list(self, query: ActionQuery) -> list[ActionRecord]:
        """Newest first."""
        conditions = {
            "action_type": "action_type = :action_type",
            "status": "status = :status",
            "address": "(src_ip = :address OR dst_ip = :address)",
            "since": "created_at >= :since",
            "until": "created_at < :until",
        }
        given = {key: epoch(value) for key, value in query.model_dump(exclude={"limit"}, exclude_none=True).items()}
        return self._select([conditions[key] for key in given], given, query.limit)

    def transition(self, action_id: str, old: str, new: str, now: When) -> bool:
        """Atomically move an action from status `old` to `new`; False if it was no longer in `old`."""
        sql = (
            f"UPDATE {self.actions} SET status = :new, updated_at = :now "
            "WHERE action_id = :action_id AND status = :old RETURNING action_id"
        )
        return bool(self._run([(sql, {"action_id": action_id, "old": old, "new": new, "now": epoch(now)})]))

    def count_recent(self, windows: Mapping[str, tuple[When, int]]) -> dict[str, int]:
        """Per action type (its window start, its limit), the decisions since then that used the rate limit (of
        callers authorised to enforce; not rate-limited, not extensions), counted up to the limit: the limits hold
        across every process and replica sharing the log, and each count reads at most about `limit` rows of the
        (action_type, created_at) index however many rate-limited decisions the window holds."""
        if not windows:
            return {}
        params: dict[str, Any] = {}
        selects = []
        for i, (action_type, (since, limit)) in enumerate(windows.items()):
            selects.append(
                f"SELECT {i} AS i, COUNT(*) AS n FROM (SELECT 1 FROM {self.actions} "
                f"WHERE action_type = :type{i} AND created_at > :since{i} AND parent_id IS NULL "
                f"AND status != 'rate_limited' AND caller IS NOT NULL LIMIT :limit{i}) AS w{i}"
            )
            params |= {f"type{i}": action_type, f"since{i}": epoch(since), f"limit{i}": limit}
        counts = dict(self._run([(" UNION ALL ".join(selects), params)]))
        return {action_type: int(counts.get(i, 0)) for i, action_type in enumerate(windows)}

    def extend_block(self, action_id: str, expires_at: When, now: When) -> bool:
        """Push a live block's expiry; False when it ended meanwhile (e.g. an expiry sweep lifted it first)."""
        sql = (
            f"UPDATE {self.actions} SET expires_at = :expires_at, updated_at = :now "
            "WHERE action_id = :action_id AND ended_at IS NULL RETURNING action_id"
        )
        params = {"action_id": action_id, "expires_at": epoch(expires_at), "now": epoch(now)}
        return bool(self._run([(sql, params)]))

    def claim_expiry(self, action_id: str, now: When) -> bool:
        """Mark a due block as ending, atomically with its expiry check: False when it was extended (or ended)
        meanwhile. A block extension and an expiry sweep can never both win."""
        sql = (
            f"UPDATE {self.actions} SET ended_at = :now "
            "WHERE action_id = :action_id AND ended_at IS NULL AND expires_at <= :now RETURNING action_id"
        )
        return bool(self._run([(sql, {"action_id": action_id, "now": epoch(now)})]))

    def _live_blocks(self, extra: str, params: Mapping[str, Any]) -> list[ActionRecord]:
        """Blocks holding an address (or that would, in dry_run): not ended, not an extension."""
        where = ["action_type = 'block_ip'", "parent_id IS NULL", "ended_at IS NULL", extra]
        # ordered by expiry so the live-blocks index serves filter and order (by creation time, the planner walks
        # every decision ever recorded: 200 ms at 400k rows, holding the store's lock)
        return self._select(where, params, LIVE_LIMIT, order="expires_at")

    def live_block(self, address: str, mode: str) -> ActionRecord | None:
        """The block (of this mode) currently held on an address, if any."""
        found = self._live_blocks("src_ip = :address AND mode = :mode", {"address": address, "mode": mode})
        return found[0] if found else None

    def enforced_blocks(self) -> list[ActionRecord]:
        """Live blocks that were really applied (to re-apply after a reboot emptied nftables)."""
        return self._live_blocks("mode = 'enforce' AND status = 'executed'", {})

    def due_blocks(self, now: When) -> list[ActionRecord]:
        """Live blocks whose expiry has passed."""
        return self._live_blocks("expires_at <= :now", {"now": epoch(now)})

    def count_refused(self, requester: str, minute: float, events: int) -> None:
        """Add one refused request of `events` events to the requester's aggregate row of that minute."""
        sql = (
            f"INSERT INTO {self.refused} (minute, requester, requests, events) "
            "VALUES (:minute, :requester, 1, :events) "
            f"ON CONFLICT (minute, requester) DO UPDATE SET requests = {self.refused}.requests + 1, "
            f"events = {self.refused}.events + excluded.events"
        )
        self._run([(sql, {"minute": minute, "requester": requester, "events": events})])

    def refusals(self, since: When = 0.0) -> list[tuple[float, str, int, int]]:
        """(minute, requester, requests, events) of the refused requests since then, oldest first."""
        sql = f"SELECT minute, requester, requests, events FROM {self.refused} WHERE minute >= :since ORDER BY minute"
        return [(float(m), str(r), int(q), int(e)) for m, r, q, e in self._run([(sql, {"since": epoch(since)})])]

    def count(self) -> int:
        return int(self._run([(f"SELECT COUNT(*) FROM {self.actions}", {})])[0][0])

    def prune(self, older_than: When, keep_rows: int, batch: int = PRUNE_BATCH) -> int:
        """Retention, at most `batch` rows a call: delete decisions created before `older_than`, or older than the
        newest `keep_rows`; never a live enforced block (nor its extensions: it is lifted on time) or an action still
        queued or running (a dry-run block is only a record). Also the
        refusal aggregates before `older_than`. The decisions deleted."""
        enforced_live = "action_type = 'block_ip' AND mode = 'enforce' AND ended_at IS NULL"
        settled = (
            f"status NOT IN ('queued', 'running') AND NOT ({enforced_live}) "
            f"AND (parent_id IS NULL OR parent_id NOT IN (SELECT action_id FROM {self.actions} WHERE {enforced_live}))"
        )
        # the first row past the newest `keep_rows`, by (created_at, action_id): exact even when a batch of
        # decisions shares one timestamp
        first_past = (
            f"(SELECT created_at, action_id FROM {self.actions} "
            "ORDER BY created_at DESC, action_id DESC LIMIT 1 OFFSET :keep)"
        )
        due = (
            f"SELECT action_id FROM {self.actions} WHERE {settled} AND (created_at < :older_than "
            f"OR (created_at, action_id) <= {first_past}) ORDER BY created_at LIMIT :batch"
        )
        params = {"older_than": epoch(older_than), "keep": keep_rows, "batch": batch}
        rows = self._run(
            [
                (f"DELETE FROM {self.refused} WHERE minute < :older_than", params),
                (f"DELETE FROM {self.actions} WHERE action_id IN ({due}) RETURNING action_id", params),
            ]
        )
        return len(rows)

    def get_flag(self, key: str) -> str | None:
        rows = self._run([(f"SELECT value FROM {self.state} WHERE key = :key", {"key": key})])
        return rows[0][0] if rows else None

    def set_flag(self, key: str, value: str) -> None:
        sql = (
            f"INSERT INTO {self.state} (key, value) VALUES (:key, :value) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        self._run([(sql, {"key": key, "value": value})])


class SqliteAuditStore(AuditStore):
    """Embedded default: one SQLite file (nids.core.database.SqliteDatabase)."""

    def __init__(
        self,
        path: Path,
        table_prefix: str = "healing_",
        checkpoint_seconds: float = 1.0,
        lock_seconds: float = DEFAULT_LOCK_SECONDS,
    ) -> None:
        # a write waits at most lock_seconds for another writer, then fails (AuditUnavailable: 503)
        super().__init__(table_prefix, SqliteDatabase(path, checkpoint_seconds, lock_seconds))
        self.path = path


class PostgresAuditStore(AuditStore):
    """Shared log for several replicas: PostgreSQL (nids.core.database.PostgresDatabase)."""

    def __init__(self, url: str, table_prefix: str = "healing_", lock_seconds: float = DEFAULT_LOCK_SECONDS) -> None:
        # a statement waits at most lock_seconds for a row or table lock, then fails (AuditUnavailable: 503)
        super().__init__(table_prefix, PostgresDatabase(url, lock_seconds=lock_seconds))
        self.url = url


def open_audit_store(
    url: AnyUrl | str, table_prefix: str = "healing_", lock_seconds: float = DEFAULT_LOCK_SECONDS
) -> AuditStore:
    """`sqlite:///relative/or//absolute/path.sqlite3` or `postgresql://user@host:port/db`."""
    return AuditStore(table_prefix, open_database(url, lock_seconds))
