"""Schema creation on a real PostgreSQL (NIDS_TEST_POSTGRES_URL) by several processes at once: the workers and
replicas of a first start on an empty database (Compose: `UniqueViolation ... lifecycle_active` crashed one)."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from nids.core.database import open_database
from nids.healing.audit import PostgresAuditStore
from nids.models.state import open_lifecycle_store
from nids.observability.store import PredictionStore
from tests.healing.conftest import PG_URL, postgres_reachable

ROUNDS = 8
PROCESSES = 6


def _create_every_store(prefix: str, start: Any, errors: multiprocessing.Queue) -> None:
    """What a starting worker does: open the lifecycle state, the audit log and the prediction log (each creates
    its tables), then use each once."""
    start.wait()
    try:
        state = open_lifecycle_store(PG_URL, f"{prefix}lifecycle_")
        state.initialise("threat_detector", "threat_detector:v1", "first start")
        state.close()
        PostgresAuditStore(PG_URL, f"{prefix}audit_").close()
        PredictionStore(open_database(PG_URL), f"{prefix}log_").db.close()
    except Exception as error:  # reported to the test
        errors.put(f"{type(error).__name__}: {error}")


@pytest.fixture
def prefixes() -> Iterator[list[str]]:
    """Table prefixes of this test's own; every table they name is dropped after."""
    if reason := postgres_reachable():
        pytest.skip(reason)
    import psycopg

    made: list[str] = []
    yield made
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for prefix in made:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE %s",
                (f"{prefix}%",),
            ).fetchall()
            for (table,) in tables:
                conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')


def test_processes_creating_the_tables_of_an_empty_database_at_once_all_start(prefixes: list[str]) -> None:
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for _ in range(ROUNDS):
        prefix = f"race_{uuid.uuid4().hex[:8]}_"
        prefixes.append(prefix)
        start = context.Event()
        creators = [context.Process(target=_create_every_store, args=(prefix, start, errors)) for _ in range(PROCESSES)]
        for creator in creators:
            creator.start()
        start.set()  # all at once, on tables none of them has created yet
        for creator in creators:
            creator.join(timeout=120)
            assert creator.exitcode == 0
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    state = open_lifecycle_store(PG_URL, f"{prefixes[0]}lifecycle_")
    try:
        assert state.active()["threat_detector"].tag == "threat_detector:v1"  # one initialisation won
    finally:
        state.close()
