"""`docker-compose up` of deploy/docker-compose.yml as shipped, on the image under test: two replicas, PostgreSQL
and HAProxy. Where no registry answers, PostgreSQL and HAProxy are built from Debian's packages on the local base
(deploy/local-images.sh prints the override that runs them)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from benchmarks.replicas import Outcome, free_port, paced
from tests.integration.conftest import REPO

from .conftest import FIXTURES, Image, missing, report

pytestmark = pytest.mark.container

DEPLOY = REPO / "deploy"
RATE = 50  # requests per second: one replica takes them all once the other stops, on a 2-core machine shared
# with other work (at 100 req/s under a load average of 15 the remaining replica shed requests with 503)
DETECT = (FIXTURES / "detect_threat.json").read_bytes()
UP_SECONDS = 600  # the first run builds PostgreSQL and HAProxy from Debian's packages


@dataclass(frozen=True)
class Compose:
    url: str
    command: tuple[str, ...]
    env: dict[str, str]
    viewer_token: str

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"docker-compose {' '.join(args)}: {result.stderr[-3000:]}"
        return result


@pytest.fixture(scope="module")
def compose(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    if shutil.which("docker-compose") is None:
        missing("no docker-compose on PATH (Debian package docker-compose)")
    local = subprocess.run(
        [str(DEPLOY / "local-images.sh")], cwd=REPO, capture_output=True, text=True, timeout=UP_SECONDS, check=False
    )
    assert local.returncode == 0, local.stderr[-3000:]
    env_file = tmp_path_factory.mktemp("compose") / "compose.env"
    # deploy/compose.env.example with secrets of its own
    example = (DEPLOY / "compose.env.example").read_text().splitlines()
    names = [line.split("=")[0] for line in example if "=" in line and not line.startswith("#")]
    values = {name: secrets.token_hex(16) for name in names}
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    port = free_port()
    overrides = [str(REPO / arg) if arg.endswith(".yml") else arg for arg in local.stdout.split()]
    command = (
        "docker-compose",
        *("-p", f"nids-ci-{uuid.uuid4().hex[:8]}", "--env-file", str(env_file)),
        *("-f", str(DEPLOY / "docker-compose.yml"), *overrides),
    )
    env = {**os.environ, "NIDS_IMAGE": image.tag, "NIDS_LB_PORT": str(port)}
    cluster = Compose(f"http://127.0.0.1:{port}", command, env, values["NIDS_VIEWER_TOKEN"])
    try:
        up = subprocess.run([*command, "up", "-d"], env=env, capture_output=True, text=True, timeout=UP_SECONDS)
        # returns once both replicas are healthy and HAProxy started
        assert up.returncode == 0, up.stderr[-2000:] + cluster.run("logs", "--tail", "40").stdout[-6000:]
        deadline = time.monotonic() + 60
        while not _ready(cluster.url):
            assert time.monotonic() < deadline, cluster.run("logs", "--tail", "50").stdout[-4000:]
            time.sleep(0.5)
        yield cluster
    finally:
        subprocess.run([*command, "down", "-v", "-t", "40"], env=env, capture_output=True, timeout=300, check=False)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_both_replicas_serve_through_the_balancer_on_one_database(
    compose: Compose, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = asyncio.run(paced(compose.url, "/detect_threat", DETECT, RATE, 5, token=compose.viewer_token))
    assert Counter(outcome.status for outcome in outcomes) == {200: len(outcomes)}
    served = Counter(outcome.replica for outcome in outcomes)
    assert set(served) == {"replica1", "replica2"}, served
    # the audit log, the model lifecycle state and the prediction log: all in the one PostgreSQL database
    tables = compose.run("exec", "-T", "postgres", "psql", "-U", "nids", "-d", "nids", "-Atc", r"\dt").stdout
    prefixes = {line.split("|")[1].split("_")[0] for line in tables.splitlines() if "|" in line}
    assert {"healing", "lifecycle", "nids"} <= prefixes, tables
    report(capsys, f"compose: {len(outcomes)} requests at {RATE}/s through HAProxy: {dict(served)}")


def test_a_replica_stopped_under_load_costs_no_request_after_it_stopped(
    compose: Compose, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: list[Outcome] = []
    load = threading.Thread(
        target=lambda: outcomes.extend(
            asyncio.run(paced(compose.url, "/detect_threat", DETECT, RATE, 15, token=compose.viewer_token))
        )
    )
    load.start()
    time.sleep(3)  # load shape: the stop falls inside the load
    started = time.monotonic()
    compose.run("stop", "-t", "40", "nids-2", timeout=120)  # SIGTERM: the replica drains and exits
    stopped = time.monotonic()
    load.join(timeout=90)
    assert len(outcomes) == RATE * 15
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    assert not [outcome for outcome in failed if outcome.sent >= stopped], failed[-5:]
    assert {outcome.replica for outcome in outcomes if outcome.sent >= stopped} <= {"replica1"}
    report(
        capsys,
        f"compose: nids-2 stopped under {RATE} req/s ({stopped - started:.1f} s to drain and exit): "
        f"{len(failed)} of {len(outcomes)} failed, none after it stopped "
        f"({dict(Counter(outcome.error or outcome.status for outcome in failed))})",
    )
