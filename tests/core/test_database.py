"""The embedded SQLite database as several processes open it at once (the workers of one server, first start)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from nids.core.database import SqliteDatabase


def _open_and_write(path: str, start: Any, errors: multiprocessing.Queue) -> None:
    start.wait()
    try:
        db = SqliteDatabase(Path(path))
        db.execute([("CREATE TABLE IF NOT EXISTS t (a INTEGER)", {}), ("INSERT INTO t VALUES (1)", {})])
        db.close()
    except Exception as error:  # reported to the test
        errors.put(repr(error))


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
