"""Two replicas of the image behind HAProxy (deploy/haproxy/haproxy.cfg) on loopback ports, sharing the
machine's PostgreSQL audit log, plus a third replica whose threat model fails verification.

The replicas use the host's network: PostgreSQL listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
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

from benchmarks.replicas import Container, Haproxy, Outcome, haproxy, paced

from .conftest import FIXTURES, Image, missing

pytestmark = pytest.mark.container

PG_URL = os.environ.get("NIDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RATE = 100  # requests per second
DETECT = (FIXTURES / "detect_threat.json").read_bytes()
REPLICAS = ("replica1", "replica2")


@dataclass(frozen=True)
class Cluster:
    balancer: Haproxy
    replicas: tuple[Container, Container]
    unverified: Container


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
    with connection:
        for table in ("actions", "state"):
            connection.execute(f"DROP TABLE IF EXISTS {prefix}{table}")


def tampered_onnx(home: Path, tag: str, target: Path) -> Path:
    name, version = tag.split(":")
    data = bytearray((home / "models" / name / version / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    target.write_bytes(bytes(data))
    target.chmod(0o644)
    return target


@pytest.fixture(scope="module")
def cluster(
    run_container: Callable[..., Container],
    audit_prefix: str,
    image: Image,
    model_store: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None:
        missing("no haproxy on PATH (Debian package haproxy)")
    shared = {"NIDS_HEALING_AUDIT_URL": PG_URL, "NIDS_HEALING_AUDIT_TABLE_PREFIX": audit_prefix}
    replicas = (run_container(host_network=True, **shared), run_container(host_network=True, **shared))
    onnx = tampered_onnx(model_store.home, image.threat_tag, tmp_path_factory.mktemp("tampered") / "model.onnx")
    name, version = image.threat_tag.split(":")
    mount = f"{onnx}:/home/bentoml/bento/models/{name}/{version}/model.onnx:ro"
    unverified = run_container(host_network=True, wait="/livez", mounts=(mount,), **shared)
    with haproxy([replica.address for replica in replicas]) as balancer:
        balancer.add_server("unverified", unverified.address)
        for server in REPLICAS:
            balancer.wait_status(server, "UP")
        balancer.wait_status("unverified", "DOWN")
        yield Cluster(balancer, replicas, unverified)


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


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
    with httpx.Client(base_url=cluster.balancer.url, timeout=30) as http:
        for n in range(10):
            events = {"events": [{"attack_type": "SSH-Patator", "confidence": 0.97, "src_ip": f"198.51.100.{n + 1}"}]}
            response = http.post("/self_heal", json=events)
            assert response.status_code == 200, response.text
            decided[response.headers["x-nids-replica"]] |= {action["action_id"] for action in response.json()}
    assert all(decided.values()), decided
    everything = set.union(*decided.values())
    for replica in cluster.replicas:  # each replica lists the other's decisions too: one shared log
        listed = httpx.post(f"{replica.url}/healing_actions", json={"limit": 1000}, timeout=30).json()
        assert everything <= {record["action_id"] for record in listed}


def test_stopping_a_replica_under_load_loses_no_request_once_it_is_taken_out(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: list[Outcome] = []
    load = threading.Thread(
        target=lambda: outcomes.extend(
            asyncio.run(paced(cluster.balancer.url, "/detect_threat", DETECT, RATE, seconds=12))
        )
    )
    cpu = time.process_time()
    load.start()
    time.sleep(3)
    stopped_at = time.monotonic()
    exit_code = cluster.replicas[1].stop()  # docker stop: SIGTERM, the replica drains and exits
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
        f"stopped replica2 under {RATE} req/s: {len(outcomes)} requests, {len(before)} failed between the stop and "
        f"the health check taking it out ({down_at - stopped_at:.2f} s later: "
        f"{dict(Counter(outcome.error or outcome.status for outcome in before))}), {len(after)} after; "
        f"load generator CPU {cpu:.1f} s over 12 s",
    )
    assert len(outcomes) == RATE * 12
