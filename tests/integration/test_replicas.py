"""Two replicas - two `bentoml serve` processes sharing one model store (as a Kubernetes volume would be mounted
as BENTOML_HOME) and one PostgreSQL - switch versions together, whichever of them is asked."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from .conftest import Server
from .test_lifecycle import ADMIN, MODELS, Prober, Versions, make_versions, server_env

pytestmark = [pytest.mark.integration, pytest.mark.long_running]

PG_URL = os.environ.get("NIDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def postgres() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}: {error}")
    return PG_URL


@pytest.fixture(scope="module")
def replicas(
    model_store: Any, serve: Callable[..., Server], postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Versions, Server, Server]]:
    versions = make_versions(model_store, tmp_path_factory.mktemp("shared-home"), tmp_path_factory.mktemp("pkg"))
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    shared = {
        "NIDS_HEALING_AUDIT_URL": postgres,  # the state follows the audit log's database by default
        "NIDS_HEALING_AUDIT_TABLE_PREFIX": f"{prefix}healing_",
        "NIDS_MODEL_STATE_TABLE_PREFIX": f"{prefix}lifecycle_",
    }
    first = serve(versions.home, **server_env(versions, tmp_path_factory.mktemp("a"), **shared))
    second = serve(versions.home, **server_env(versions, tmp_path_factory.mktemp("b"), **shared))
    yield versions, first, second
    _drop_tables(postgres, prefix)


def _drop_tables(url: str, prefix: str) -> None:
    """Drop this module's tables (the servers, stopped right after, only log their failed polls)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        names = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE %s",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
        for (name,) in names:
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')


def test_two_replicas_on_one_postgresql_switch_together(replicas: tuple[Versions, Server, Server]) -> None:
    versions, first, second = replicas
    with Prober(first.url, second.url) as prober:  # alternates between the replicas
        prober.wait_calls(5)  # calls before the switch
        activated = httpx.post(f"{first.url}{MODELS}/{versions.threat_new}/activate", headers=ADMIN, timeout=30)
        assert activated.status_code == 200, activated.text
        prober.wait_for(versions.threat_new)
        listed = httpx.get(f"{second.url}{MODELS}/{versions.threat_new}").json()
        assert listed["is_active"] and listed["served_here"]
        rolled = httpx.post(f"{second.url}{MODELS}/{versions.threat_new}/deactivate", headers=ADMIN, timeout=30)
        assert rolled.status_code == 200, rolled.text
        prober.wait_for(versions.threat)
    assert len(prober.calls) > 20
    assert [status for status, _ in prober.calls if status != 200] == []  # no failed request on either replica
    events = httpx.get(f"{first.url}{MODELS}/events/audit").json()
    assert [(e["action"], e["to_tag"]) for e in events[:2]] == [
        ("deactivate", versions.threat),
        ("activate", versions.threat_new),
    ]
