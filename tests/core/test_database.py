"""The embedded SQLite database as several processes open it at once (the workers of one server, first start)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nids.core import database
from nids.core.database import SqliteDatabase, open_database


def _open_and_write(path: str, start: Any, errors: multiprocessing.Queue) -> None:
    start.wait()
    try:
        db = SqliteDatabase(Path(path))
        db.execute([("CREATE TABLE IF NOT EXISTS t (a INTEGER)", {}), ("INSERT INTO t VALUES (1)", {})])
        db.close()
    except Exception as error:  # reported to the test
        errors.put(repr(error))


@pytest.mark.long_running
def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching to WAL ignores SQLite's busy timeout: before the retry, ~1 opening in 40 failed 'database is locked'
    (a worker of a fresh `make serve` on 2 cores failed to start)."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for round_ in range(40):
        path = tmp_path / f"{round_}.sqlite3"
        start = context.Event()
        openers = [context.Process(target=_open_and_write, args=(str(path), start, errors)) for _ in range(6)]
        for opener in openers:
            opener.start()
        start.set()  # all at once
        for opener in openers:
            opener.join()
        assert all(opener.exitcode == 0 for opener in openers)
        db = SqliteDatabase(path)
        assert db.execute([("SELECT COUNT(*) FROM t", {})]) == [(6,)]
        db.close()
    assert errors.empty(), errors.get()


def test_a_wal_grown_by_bulk_writes_is_cut_back_once_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "WAL_LIMIT_BYTES", 1024 * 1024)
    db = SqliteDatabase(tmp_path / "log.sqlite3", checkpoint_seconds=0.05)
    db.execute([("CREATE TABLE t (a TEXT)", {})])
    db.execute_many([], "INSERT INTO t VALUES (:a)", [("x" * 1000,)] * 8000)  # ~8 MB of WAL
    wal = tmp_path / "log.sqlite3-wal"
    assert wal.stat().st_size > 4 * 1024 * 1024
    deadline = time.monotonic() + 10
    while wal.stat().st_size > 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.1)  # checkpointed by the thread; the next write starts the WAL over, cut to the limit
        db.execute([("INSERT INTO t VALUES ('y')", {})])
    assert wal.stat().st_size <= 1024 * 1024
    db.close()


def test_a_reader_leaves_checkpoints_to_the_writer(tmp_path: Path) -> None:
    before = [thread.name for thread in threading.enumerate()].count("sqlite-checkpoint")
    reader = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}", checkpoints=False)
    assert [thread.name for thread in threading.enumerate()].count("sqlite-checkpoint") == before
    reader.close()


def test_a_missing_table_is_not_reported_as_a_missing_database(tmp_path: Path) -> None:
    """What a caller reads when the tables vanish under a running service: the tables, not the database."""
    import sqlite3

    with pytest.raises(sqlite3.OperationalError) as missing_table:
        sqlite3.connect(tmp_path / "a.db").execute("SELECT * FROM gone")
    assert database.cause_of(missing_table.value).startswith("its tables are missing")
    psycopg = pytest.importorskip("psycopg")
    for error, cause in (
        (psycopg.errors.UndefinedTable('relation "t_x" does not exist'), "its tables are missing"),
        (psycopg.OperationalError('database "nope" does not exist'), "the database does not exist on the server"),
    ):
        assert database.cause_of(error).startswith(cause)
