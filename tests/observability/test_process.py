"""The prediction log's writer process (nids.observability.process): what a worker records reaches the store
through it, counts come back, and it outlives neither its worker nor a crash unnoticed."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from nids.core.database import SqliteDatabase
from nids.core.model import ActiveModels
from nids.observability.process import PredictionLogProcess
from nids.observability.store import PredictionStore

from .conftest import batch


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _rows_in(path: Path, expected: int, seconds: float = 120) -> int:
    store = PredictionStore(SqliteDatabase(path))
    deadline = time.monotonic() + seconds
    while (n := store.last_id()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    store.close()
    return n


def _writers() -> list[psutil.Process]:
    """This process's running writer children (a zombie another test of the worker left behind is none)."""
    found = []
    for child in psutil.Process().children():
        try:
            if "nids.observability.process" in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            pass
    return found


def _writer() -> psutil.Process:
    (child,) = _writers()
    return child


def test_batches_are_written_by_a_lower_priority_process_and_counted(
    tmp_path: Path,
    models: ActiveModels,
    flows: Any,
) -> None:
    written: list[int] = []
    log = PredictionLogProcess(_url(tmp_path / "log.sqlite3"), "nids_", flush_seconds=0.05,
                               on_written=written.append)  # fmt: skip
    deadline = time.monotonic() + 120  # the child lowers its own priority once started
    while os.sched_getscheduler(_writer().pid) != os.SCHED_IDLE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.sched_getscheduler(_writer().pid) == os.SCHED_IDLE, "runs only on spare CPU"
    for _ in range(3):
        log.record(batch(models, flows))
    log.close()
    assert sum(written) == 3 * len(flows)
    assert _rows_in(tmp_path / "log.sqlite3", 3 * len(flows), seconds=0) == 3 * len(flows)
    assert not _writers()


def test_a_full_queue_is_counted_not_blocking(tmp_path: Path, models: ActiveModels, flows: Any) -> None:
    lost: list[tuple[str, int]] = []
    log = PredictionLogProcess(_url(tmp_path / "log.sqlite3"), "nids_", queue_rows=len(flows),
                               on_lost=lambda reason, rows: lost.append((reason, rows)))  # fmt: skip
    _writer().suspend()  # the child reads nothing: the worker's queue fills
    try:
        for _ in range(200):
            log.record(batch(models, flows))
        assert lost and {reason for reason, _ in lost} == {"queue_full"}
    finally:
        _writer().resume()
        log.close()


def test_a_writer_that_died_is_counted_as_store_errors(tmp_path: Path, models: ActiveModels, flows: Any) -> None:
    lost: list[tuple[str, int]] = []
    log = PredictionLogProcess(_url(tmp_path / "log.sqlite3"), "nids_",
                               on_lost=lambda reason, rows: lost.append((reason, rows)))  # fmt: skip
    child = _writer()
    child.kill()
    child.wait(10)
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        log.record(batch(models, flows))
        time.sleep(0.05)
    assert lost and lost[-1] == ("store_error", len(flows))
    log.close()


WORKER = """
import pickle, sys, time
from nids.observability.process import PredictionLogProcess
log = PredictionLogProcess(sys.argv[1], "nids_", flush_seconds=60)
batches = pickle.load(open(sys.argv[2], "rb"))
for item in batches:
    log.record(item)
while log.sent_rows < sum(map(len, batches)):  # handed over to the writer process
    time.sleep(0.01)
print("recorded", flush=True)
time.sleep(600)
"""


def test_a_killed_worker_leaves_no_writer_and_loses_nothing_handed_over(
    tmp_path: Path, models: ActiveModels, flows: Any
) -> None:
    """The worker is killed right after handing its batches over: the child writes what it had received, then
    exits."""
    batches = tmp_path / "batches.pickle"
    batches.write_bytes(pickle.dumps([batch(models, flows) for _ in range(5)]))
    worker = subprocess.Popen([sys.executable, "-c", WORKER, _url(tmp_path / "log.sqlite3"), str(batches)],
                              stdout=subprocess.PIPE)  # fmt: skip
    assert worker.stdout is not None and worker.stdout.readline() == b"recorded\n"
    (child,) = psutil.Process(worker.pid).children()
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    child.wait(120)  # flush_seconds=60: only the end of the socket makes it write now and exit
    assert _rows_in(tmp_path / "log.sqlite3", 5 * len(flows), seconds=0) == 5 * len(flows)
