"""Two replicas behind HAProxy (deploy/haproxy/haproxy.cfg) on loopback ports, sharing the machine's PostgreSQL
audit log, plus a third replica whose threat model fails verification.

The replicas are containers of the image on the host's network (PostgreSQL listens on 127.0.0.1 only) or,
where no Docker engine can be started, `bentoml serve` processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.replicas import (
    VIEWER,
    Container,
    Haproxy,
    Outcome,
    Replica,
    ServeProcess,
    StartError,
    haproxy,
    paced,
    start_process,
)
from tests.integration.conftest import copy_store

from .conftest import FIXTURES, missing, report

pytestmark = pytest.mark.container

PG_URL = os.environ.get("NIDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RATE = 100  # requests per second
KILL_LOAD_SECONDS = 30  # spans a worker's kill, its restart (within 10 s) and start
DETECT = (FIXTURES / "detect_threat.json").read_bytes()
REPLICAS = ("replica1", "replica2")


@dataclass(frozen=True)
class Cluster:
    balancer: Haproxy
    replicas: tuple[Replica, Replica]
    unverified: Replica


@pytest.fixture(scope="module")
def audit_prefix() -> Iterator[str]:
    """A table prefix of this module's own in the shared PostgreSQL database; its tables are dropped after."""
    import psycopg

    try:
        connection = psycopg.connect(PG_URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {error}")
    prefix = f"ct_{uuid.uuid4().hex[:8]}_"
    yield prefix
    with connection:  # the audit log's and the model lifecycle's (prefix + "lc_") tables
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND starts_with(tablename, %s)",
            (prefix,),
        ).fetchall()
        for (table,) in tables:
            connection.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def start_replica(
    request: pytest.FixtureRequest, model_store: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Replica]]:
    """start_replica(tampered=False, **env) -> Replica, listening on a loopback port: a container of the image on
    the host's network or, where no Docker engine can be started (never in CI), a `bentoml serve` process of the
    source tree. tampered: the threat model's ONNX file has one flipped byte, so /readyz stays 503."""
    try:
        run_container: Callable[..., Container] | None = request.getfixturevalue("run_container")
    except pytest.skip.Exception:
        run_container = None
    name, version = model_store.threat_tag.split(":")
    processes: list[ServeProcess] = []

    def start(tampered: bool = False, **env: str) -> Replica:
        wait = "/livez" if tampered else "/readyz"
        if run_container is not None:
            mounts: tuple[str, ...] = ()
            if tampered:
                onnx = tmp_path_factory.mktemp("tampered") / "model.onnx"
                shutil.copyfile(model_store.home / "models" / name / version / "model.onnx", onnx)
                flip_a_byte(onnx)
                onnx.chmod(0o644)
                mounts = (f"{onnx}:/home/bentoml/bento/models/{name}/{version}/model.onnx:ro",)
            return run_container(host_network=True, wait=wait, mounts=mounts, **env)
        home = copy_store(model_store.home, tmp_path_factory.mktemp("replica-store"))
        if tampered:
            flip_a_byte(home / "models" / name / version / "model.onnx")
        try:
            replica = start_process(home, tmp_path_factory.mktemp("replica"), wait=wait, **env)
        except StartError as error:
            pytest.fail(str(error))
        processes.append(replica)
        return replica

    yield start
    for process in processes:
        process.remove()


@pytest.fixture(scope="module")
def cluster(start_replica: Callable[..., Replica], audit_prefix: str) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None:
        missing("no haproxy on PATH (Debian package haproxy)")
    # the lifecycle state follows the audit log's database: under a prefix of this module's own too, so the
    # versions other sessions recorded as active in the shared database are not this cluster's
    shared = {
        "NIDS_HEALING_AUDIT_URL": PG_URL,
        "NIDS_HEALING_AUDIT_TABLE_PREFIX": audit_prefix,
        "NIDS_MODEL_STATE_TABLE_PREFIX": f"{audit_prefix}lc_",
    }
    replicas = (start_replica(**shared), start_replica(**shared))
    unverified = start_replica(tampered=True, **shared)
    with haproxy([replica.address for replica in replicas]) as balancer:
        balancer.add_server("unverified", unverified.address)
        for server in REPLICAS:
            balancer.wait_status(server, "UP")
        balancer.wait_status("unverified", "DOWN")
        yield Cluster(balancer, replicas, unverified)


def test_requests_spread_over_both_replicas_and_never_reach_the_unverified_one(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    readyz = httpx.get(f"{cluster.unverified.url}/readyz", timeout=5)
    assert readyz.status_code == 503 and "does not match its recorded sha256" in readyz.json()["error"]
    outcomes = asyncio.run(paced(cluster.balancer.url, "/detect_threat", DETECT, RATE, seconds=5))
    assert Counter(outcome.status for outcome in outcomes) == {200: len(outcomes)}
    served = Counter(outcome.replica for outcome in outcomes)
    assert set(served) == set(REPLICAS) and min(served.values()) >= len(outcomes) // 3, served
    stats = cluster.balancer.stats()
    assert stats["unverified"].status == "DOWN" and stats["unverified"].selected == 0
    report(capsys, f"balanced {len(outcomes)} requests at {RATE}/s: {dict(served)}, unverified replica: 0")


def test_the_audit_log_holds_both_replicas_actions(cluster: Cluster) -> None:
    decided: dict[str, set[str]] = {server: set() for server in REPLICAS}
    with httpx.Client(base_url=cluster.balancer.url, timeout=30, headers=VIEWER) as http:
        for n in range(10):
            events = {"events": [{"attack_type": "SSH-Patator", "confidence": 0.97, "src_ip": f"198.51.100.{n + 1}"}]}
            response = http.post("/self_heal", json=events)
            assert response.status_code == 200, response.text
            decided[response.headers["x-nids-replica"]] |= {action["action_id"] for action in response.json()}
    assert all(decided.values()), decided
    everything = set.union(*decided.values())
    for replica in cluster.replicas:  # each replica lists the other's decisions too: one shared log
        listed = httpx.post(f"{replica.url}/healing_actions", json={"limit": 1000}, headers=VIEWER, timeout=30).json()
        assert everything <= {record["action_id"] for record in listed}


def test_a_worker_killed_under_load_is_restarted(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL (as the kernel's out-of-memory killer) one worker of replica1 under 100 req/s through the balancer:
    the server restarts it; meanwhile the replica answers /readyz 503 (the balancer may drain it)."""
    replica = cluster.replicas[0]
    before = replica.workers()
    assert len(before) >= 2, before
    outcomes: list[Outcome] = []
    load = threading.Thread(
        target=lambda: outcomes.extend(
            asyncio.run(paced(cluster.balancer.url, "/detect_threat", DETECT, RATE, seconds=KILL_LOAD_SECONDS))
        )
    )
    load.start()
    time.sleep(3)  # load shape: the kill falls inside the load
    killed_at = time.monotonic()
    os.kill(before[max(before)], signal.SIGKILL)
    deadline = killed_at + 90
    while (back := replica.workers()).keys() != before.keys() or back == before:
        assert time.monotonic() < deadline, f"worker {max(before)} not restarted within 90 s: {back}"
        time.sleep(0.2)
    while httpx.get(f"{replica.url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "replica1 not ready again within 90 s"
        time.sleep(0.2)
    back_at = time.monotonic()
    cluster.balancer.wait_status("replica1", "UP", seconds=30)
    load.join(timeout=KILL_LOAD_SECONDS + 60)
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    assert not [outcome for outcome in failed if outcome.sent > back_at], failed[:5]
    report(
        capsys,
        f"SIGKILL of a worker of replica1 under {RATE} req/s through HAProxy: {len(failed)} of {len(outcomes)} "
        f"failed ({dict(Counter(outcome.error or outcome.status for outcome in failed))}); restarted and ready "
        f"{back_at - killed_at:.1f} s after the kill",
    )


def test_stopping_a_replica_under_load_loses_no_request_once_it_is_taken_out(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: list[Outcome] = []
    load = threading.Thread(
        target=lambda: asyncio.run(paced(cluster.balancer.url, "/detect_threat", DETECT, RATE, 12, outcomes))
    )
    cpu = time.process_time()
    load.start()
    deadline = time.monotonic() + 30
    while {outcome.replica for outcome in outcomes if outcome.status == 200} != {"replica1", "replica2"}:
        assert time.monotonic() < deadline, "the load did not reach both replicas"
        time.sleep(0.05)  # the stop comes once both replicas serve the load
    stopped_at = time.monotonic()
    exit_code = cluster.replicas[1].stop()  # SIGTERM: the replica drains and exits
    down_at = cluster.balancer.wait_status("replica2", "DOWN")
    load.join(timeout=60)
    cpu = time.process_time() - cpu
    assert exit_code == 0
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    before = [outcome for outcome in failed if outcome.sent < down_at]
    after = [outcome for outcome in failed if outcome.sent >= down_at]
    assert not after, after[:5]
    later = {outcome.replica for outcome in outcomes if outcome.sent >= down_at + 1}
    assert later == {"replica1"}
    report(
        capsys,
        f"stopped replica2 ({type(cluster.replicas[1]).__name__}) under {RATE} req/s: {len(outcomes)} requests, "
        f"{len(before)} failed between the stop and the health check taking it out "
        f"({down_at - stopped_at:.2f} s later: "
        f"{dict(Counter(outcome.error or outcome.status for outcome in before))}), {len(after)} after; "
        f"load generator CPU {cpu:.1f} s over 12 s",
    )
    assert len(outcomes) == RATE * 12
