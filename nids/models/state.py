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
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import AnyUrl, BaseModel, Field

from nids.core.database import Database, Statement, open_database, unavailable_reason
from nids.core.errors import Unavailable

HISTORY_LIMIT = 50


class StateUnavailable(Unavailable):
    """The lifecycle database cannot be reached or written (HTTP 503)."""


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


class LifecycleStore:
    def __init__(self, db: Database, prefix: str = "lifecycle_") -> None:
        tables = db.tables(prefix, "lifecycle", "active", "versions", "events", "aliases")
        self.active_table, self.versions_table, self.events_table, self.aliases_table = tables
        self.db = db
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
            ]
        )

    def _run(self, statements: Sequence[Statement]) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(statements)
        except self.db.driver_error as error:
            raise StateUnavailable(unavailable_reason("model lifecycle state unavailable", error)) from error

    def close(self) -> None:
        self.db.close()

    # --- active versions ----------------------------------------------------------------------------------
    def active(self) -> dict[str, ActiveState]:
        rows = self._run([(f"SELECT {_ACTIVE_COLUMNS} FROM {self.active_table}", {})])
        return {
            row[0]: ActiveState(row[0], row[1], tuple(json.loads(row[2])), row[3], float(row[4]), row[5], int(row[6]))
            for row in rows
        }

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
        return {row[0]: VersionNote(row[0], row[1], row[2], bool(row[3]), row[4], row[5]) for row in rows}

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
        return [
            LifecycleEvent.model_validate({**dict(zip(_EVENT_COLUMNS, row, strict=True)), "detail": json.loads(row[8])})
            for row in rows
        ]


def open_lifecycle_store(url: AnyUrl | str, prefix: str = "lifecycle_") -> LifecycleStore:
    return LifecycleStore(open_database(url), prefix)
