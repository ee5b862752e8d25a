"""A service whose own databases cannot be used at start is up and unready with the reason - never a crash loop -
and becomes ready without a restart once they are fixed: a corrupt lifecycle row, an unreachable PostgreSQL
(the lifecycle state and the audit log), a read-only or full data directory. Once serving, a lifecycle database
lost, a full disk under the prediction log and a full queue are said on /readyz (`degraded`), and in the
statistics or the lifecycle API's 503, with counts and times.

The read-only and full data directories are real tmpfs mounts (skipped where this process may not mount).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nids.core.features import THREAT_MODEL_NAME
from nids.models.state import open_lifecycle_store

from ..healing.conftest import PG_URL, postgres_reachable
from .conftest import REPO, Server

pytestmark = [pytest.mark.integration, pytest.mark.long_running]

RECOVERY_SECONDS = 60.0
DETECT = json.loads((REPO / "tests" / "fixtures" / "detect_threat.json").read_text())


def wait_for_status(server: Server, status: int, seconds: float = RECOVERY_SECONDS) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while (response := httpx.get(f"{server.url}/readyz", timeout=10)).status_code != status:
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz not {status} within {seconds} s: {response.status_code} {response.text}")
        time.sleep(0.3)
    return response


def mount_tmpfs(mounts: list[Path], path: Path, options: str) -> Path:
    """A tmpfs at `path` (unmounted by the `mounts` fixture); skips the test where this process may not mount."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    mounts.append(path)
    return path


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Mount points made by the tests; unmounted after the module's servers are stopped (set up before `serve`)."""
    made: list[Path] = []
    yield made
    for path in made:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- at start ---------------------------------------------------------------------------------------------
def test_a_corrupt_lifecycle_row_makes_it_unready_until_fixed(
    mounts: list[Path], serve: Callable[..., Server], model_store: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite3"
    store = open_lifecycle_store(f"sqlite:///{state}")
    store.initialise(THREAT_MODEL_NAME, model_store.threat_tag, "test")
    store.close()
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE lifecycle_active SET history = '{not json'")
    server = serve(model_store.home, NIDS_MODEL_STATE_URL=f"sqlite:///{state}")
    reason = wait_for_status(server, 503).json()["error"]
    assert "row 'threat_detector' of table lifecycle_active is corrupt" in reason
    assert "NIDS_MODEL_STATE_URL" in reason and str(state) in reason
    assert "lifecycle_active is corrupt" in server.log.read_text()
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE lifecycle_active SET history = '[]'")
    wait_for_status(server, 200)
    assert httpx.post(f"{server.url}/detect_threat", json=DETECT, timeout=30).status_code == 200


def test_an_unreachable_postgresql_makes_it_unready_until_it_answers(
    mounts: list[Path], serve: Callable[..., Server], model_store: Any
) -> None:
    if reason := postgres_reachable():
        pytest.skip(reason)
    import psycopg

    name = f"nids_missing_{uuid.uuid4().hex[:10]}"
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    server = serve(model_store.home, NIDS_HEALING_AUDIT_URL=url)  # the lifecycle state follows it
    try:
        reason = wait_for_status(server, 503).json()["error"]
        assert f"model lifecycle state cannot be opened at {url} (set by NIDS_HEALING_AUDIT_URL)" in reason
        assert f"self-healing audit log cannot be opened at {url}" in reason
        assert "the database does not exist on the server" in reason and name in server.log.read_text()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        wait_for_status(server, 200)
        healed = httpx.post(f"{server.url}/self_heal", json={"events": [{"attack_type": "PortScan"}]}, timeout=30)
        assert healed.status_code == 200
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_read_only_data_directory_makes_it_unready_until_writable(
    mounts: list[Path], serve: Callable[..., Server], model_store: Any, tmp_path: Path
) -> None:
    data = mount_tmpfs(mounts, tmp_path / "var", "ro,size=64m")
    server = serve(model_store.home, NIDS_DATA_DIR=str(data))
    reason = wait_for_status(server, 503).json()["error"]
    assert f"model lifecycle state cannot be opened at sqlite:///{data}/model-lifecycle.sqlite3" in reason
    assert "(set by NIDS_DATA_DIR)" in reason
    assert f"self-healing audit log cannot be opened at sqlite:///{data}" in reason
    assert str(data) in server.log.read_text()
    remount(data, "rw")
    wait_for_status(server, 200)
    assert httpx.post(f"{server.url}/detect_threat", json=DETECT, timeout=30).status_code == 200
    stats = httpx.get(f"{server.url}/api/v1/predictions/stats", timeout=30)
    assert stats.status_code == 200  # the prediction log opened too, without a restart


def test_a_full_data_directory_makes_it_unready_until_there_is_room(
    mounts: list[Path], serve: Callable[..., Server], model_store: Any, tmp_path: Path
) -> None:
    """A tmpfs filled to its last block before the server starts: up and unready naming the files, the setting and
    the full disk (never a crash loop); ready without a restart once there is room."""
    data = mount_tmpfs(mounts, tmp_path / "filled", "size=8m")
    filler = data / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)  # to ENOSPC
    server = serve(model_store.home, NIDS_DATA_DIR=str(data))
    reason = wait_for_status(server, 503).json()["error"]
    assert f"model lifecycle state cannot be opened at sqlite:///{data}/model-lifecycle.sqlite3" in reason
    assert "(set by NIDS_DATA_DIR)" in reason and "the disk holding it is full" in reason
    assert f"self-healing audit log cannot be opened at sqlite:///{data}" in reason
    assert server.log.read_text().count("not serving until the model lifecycle state can be read") >= 1
    filler.unlink()
    wait_for_status(server, 200)
    assert httpx.post(f"{server.url}/detect_threat", json=DETECT, timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/api/v1/predictions/stats", timeout=30).status_code == 200


# --- while serving ----------------------------------------------------------------------------------------
def test_a_lifecycle_database_lost_while_serving_is_said_and_its_api_refused_until_it_answers(
    mounts: list[Path], serve: Callable[..., Server], model_store: Any
) -> None:
    """The state's PostgreSQL refuses every connection (its sessions ended, new ones not allowed): the verified
    versions are still served, /readyz lists the outage under `degraded`, the lifecycle API answers 503 with the
    reason; once it answers again, all of it is back without a restart."""
    if reason := postgres_reachable():
        pytest.skip(reason)
    import psycopg

    name = f"nids_lost_{uuid.uuid4().hex[:10]}"
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        server = serve(model_store.home, NIDS_MODEL_STATE_URL=url)
        wait_for_status(server, 200)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        ready = wait_for_degraded(server, "model lifecycle state unavailable since")
        assert ready.status_code == 200  # still serving its verified versions: degraded, said, not drained
        assert f"{url} (set by NIDS_MODEL_STATE_URL)" in degraded(ready) and "answers 503" in degraded(ready)
        assert httpx.post(f"{server.url}/detect_threat", json=DETECT, timeout=30).status_code == 200
        fleet = httpx.get(f"{server.url}/api/v1/models/status/fleet", timeout=30)
        assert fleet.status_code == 503, fleet.text
        assert "model lifecycle state unavailable" in fleet.json()["error"] and url in fleet.json()["error"]
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        deadline = time.monotonic() + RECOVERY_SECONDS
        while "model lifecycle state" in degraded(httpx.get(f"{server.url}/readyz", timeout=10)):
            assert time.monotonic() < deadline, "the outage was still listed once the database answered"
            time.sleep(0.3)
        assert httpx.get(f"{server.url}/api/v1/models/status/fleet", timeout=30).status_code == 200
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_full_disk_under_the_prediction_log_is_said_and_loses_nothing(
    mounts: list[Path], serve: Callable[..., Server], model_store: Any, tmp_path: Path
) -> None:
    data = mount_tmpfs(mounts, tmp_path / "full", "size=16m")
    server = serve(model_store.home, NIDS_DATA_DIR=str(data), NIDS_PREDICTION_LOG_FLUSH_SECONDS="0.1")
    wait_for_status(server, 200)
    filler = data / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False)  # to ENOSPC
    for _ in range(5):
        assert httpx.post(f"{server.url}/detect_threat", json=DETECT, timeout=30).status_code == 200
    ready = wait_for_degraded(server, "prediction log store unavailable since")
    assert ready.status_code == 200  # still serving: degraded, said, not drained
    log = httpx.get(f"{server.url}/api/v1/predictions/stats", timeout=30).json()["log"]
    assert log["complete"] is False and log["store_unavailable_since"] is not None
    assert log["buffered_rows"] >= 1 and log["lost_rows"] == {}  # held, not lost
    filler.unlink()
    deadline = time.monotonic() + RECOVERY_SECONDS
    while not (log := httpx.get(f"{server.url}/api/v1/predictions/stats", timeout=30).json()["log"])["complete"]:
        assert time.monotonic() < deadline, log
        time.sleep(0.3)
    assert httpx.get(f"{server.url}/api/v1/predictions/stats", timeout=30).json()["total_predictions"] >= 5


def test_rows_a_full_queue_drops_are_counted_with_their_time(
    mounts: list[Path], serve: Callable[..., Server], model_store: Any
) -> None:
    server = serve(model_store.home, NIDS_PREDICTION_LOG_QUEUE_ROWS="2")
    wait_for_status(server, 200)
    flows = {"flows": DETECT["flows"] * 3}  # more rows than the queue holds: dropped whole, counted
    assert httpx.post(f"{server.url}/detect_threat", json=flows, timeout=30).status_code == 200
    ready = wait_for_degraded(server, "prediction log dropped")
    assert "queue_full" in degraded(ready)
    log = httpx.get(f"{server.url}/api/v1/predictions/stats", timeout=30).json()["log"]
    assert log["lost_rows"]["queue_full"] == len(flows["flows"]) and log["lost_since"] is not None


def degraded(response: httpx.Response) -> str:
    """What /readyz lists as degraded ('' when it has nothing to say: BentoML's own answer)."""
    try:
        return " ".join(response.json().get("degraded", []))
    except ValueError:
        return ""


def wait_for_degraded(server: Server, text: str) -> httpx.Response:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while text not in degraded(response := httpx.get(f"{server.url}/readyz", timeout=10)):
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz never said {text!r}: {response.text}")
        time.sleep(0.3)
    return response
