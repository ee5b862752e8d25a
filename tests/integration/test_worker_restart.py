"""A worker killed under load (SIGKILL, as the kernel kills one out of memory) is restarted, and the replica
answers /readyz 503 while it is missing. The server runs as inside an image (BENTOML_CONTAINERIZED=true), where
BentoML 1.4.39 alone would never restart it (nids.serving.compat.respawn)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.replicas import Outcome, ServeProcess, paced, start_process

from .conftest import STARTUP_SECONDS, copy_store, wait_for

pytestmark = [pytest.mark.integration]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DETECT = (FIXTURES / "detect_threat.json").read_bytes()
RATE = 100  # requests per second
LOAD_SECONDS = 30  # long enough to span the kill, the restart and a stretch served by both workers again


@pytest.fixture(scope="module")
def replica(model_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    home = copy_store(model_store.home, tmp_path_factory.mktemp("restart-store"))
    server = start_process(home, tmp_path_factory.mktemp("restart"), NIDS_WORKERS="2", BENTOML_CONTAINERIZED="true")
    yield server
    server.remove()


def test_a_killed_worker_is_restarted_and_the_replica_is_unready_meanwhile(
    replica: ServeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    def both_workers() -> dict[int, int] | None:
        workers = replica.workers()
        return workers if len(workers) == 2 else None

    before = wait_for(both_workers, STARTUP_SECONDS)
    outcomes: list[Outcome] = []
    load = threading.Thread(
        target=lambda: outcomes.extend(asyncio.run(paced(replica.url, "/detect_threat", DETECT, RATE, LOAD_SECONDS)))
    )
    load.start()
    time.sleep(3)  # load shape: the kill falls inside the load, not at its start
    # the arbiter held still: its periodic check (every 10 s) cannot replace the worker before /readyz is read
    os.kill(replica.pid(), signal.SIGSTOP)
    try:
        killed_at = time.monotonic()
        os.kill(before[2], signal.SIGKILL)

        def unready() -> str | None:
            response = httpx.get(f"{replica.url}/readyz", timeout=5)
            return response.json()["error"] if response.status_code == 503 else None

        reason = wait_for(unready, 30)
    finally:
        os.kill(replica.pid(), signal.SIGCONT)
    assert "1 of 2 workers running" in reason and "restarts it" in reason, reason
    after = wait_for(both_workers, 60)
    assert after[1] == before[1] and after[2] != before[2]
    wait_for(lambda: httpx.get(f"{replica.url}/readyz", timeout=5).status_code == 200, STARTUP_SECONDS)
    back_at = time.monotonic()
    wait_for(lambda: replica.logs().count("[entry_service:nids:2] Service nids initialized") == 2, 60)
    load.join(timeout=LOAD_SECONDS + 60)
    assert len(outcomes) == RATE * LOAD_SECONDS
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    assert not [outcome for outcome in failed if outcome.sent > back_at], "no failure once the worker is back"
    report = {
        "killed worker": before[2],
        "failed": len(failed),
        "of": len(outcomes),
        "kinds": dict(Counter(outcome.error or outcome.status for outcome in failed)),
        "back after s": round(back_at - killed_at, 1),
    }
    with capsys.disabled():
        print(f"\nworker SIGKILL under {RATE} req/s (arbiter paused until /readyz said 503): {json.dumps(report)}")
