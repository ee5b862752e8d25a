"""Three replicas - three `bentoml serve` processes, each with its own BentoML store and data directory - sharing
only PostgreSQL (lifecycle state, packages, heartbeats, audit log, prediction log).

A version uploaded through replica 1 and activated through replica 2 is fetched, verified and served by all
three; a rollback through replica 3 likewise; a version whose shared package fails its signature check leaves
the replicas that must fetch it serving their verified version but unready (503 with the reason), until the
version is rolled back. Uploads never move `:latest` in any store.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pytest

from nids.core.features import THREAT_MODEL_NAME
from nids.models.packages import package_bytes
from tests.conftest import clone_model_version

from .conftest import BENTOML, Server, copy_store
from .test_lifecycle import ADMIN, MODELS, SIGNING_KEY, served_version

pytestmark = [pytest.mark.integration, pytest.mark.long_running]

PG_URL = os.environ.get("NIDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SWITCH_DEADLINE = 5.0  # every replica serves an activation within this (poll deadline, not a timing assertion)
UNREADY_DEADLINE = 30.0


@dataclass(frozen=True)
class Fleet:
    replicas: tuple[Server, Server, Server]
    homes: tuple[Path, Path, Path]
    prefix: str
    threat: str  # active at start, in every store
    new: str  # only as a signed package, uploaded by the test
    forged: str  # likewise; its shared package is then replaced by one signed with another key
    packages: dict[str, bytes]


@pytest.fixture(scope="module")
def postgres() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}: {error}")
    return PG_URL


@pytest.fixture(scope="module")
def fleet(
    model_store: Any, serve: Callable[..., Server], postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    packages = {}
    for _ in range(2):  # two new versions, kept only as signed packages (removed from the session store again)
        tag = clone_model_version(model_store.threat_tag, THREAT_MODEL_NAME)
        packages[tag] = package_bytes(bentoml.models.get(tag), SIGNING_KEY.encode())
        bentoml.models.delete(tag)
    new, forged = packages
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    shared = {
        "NIDS_HEALING_AUDIT_URL": postgres,  # the lifecycle state follows the audit log's database by default
        "NIDS_HEALING_AUDIT_TABLE_PREFIX": f"{prefix}healing_",
        "NIDS_MODEL_STATE_TABLE_PREFIX": f"{prefix}lifecycle_",
        "NIDS_PREDICTION_LOG_URL": postgres,
        "NIDS_PREDICTION_LOG_TABLE_PREFIX": f"{prefix}log_",
        "NIDS_PREDICTION_LOG_FLUSH_SECONDS": "0.1",
        "NIDS_THREAT_MODEL_TAG": model_store.threat_tag,
        "NIDS_ATTACK_MODEL_TAG": model_store.attack_tag,
        "NIDS_ADMIN_TOKEN": ADMIN["authorization"].removeprefix("Bearer "),
        "NIDS_MODEL_SIGNING_KEY": SIGNING_KEY,
        "NIDS_MODEL_SYNC_SECONDS": "0.5",
    }
    homes = tuple(copy_store(model_store.home, tmp_path_factory.mktemp(f"home{i}")) for i in range(3))
    replicas = tuple(serve(home, NIDS_REPLICA_ID=f"replica-{i + 1}", **shared) for i, home in enumerate(homes))
    for replica in replicas:
        wait_until(lambda r=replica: httpx.get(f"{r.url}/readyz").status_code == 200, 60, "ready")
    yield Fleet(replicas, homes, prefix, model_store.threat_tag, new, forged, packages)  # type: ignore[arg-type]
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


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {seconds} s")
        time.sleep(0.1)


def all_serve(fleet: Fleet, version: str) -> bool:
    return all(served_version(replica.url) == (200, version) for replica in fleet.replicas)


def latest_in(home: Path) -> str:
    """What `bentoml models get threat_detector:latest` resolves to in a replica's store."""
    result = subprocess.run(
        [str(BENTOML), "models", "get", f"{THREAT_MODEL_NAME}:latest", "-o", "json"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    model = json.loads(result.stdout)
    return f"{model['name']}:{model['version']}"


def upload(server: Server, tag: str, package: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}{MODELS}/upload",
        files={"file": ("model.bentomodel", package)},
        data={"model_type": THREAT_MODEL_NAME, "description": f"fleet test {tag}"},
        headers=ADMIN,
        timeout=120,
    )


def test_an_upload_reaches_every_replica_but_moves_nothing(fleet: Fleet) -> None:
    first, _, third = fleet.replicas
    uploaded = upload(first, fleet.new, fleet.packages[fleet.new])
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["is_active"] is False
    # listed through another replica (fetched from the shared packages into its own store)
    listed = httpx.get(f"{third.url}{MODELS}/", params={"model_type": THREAT_MODEL_NAME}, timeout=120).json()
    assert fleet.new in {entry["tag"] for entry in listed}
    # nothing implicit: every store's :latest, and what every replica serves, is still the active version
    assert [latest_in(home) for home in fleet.homes] == [fleet.threat] * 3
    assert all_serve(fleet, fleet.threat)


def test_an_activation_through_one_replica_is_served_by_all_and_so_is_the_rollback(fleet: Fleet) -> None:
    first, second, third = fleet.replicas
    activated = httpx.post(f"{second.url}{MODELS}/{fleet.new}/activate", headers=ADMIN, timeout=120)
    assert activated.status_code == 200, activated.text
    wait_until(lambda: all_serve(fleet, fleet.new), SWITCH_DEADLINE, f"{fleet.new} served by all three")
    status = httpx.get(f"{first.url}{MODELS}/status/fleet").json()
    assert status["active"][THREAT_MODEL_NAME] == fleet.new
    members = {member["replica_id"] for member in status["members"]}
    assert members == {"replica-1", "replica-2", "replica-3"}
    wait_until(
        lambda: httpx.get(f"{first.url}{MODELS}/status/fleet").json()["in_sync"], SWITCH_DEADLINE, "fleet in sync"
    )
    # activation made it :latest in every store (what a process with fresh state would start serving)
    assert [latest_in(home) for home in fleet.homes] == [fleet.new] * 3

    rolled = httpx.post(f"{third.url}{MODELS}/{fleet.new}/deactivate", headers=ADMIN, timeout=120)
    assert rolled.status_code == 200, rolled.text
    wait_until(lambda: all_serve(fleet, fleet.threat), SWITCH_DEADLINE, f"{fleet.threat} served by all three")
    assert all(httpx.get(f"{r.url}/readyz").status_code == 200 for r in fleet.replicas)


def test_a_replica_that_cannot_verify_the_active_version_is_unready_until_rolled_back(fleet: Fleet) -> None:
    import psycopg

    first, second, third = fleet.replicas
    assert upload(first, fleet.forged, fleet.packages[fleet.forged]).status_code == 201
    # the shared copy is replaced by a package signed with another key (its sha256 column made to match):
    # replica 1 holds the genuine version in its own store, the other two must fetch the forged one
    forged = package_bytes_with_key(fleet, fleet.forged, b"not-the-fleet-key")
    table = f"{fleet.prefix}lifecycle_packages"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {table} SET package = %s, sha256 = %s WHERE tag = %s",
            (forged, hashlib.sha256(forged).hexdigest(), fleet.forged),
        )
    activated = httpx.post(f"{first.url}{MODELS}/{fleet.forged}/activate", headers=ADMIN, timeout=120)
    assert activated.status_code == 200, activated.text
    for replica in (second, third):
        wait_until(lambda r=replica: httpx.get(f"{r.url}/readyz").status_code == 503, UNREADY_DEADLINE, "unready")
        reason = httpx.get(f"{replica.url}/readyz").json()["error"]
        assert fleet.forged in reason and "signature does not match" in reason
        assert served_version(replica.url) == (200, fleet.threat)  # still its verified version, never the forged one
    assert httpx.get(f"{first.url}/readyz").status_code == 200
    members = httpx.get(f"{first.url}{MODELS}/status/fleet").json()["members"]
    behind = {m["replica_id"] for m in members if not m["in_sync"]}
    assert behind == {"replica-2", "replica-3"}
    assert all(m["lag_seconds"] > 0 for m in members if not m["in_sync"])

    assert httpx.post(f"{first.url}{MODELS}/{fleet.forged}/deactivate", headers=ADMIN, timeout=120).status_code == 200
    for replica in fleet.replicas:
        wait_until(lambda r=replica: httpx.get(f"{r.url}/readyz").status_code == 200, UNREADY_DEADLINE, "ready")
    assert all_serve(fleet, fleet.threat)


def test_statistics_are_the_fleets_through_any_replica(fleet: Fleet) -> None:
    first, _, third = fleet.replicas

    def total(server: Server) -> int:
        return httpx.get(f"{server.url}/api/v1/predictions/stats").json()["total_predictions"]

    before = total(third)
    for _ in range(3):
        assert served_version(first.url)[0] == 200
    wait_until(lambda: total(third) >= before + 3, 30, "replica 1's predictions counted by replica 3")


def test_a_challenger_uploaded_through_one_replica_is_scored_in_shadow_by_the_others(
    fleet: Fleet, model_store: Any
) -> None:
    """Issue 21 over issue 18: replica 3's store never held the version; its shadow runner fetches the shared
    package (verified) and scores the flows replica 3 answers; replica 2 reports on it likewise."""
    tag = clone_model_version(model_store.threat_tag, THREAT_MODEL_NAME)
    package = package_bytes(bentoml.models.get(tag), SIGNING_KEY.encode())
    bentoml.models.delete(tag)
    first, second, third = fleet.replicas
    assert upload(first, tag, package).status_code == 201
    started = httpx.post(f"{first.url}{MODELS}/{tag}/shadow", params={"share": 1}, headers=ADMIN, timeout=60)
    assert started.status_code == 200, started.text
    stored = fleet.homes[2] / "models" / tag.replace(":", "/")
    assert not stored.exists()

    def compared() -> int:
        assert served_version(third.url)[0] == 200  # traffic through replica 3 only
        report = httpx.get(f"{second.url}{MODELS}/shadow/report", params={"model_type": THREAT_MODEL_NAME}, timeout=60)
        assert report.status_code == 200, report.text
        return report.json()["flows_compared"]

    wait_until(lambda: compared() > 0, UNREADY_DEADLINE, "flows of replica 3 compared in shadow")
    assert stored.exists()  # fetched into replica 3's own store
    stopped = httpx.post(
        f"{third.url}{MODELS}/shadow/stop", params={"model_type": THREAT_MODEL_NAME}, headers=ADMIN, timeout=60
    )
    assert stopped.status_code == 200, stopped.text


def package_bytes_with_key(fleet: Fleet, tag: str, key: bytes) -> bytes:
    """The version's package signed with `key`, packed from replica 1's store."""
    return package_bytes(bentoml.Model.from_path(fleet.homes[0] / "models" / tag.replace(":", "/")), key)
