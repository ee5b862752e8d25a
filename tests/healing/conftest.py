"""Fixtures for the self-healing tests: policies, an injectable clock, audit stores, a network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from nids.healing.audit import AuditStore, PostgresAuditStore, SqliteAuditStore
from nids.healing.engine import HealingEngine
from nids.healing.executors import ExecutionError, default_executors
from nids.healing.policy import Policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = ROOT / "config" / "healing.yaml"
PG_URL = os.environ.get("NIDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_800_000_000.0


def make_policy(**overrides: Any) -> Policy:
    """The shipped default policy with top-level keys replaced."""
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8")) | overrides
    return parse_policy(yaml.safe_dump(data, allow_unicode=True), "test-policy.yaml")


class Clock:
    """Injected time: tests move it instead of sleeping."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingRunner:
    """Stands in for systemctl where no systemd runs: records each command; can fail or hold on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail: str | None = None
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> str:
        self.hold.wait()
        self.calls.append(tuple(argv))
        if self.fail is not None:
            raise ExecutionError(self.fail)
        return "ok"


def postgres_reachable() -> str | None:
    """None if PostgreSQL answers at PG_URL, else the reason to skip."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except Exception as error:
        return f"PostgreSQL not reachable at {PG_URL}: {error}"


def drop_tables(prefix: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {prefix}actions, {prefix}state, {prefix}refused")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    """The same tests against both audit stores (PostgreSQL: unique tables per test, dropped afterwards)."""
    if request.param == "sqlite":
        sqlite = SqliteAuditStore(tmp_path / "audit.sqlite3")
        yield sqlite
        sqlite.close()
        return
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    postgres = PostgresAuditStore(PG_URL, prefix)
    try:
        yield postgres
    finally:
        postgres.close()
        drop_tables(prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def engine_factory(tmp_path: Path, clock: Clock, runner: RecordingRunner) -> Iterator[Any]:
    """Builds engines on a SQLite file with the injected clock and recording runner; closes them afterwards."""
    engines: list[HealingEngine] = []

    def build(policy: Policy | None = None, **kwargs: Any) -> HealingEngine:
        policy = policy or make_policy()
        kwargs.setdefault("executors", default_executors(policy, runner))
        kwargs.setdefault("sweep_seconds", None)  # expiry follows the injected clock through explicit sweeps
        engine = HealingEngine(policy, SqliteAuditStore(tmp_path / "audit.sqlite3"), clock=clock, **kwargs)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own (root and nft needed), deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("nftables test needs root to create a network namespace")
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (apt-get install -y nftables)")
    name = f"nids-test-{uuid.uuid4().hex[:8]}"
    created = _run("ip", "netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        yield name
    finally:
        _run("ip", "netns", "delete", name)
