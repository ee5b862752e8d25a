"""Durable lifecycle state shared by every worker and replica: active versions, their history, the audit trail.

Three tables (prefix NIDS_MODEL_STATE_TABLE_PREFIX) on a nids.core.database `Database` (SQLite file by default,
PostgreSQL by URL):

- `active`: per model type the active tag, the stack of previously active tags (what `deactivate` rolls back
  to), who activated it, when and why, and a generation number. A switch is a compare-and-set on the
  generation, so two concurrent activations never both win.
- `versions`: what the store cannot hold about a version: its upload description, who uploaded it, whether it
  was retired (deleted without removing its files) and the last result of its checks.
- `events`: one row per authorised write (lifecycle changes, self-healing reverts, the enforcement switch):
  who (the token's label), when, what, from, to, why.
- `aliases`: the original system's integer model id of each tag (1, 2, ... in the order versions were first
  seen); an id is never reused, even after its version is deleted from the store.
- `packages`: the signed package (nids.models.packages) of every version uploaded, imported or first activated
  through any replica, stored once: a replica whose own BentoML store lacks a recorded version fetches it from
  here, verifies it (signature, manifest) and copies it into its store before loading it (docs/deploy.md).
- `replicas`: one heartbeat row per serving process (replica id and worker): the versions it serves, whether
  they are the recorded ones, why not, when it last reported (`GET /api/v1/models/status/fleet`).

A row that cannot be read (unparseable JSON, a wrong type) raises `StateUnavailable` naming the table and the
row, like an unreachable database: the service is unready with that reason until the row is fixed.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from pydantic import AnyUrl, BaseModel, Field

from nids.core.database import (
    Database,
    Statement,
    cause_of,
    open_database,
    open_errors,
    redacted,
    unavailable_reason,
)
from nids.core.errors import Unavailable

HISTORY_LIMIT = 50
T = TypeVar("T")


class StateUnavailable(Unavailable):
    """The lifecycle database cannot be reached or written, or holds a row that cannot be read (HTTP 503)."""


@dataclass(frozen=True)
class ActiveState:
    model_type: str
    tag: str
    history: tuple[str, ...]  # previously active tags, oldest first
    activated_by: str
    activated_at: float
    reason: str
    generation: int


class LifecycleEvent(BaseModel):
    event_id: str
    at: float = Field(description="epoch seconds")
    actor: str = Field(description="label of the token that authorised it ('startup' for the initial version)")
    action: str
    model_type: str | None = None
    from_tag: str | None = None
    to_tag: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    from_id: int | None = Field(default=None, description="the integer id of from_tag (see the model entries' id)")
    to_id: int | None = Field(default=None, description="the integer id of to_tag")


@dataclass(frozen=True)
class Heartbeat:
    replica_id: str
    worker: int
    served: dict[str, str]  # model type -> tag this process serves
    in_sync: bool
    error: str | None
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class StoredPackage:
    tag: str
    sha256: str
    size: int
    stored_by: str
    stored_at: float


@dataclass(frozen=True)
class VersionNote:
    tag: str
    description: str
    uploaded_by: str | None
    retired: bool
    check_status: str | None  # last activation check: "passed" or the failure message
    checked_at: float | None


_EVENT_COLUMNS = ("event_id", "at", "actor", "action", "model_type", "from_tag", "to_tag", "reason", "detail")
_ACTIVE_COLUMNS = "model_type, tag, history, activated_by, activated_at, reason, generation"
_NOTE_COLUMNS = "tag, description, uploaded_by, retired, check_status, checked_at"
_HEARTBEAT_COLUMNS = "replica_id, worker, served, in_sync, error, started_at, heartbeat_at"
_PACKAGE_COLUMNS = "tag, sha256, size, stored_by, stored_at"


class LifecycleStore:
    def __init__(self, db: Database, prefix: str = "lifecycle_", where: str = "") -> None:
        """`where`: the database and the setting that chose it, named in every StateUnavailable."""
        self.where = f" (at {where})" if where else ""
        tables = db.tables(prefix, "lifecycle", "active", "versions", "events", "aliases", "packages", "replicas")
        self.active_table, self.versions_table, self.events_table, self.aliases_table = tables[:4]
        self.packages_table, self.replicas_table = tables[4:]
        self.db = db
        blob = "BYTEA" if db.dialect == "postgresql" else "BLOB"
        self._run(
            [
                (
                    f"CREATE TABLE IF NOT EXISTS {self.active_table} (model_type TEXT PRIMARY KEY, tag TEXT NOT NULL, "
                    "history TEXT NOT NULL, activated_by TEXT NOT NULL, activated_at DOUBLE PRECISION NOT NULL, "
                    "reason TEXT NOT NULL, generation INTEGER NOT NULL)",
                    {},
                ),
                (
                    f"CREATE TABLE IF NOT EXISTS {self.versions_table} (tag TEXT PRIMARY KEY, "
                    "description TEXT NOT NULL, uploaded_by TEXT, retired INTEGER NOT NULL, check_status TEXT, "
                    "checked_at DOUBLE PRECISION)",
                    {},
                ),
                (
                    f"CREATE TABLE IF NOT EXISTS {self.events_table} (event_id TEXT PRIMARY KEY, "
                    "at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, model_type TEXT, "
                    "from_tag TEXT, to_tag TEXT, reason TEXT, detail TEXT NOT NULL)",
                    {},
                ),
                (f"CREATE INDEX IF NOT EXISTS {self.events_table}_at ON {self.events_table} (at)", {}),
                (
                    f"CREATE TABLE IF NOT EXISTS {self.aliases_table} "
                    "(id INTEGER PRIMARY KEY, tag TEXT NOT NULL UNIQUE)",
                    {},
                ),
                (
                    f"CREATE TABLE IF NOT EXISTS {self.packages_table} (tag TEXT PRIMARY KEY, sha256 TEXT NOT NULL, "
                    f"size BIGINT NOT NULL, stored_by TEXT NOT NULL, stored_at DOUBLE PRECISION NOT NULL, "
                    f"package {blob} NOT NULL)",
                    {},
                ),
                (
                    f"CREATE TABLE IF NOT EXISTS {self.replicas_table} (replica_id TEXT NOT NULL, worker INTEGER NOT "
                    "NULL, served TEXT NOT NULL, in_sync INTEGER NOT NULL, error TEXT, started_at DOUBLE PRECISION "
                    "NOT NULL, heartbeat_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (replica_id, worker))",
                    {},
                ),
            ],
            schema=True,
        )

    def _run(self, statements: Sequence[Statement], *, schema: bool = False) -> list[tuple[Any, ...]]:
        try:
            if schema:  # creating tables: in turn with every other process starting (nids.core.database)
                self.db.create_schema(statements)
                return []
            return self.db.execute(statements)
        except self.db.driver_error as error:
            raise StateUnavailable(
                unavailable_reason(f"model lifecycle state unavailable{self.where}", error)
            ) from error

    def _rows(self, table: str, rows: list[tuple[Any, ...]], parse: Callable[[tuple[Any, ...]], T]) -> list[T]:
        """Each row parsed; StateUnavailable naming the table and the row's key when one cannot be read."""
        parsed = []
        for row in rows:
            try:
                parsed.append(parse(row))
            except (ValueError, TypeError, KeyError, IndexError) as error:
                raise StateUnavailable(
                    f"model lifecycle state unreadable{self.where}: row {row[0]!r} of table {table} is corrupt "
                    f"({type(error).__name__}: {error}); fix or delete it"
                ) from error
        return parsed

    def close(self) -> None:
        self.db.close()

    # --- active versions ----------------------------------------------------------------------------------
    def active(self) -> dict[str, ActiveState]:
        rows = self._run([(f"SELECT {_ACTIVE_COLUMNS} FROM {self.active_table}", {})])
        states = self._rows(self.active_table, rows, _active_state)
        return {state.model_type: state for state in states}

    def initialise(self, model_type: str, tag: str, reason: str) -> bool:
        """Record the first active version of a type unless one is recorded (True if this call did)."""
        rows = self._run(
            [
                (
                    f"INSERT INTO {self.active_table} ({_ACTIVE_COLUMNS}) VALUES "
                    "(:model_type, :tag, '[]', 'startup', :now, :reason, 1) ON CONFLICT (model_type) DO NOTHING "
                    "RETURNING model_type",
                    {"model_type": model_type, "tag": tag, "now": time.time(), "reason": reason},
                )
            ]
        )
        return bool(rows)

    def switch(self, current: ActiveState, tag: str, history: Sequence[str], actor: str, reason: str) -> bool:
        """Compare-and-set: make `tag` active if `current` is still the recorded state (False if it changed)."""
        rows = self._run(
            [
                (
                    f"UPDATE {self.active_table} SET tag = :tag, history = :history, activated_by = :actor, "
                    "activated_at = :now, reason = :reason, generation = generation + 1 "
                    "WHERE model_type = :model_type AND generation = :generation RETURNING model_type",
                    {
                        "tag": tag,
                        "history": json.dumps(list(history)[-HISTORY_LIMIT:]),
                        "actor": actor,
                        "now": time.time(),
                        "reason": reason,
                        "model_type": current.model_type,
                        "generation": current.generation,
                    },
                )
            ]
        )
        return bool(rows)

    # --- what the store cannot hold about a version -----------------------------------------------------
    def notes(self) -> dict[str, VersionNote]:
        rows = self._run([(f"SELECT {_NOTE_COLUMNS} FROM {self.versions_table}", {})])
        notes = self._rows(
            self.versions_table, rows, lambda r: VersionNote(r[0], r[1], r[2], bool(r[3]), r[4], _float(r[5]))
        )
        return {note.tag: note for note in notes}

    def note(self, tag: str, **values: Any) -> None:
        """Upsert some of description, uploaded_by, retired, check_status, checked_at for `tag`."""
        allowed = {"description", "uploaded_by", "retired", "check_status", "checked_at"}
        if not set(values) <= allowed:
            raise ValueError(f"not version columns: {sorted(set(values) - allowed)}")
        defaults: dict[str, Any] = {"description": "", "uploaded_by": None, "retired": 0, "check_status": None}
        row = {**defaults, "checked_at": None, **values, "tag": tag}
        row["retired"] = int(bool(row["retired"]))
        updates = ", ".join(f"{column} = excluded.{column}" for column in values) or "tag = excluded.tag"
        self._run(
            [
                (
                    f"INSERT INTO {self.versions_table} ({_NOTE_COLUMNS}) VALUES (:tag, :description, :uploaded_by, "
                    f":retired, :check_status, :checked_at) ON CONFLICT (tag) DO UPDATE SET {updates}",
                    row,
                )
            ]
        )

    def forget(self, tag: str) -> None:
        self._run([(f"DELETE FROM {self.versions_table} WHERE tag = :tag", {"tag": tag})])

    # --- integer ids (the original system's model ids) -----------------------------------------------------
    def aliases(self, tags: Sequence[str] = ()) -> dict[str, int]:
        """tag -> integer id of every aliased tag, after giving each of `tags` that has none the next id, in order."""
        known = self._aliases()
        for tag in tags:
            while tag not in known:  # a concurrent writer may take the id first: the insert is skipped, try again
                self._run(
                    [
                        (
                            f"INSERT INTO {self.aliases_table} (id, tag) SELECT COALESCE(MAX(id), 0) + 1, :tag "
                            f"FROM {self.aliases_table} WHERE NOT EXISTS "
                            f"(SELECT 1 FROM {self.aliases_table} WHERE tag = :tag) ON CONFLICT DO NOTHING",
                            {"tag": tag},
                        )
                    ]
                )
                known = self._aliases()
        return known

    def _aliases(self) -> dict[str, int]:
        return {row[1]: int(row[0]) for row in self._run([(f"SELECT id, tag FROM {self.aliases_table}", {})])}

    def tag_of(self, alias: int) -> str | None:
        rows = self._run([(f"SELECT tag FROM {self.aliases_table} WHERE id = :id", {"id": alias})])
        return str(rows[0][0]) if rows else None

    # --- packages every replica can fetch -------------------------------------------------------------------
    def store_package(self, tag: str, package: bytes, stored_by: str) -> bool:
        """Keep a signed package once (True if this call stored it; the first one stored for a tag stays)."""
        rows = self._run(
            [
                (
                    f"INSERT INTO {self.packages_table} ({_PACKAGE_COLUMNS}, package) VALUES (:tag, :sha256, :size, "
                    ":stored_by, :now, :package) ON CONFLICT (tag) DO NOTHING RETURNING tag",
                    {
                        "tag": tag,
                        "sha256": hashlib.sha256(package).hexdigest(),
                        "size": len(package),
                        "stored_by": stored_by,
                        "now": time.time(),
                        "package": package,
                    },
                )
            ]
        )
        return bool(rows)

    def packages(self) -> dict[str, StoredPackage]:
        rows = self._run([(f"SELECT {_PACKAGE_COLUMNS} FROM {self.packages_table}", {})])
        stored = self._rows(
            self.packages_table, rows, lambda r: StoredPackage(r[0], r[1], int(r[2]), r[3], float(r[4]))
        )
        return {package.tag: package for package in stored}

    def package(self, tag: str) -> bytes | None:
        """The package's bytes, None when no replica stored one; StateUnavailable when they do not match its sha256."""
        rows = self._run([(f"SELECT sha256, package FROM {self.packages_table} WHERE tag = :tag", {"tag": tag})])
        if not rows:
            return None
        sha256, package = rows[0][0], bytes(rows[0][1])
        if hashlib.sha256(package).hexdigest() != sha256:
            raise StateUnavailable(f"the stored package of {tag} in {self.packages_table} does not match its sha256")
        return package

    def drop_package(self, tag: str) -> None:
        self._run([(f"DELETE FROM {self.packages_table} WHERE tag = :tag", {"tag": tag})])

    # --- heartbeats of the serving processes -----------------------------------------------------------------
    def heartbeat(self, beat: Heartbeat) -> None:
        placeholders = ", ".join(f":{column.strip()}" for column in _HEARTBEAT_COLUMNS.split(","))
        self._run(
            [
                (
                    f"INSERT INTO {self.replicas_table} ({_HEARTBEAT_COLUMNS}) VALUES ({placeholders}) "
                    "ON CONFLICT (replica_id, worker) DO UPDATE SET served = excluded.served, "
                    "in_sync = excluded.in_sync, error = excluded.error, started_at = excluded.started_at, "
                    "heartbeat_at = excluded.heartbeat_at",
                    {**asdict(beat), "served": json.dumps(beat.served, sort_keys=True), "in_sync": int(beat.in_sync)},
                )
            ]
        )

    def heartbeats(self) -> list[Heartbeat]:
        rows = self._run([(f"SELECT {_HEARTBEAT_COLUMNS} FROM {self.replicas_table} ORDER BY replica_id, worker", {})])
        return self._rows(
            self.replicas_table,
            rows,
            lambda r: Heartbeat(r[0], int(r[1]), dict(json.loads(r[2])), bool(r[3]), r[4], float(r[5]), float(r[6])),
        )

    def forget_replicas(self, older_than: float) -> None:
        """Drop the heartbeats of processes silent since before `older_than` (epoch seconds)."""
        self._run([(f"DELETE FROM {self.replicas_table} WHERE heartbeat_at < :older", {"older": older_than})])

    # --- audit trail ----------------------------------------------------------------------------------------
    def record(self, actor: str, action: str, **fields: Any) -> LifecycleEvent:
        event = LifecycleEvent(event_id=uuid.uuid4().hex, at=time.time(), actor=actor, action=action, **fields)
        values = event.model_dump()
        values["detail"] = json.dumps(values["detail"], sort_keys=True)
        columns = ", ".join(_EVENT_COLUMNS)
        placeholders = ", ".join(f":{column}" for column in _EVENT_COLUMNS)
        self._run([(f"INSERT INTO {self.events_table} ({columns}) VALUES ({placeholders})", values)])
        return event

    def events(self, model_type: str | None = None, limit: int = 100) -> list[LifecycleEvent]:
        """Newest first."""
        where = "WHERE model_type = :model_type" if model_type else ""
        sql = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM {self.events_table} {where} ORDER BY at DESC LIMIT :limit"
        rows = self._run([(sql, {"model_type": model_type, "limit": limit})])
        return self._rows(
            self.events_table,
            rows,
            lambda r: LifecycleEvent.model_validate(
                {**dict(zip(_EVENT_COLUMNS, r, strict=True)), "detail": json.loads(r[8])}
            ),
        )


def _active_state(row: tuple[Any, ...]) -> ActiveState:
    history = json.loads(row[2])
    if not isinstance(history, list) or not all(isinstance(tag, str) for tag in history):
        raise ValueError(f"history {row[2]!r} is not a JSON list of tags")
    if not isinstance(row[1], str) or ":" not in row[1]:
        raise ValueError(f"tag {row[1]!r} is not name:version")
    return ActiveState(row[0], row[1], tuple(history), row[3], float(row[4]), row[5], int(row[6]))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def open_lifecycle_store(url: AnyUrl | str, prefix: str = "lifecycle_", setting: str = "") -> LifecycleStore:
    """Open (and create the tables of) the state; StateUnavailable naming the database (and `setting`, the
    variable that chose it) when it cannot be opened: unreachable, a directory it cannot write, a full disk."""
    where = redacted(url) + (f" (set by {setting})" if setting else "")
    try:
        database = open_database(url)
    except open_errors() as error:  # the driver's own text: in the log (Lifecycle.bootstrap), not the reason
        raise StateUnavailable(f"model lifecycle state cannot be opened at {where}: {cause_of(error)}") from error
    try:
        return LifecycleStore(database, prefix, where)
    except StateUnavailable:
        database.close()
        raise
