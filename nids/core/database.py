"""The two SQL engines the service keeps its own records in: SQLite (embedded default) and PostgreSQL (shared).

Both run a sequence of `(sql, params)` statements in one transaction, written once with `:name` parameters;
the stores built on them (the self-healing audit log, the model lifecycle state, the prediction log) hold
only their SQL. A `Database`
serialises its callers with a lock: one connection, several threads.
"""

from __future__ import annotations

import errno
import logging
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import AnyUrl, TypeAdapter

from nids.core.errors import Unavailable
from nids.core.settings import DatabaseUrl, sqlite_path

logger = logging.getLogger("nids.database")
Statement = tuple[str, Mapping[str, Any]]
WAL_LIMIT_BYTES = 64 * 1024 * 1024
Dialect = Literal["sqlite", "postgresql"]
SCHEMA_LOCK = 0x6E696473  # "nids": the advisory lock key every process takes to create its tables


def check_prefix(table_prefix: str) -> str:
    """A table prefix is spliced into SQL: letters, digits and underscores only."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table_prefix):
        raise ValueError(f"table prefix {table_prefix!r} must be letters, digits and underscores")
    return table_prefix


def unavailable_reason(what: str, error: BaseException) -> str:
    """What a caller may read of a driver's failure: a cause it can act on. The driver's own text (which can name
    hosts, users, tables or statements) goes to the server's log, at WARNING."""
    logger.warning("%s: %s: %s", what, type(error).__name__, error)
    return f"{what}: {cause_of(error)}"


def cause_of(error: BaseException) -> str:
    """The class of a driver's or the file system's failure, in words an operator can act on, without the
    driver's text."""
    text = str(error).lower()
    if "locked" in text or type(error).__name__ == "LockNotAvailable":
        return "its database is locked by another writer; try again shortly"
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "disk is full" in text or "no space" in text:
        return "the disk holding it is full"
    if (isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES)) or "readonly" in text:
        return "its directory is read-only or not writable"
    if "unable to open database file" in text or isinstance(error, OSError):
        return "its file cannot be created or opened (a missing, read-only or full directory)"
    if "no such table" in text or type(error).__name__ == "UndefinedTable":
        return "its tables are missing (dropped while the service ran?); the server's log names the cause"
    if "does not exist" in text and "database" in text:
        return "the database does not exist on the server"
    return "its database cannot be reached or refused the statement; the server's log names the cause"


class Outage:
    """Since when a store has been failing and how many operations failed since (thread-safe): what the service
    reports on /readyz and the statistics API instead of losing rows quietly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None  # epoch seconds of the first failure of the current outage
        self.failures = 0
        self.error = ""

    def failed(self, error: BaseException) -> None:
        with self._lock:
            if self.since is None:
                self.since, self.failures = time.time(), 0
            self.failures += 1
            # a service's own Unavailable already says what failed where (no driver text): kept whole
            self.error = str(error) if isinstance(error, Unavailable) else cause_of(error)

    def recovered(self) -> bool:
        """Mark the store working again; True when it was failing until now."""
        with self._lock:
            was, self.since, self.failures, self.error = self.since is not None, None, 0, ""
            return was

    def describe(self, what: str) -> str:
        """'' while the store works, else what failed since when."""
        since = self.since
        if since is None:
            return ""
        at = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        return f"{what} unavailable since {at} ({self.failures} failed attempts; last: {self.error})"


class Database(ABC):
    dialect: Dialect
    unique_violation: type[Exception]  # the driver's error for a broken unique index
    driver_error: type[Exception]  # base of every error the driver raises
    # errors that pass (server down or restarting, connection lost, disk full, a lock held): worth retrying
    transient_errors: tuple[type[Exception], ...]

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @abstractmethod
    def execute(self, statements: Sequence[Statement]) -> list[tuple[Any, ...]]:
        """Run statements in one transaction; rows of the last one."""

    def tables(self, prefix: str, owner: str, *names: str) -> tuple[str, ...]:
        """`prefix + name` for each name; ValueError (and the connection closed) unless the prefix is safe in SQL."""
        try:
            check_prefix(prefix)
        except ValueError as error:
            self.close()
            raise ValueError(f"{owner} {error}") from None
        return tuple(f"{prefix}{name}" for name in names)

    def create_schema(self, statements: Sequence[Statement]) -> None:
        """Run CREATE ... IF NOT EXISTS statements so that processes starting together never collide."""
        self.execute(statements)

    @abstractmethod
    def execute_many(self, before: Sequence[Statement], sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run `before`, then `sql` once per row (one round trip where the driver can), in one transaction.

        `sql` names its parameters (`:name`) for readability; each row gives their values in that order (positional
        binding: ~30% cheaper per row than a mapping on SQLite, measured on the prediction log's 24 columns)."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteDatabase(Database):
    """One SQLite file (WAL journal, synchronous=NORMAL, checkpoints on a thread of their own unless
    `checkpoint_seconds` is None: a reader next to a writer that checkpoints)."""

    dialect: Dialect = "sqlite"
    unique_violation = sqlite3.IntegrityError
    driver_error = sqlite3.Error
    transient_errors = (sqlite3.OperationalError, OSError)

    def __init__(self, path: Path, checkpoint_seconds: float | None = 1.0, lock_seconds: float = 30.0) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # a write waits at most lock_seconds for another writer, then fails with the driver's error
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=lock_seconds)
        _enable_wal(self._conn, lock_seconds)
        # WAL + NORMAL: a committed row survives a crash or restart of the process (not a power loss);
        # FULL's fsync per request put analyze's p99 over 100 ms at 100 req/s (BENCHMARKS.md)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (copying the WAL into the database, with an fsync) would otherwise run inside whichever
        # request commits the 1000th WAL page and stall it for ~200 ms: a thread of its own does them.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        # once checkpointed, a WAL that grew during bulk writes is cut back to this size (else it keeps its peak)
        self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_seconds is not None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_seconds,), name="sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _checkpoint_loop(self, seconds: float) -> None:
        """PASSIVE checkpoints on a connection of its own: they never block the writers."""
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            while not self._closing.wait(seconds):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def execute(self, statements: Sequence[Statement]) -> list[tuple[Any, ...]]:
        with self._lock, self._conn:
            cursor = self._conn.cursor()
            for sql, params in statements:
                cursor.execute(sql, params)
            return cursor.fetchall()

    def execute_many(self, before: Sequence[Statement], sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock, self._conn:
            cursor = self._conn.cursor()
            for statement, params in before:
                cursor.execute(statement, params)
            cursor.executemany(_NAMED.sub("?", sql), rows)

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        with self._lock:
            self._conn.close()


def _enable_wal(conn: sqlite3.Connection, seconds: float) -> None:
    """Switch a database to WAL. The switch takes the lock without SQLite's busy handler: when several processes
    open a new database at once (the workers of one server), it fails while another one writes, so retry."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3 (reconnects when the connection broke)."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, connect_timeout: int = 10, lock_seconds: float | None = None) -> None:
        super().__init__()
        import psycopg  # only deployments with PostgreSQL need the driver loaded

        self.unique_violation = psycopg.errors.UniqueViolation
        self.driver_error = psycopg.Error
        self.transient_errors = (psycopg.OperationalError, OSError)
        self.url = url
        self.connect_timeout = connect_timeout
        # a statement waits at most lock_seconds for a row or table lock, then fails with the driver's error
        self.options = "" if lock_seconds is None else f"-c lock_timeout={int(lock_seconds * 1000)}"
        self._conn = self._connect()

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout, options=self.options)

    def _connection(self) -> Any:
        if self._conn.broken or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def execute(self, statements: Sequence[Statement]) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                for sql, params in statements:
                    cursor.execute(_pyformat(sql), params)
                return cursor.fetchall() if cursor.description else []

    def create_schema(self, statements: Sequence[Statement]) -> None:
        """PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against a concurrent one (two workers or replicas
        starting on an empty database: `UniqueViolation ... pg_type_typname_nsp_index`): one advisory lock,
        held for the transaction, makes every process create its tables in turn."""
        self.execute([(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})", {}), *statements])

    def execute_many(self, before: Sequence[Statement], sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                for statement, params in before:
                    cursor.execute(_pyformat(statement), params)
                cursor.executemany(_NAMED.sub("%s", sql), rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_NAMED = re.compile(r":(\w+)")


def _pyformat(sql: str) -> str:
    """`:name` parameters as psycopg's `%(name)s`."""
    return _NAMED.sub(r"%(\1)s", sql)


def open_errors() -> tuple[type[Exception], ...]:
    """What opening or using a database may raise: OS errors (a data directory that cannot be created, written or
    is full) and every driver's error."""
    errors: list[type[Exception]] = [OSError, sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # a deployment without PostgreSQL
        return tuple(errors)
    return (*errors, psycopg.Error)


def redacted(url: AnyUrl | str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", str(url))


def open_database(url: AnyUrl | str, lock_seconds: float | None = None, checkpoints: bool = True) -> Database:
    """`sqlite:///relative/or//absolute/path.sqlite3` or `postgresql://user@host:port/db`.

    `lock_seconds` bounds how long a statement waits for another writer's lock before it fails (SQLite: 30 s
    when not given; PostgreSQL: no bound). `checkpoints=False`: this SQLite connection leaves checkpoints to
    the writer's (a reader)."""
    url = TypeAdapter(DatabaseUrl).validate_python(url) if isinstance(url, str) else url
    if url.scheme == "sqlite":
        lock = 30.0 if lock_seconds is None else lock_seconds
        return SqliteDatabase(sqlite_path(url), checkpoint_seconds=1.0 if checkpoints else None, lock_seconds=lock)
    return PostgresDatabase(str(url), lock_seconds=lock_seconds)
