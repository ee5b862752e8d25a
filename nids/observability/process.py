"""The prediction log written by a process of its own, at a lower CPU priority than inference.

Turning a 1,000-flow batch into rows and inserting them costs the SQLite writer 15-30 us per row, more than the
request's decoding, validation and model call together (BENCHMARKS.md): on the worker's own thread it held the GIL
the request path needs and slowed bulk scoring to half, while still falling behind. Here a worker only pickles what
`record` queued (~0.2 us per row) and hands it to a child process (`python -m nids.observability.process`) over a
socket pair; the child runs the ordinary `PredictionLog` (queue, batches, retention) at a lower CPU priority:
`idle` (Linux SCHED_IDLE: it runs only on a core nothing else wants; nice 19 where that policy is missing), `low`
(nice +10) or `normal` (NIDS_PREDICTION_LOG_PRIORITY). When the machine is saturated the child falls behind and
its bounded queue drops whole batches, counted in the worker's metrics through `on_lost` as before: inference
first, and nothing dropped silently.

The child's configuration, the database URL among it (it may carry a password), goes over the socket as the first
message, never on the command line (`ps` shows every process's arguments to every user of the host).

The child exits when the worker closes the log (after writing what it holds) or when the worker is gone (end of
the socket). If the child dies, what the worker then records is counted as `store_error` and logged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from nids.core.database import open_database
from nids.core.settings import LogPriority
from nids.observability.log import BatchQueue, LostReason, OutageObserver, PredictionLog
from nids.observability.records import PredictionBatch, user_rows
from nids.observability.store import PredictionStore

logger = logging.getLogger("nids.observability")
CLOSE = b"close"
SEND_SECONDS = 0.05


class PredictionLogProcess:
    """A `PredictionSink` whose writes happen in a child process; the options are PredictionLog's."""

    def __init__(
        self,
        url: str,
        table_prefix: str,
        *,
        priority: LogPriority = "idle",
        queue_rows: int = 100_000,
        on_written: Callable[[int], None] = lambda rows: None,
        on_lost: Callable[[LostReason, int], None] = lambda reason, rows: None,
        on_outage: OutageObserver = lambda since, error, queued: None,
        **options: Any,
    ) -> None:
        self.on_written, self.on_lost, self.on_outage = on_written, on_lost, on_outage
        ours, theirs = socket.socketpair()
        config = {"url": url, "table_prefix": table_prefix, "priority": priority, "queue_rows": queue_rows, **options}
        path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))
        self._child = subprocess.Popen(
            [sys.executable, "-m", "nids.observability.process", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={**os.environ, "PYTHONPATH": path},  # wherever the worker runs from, the child imports this package
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send_bytes(json.dumps(config).encode())  # the first message: never in argv (the URL's password)
        self._queue = BatchQueue(queue_rows)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._alive = True
        self.sent_rows = 0  # handed to the writer process so far (written by it even if this process dies now)
        self._sender = threading.Thread(target=self._send, name="prediction-log-sender", daemon=True)
        self._receiver = threading.Thread(target=self._receive, name="prediction-log-counts", daemon=True)
        self._sender.start()
        self._receiver.start()

    def record(self, batch: PredictionBatch) -> None:
        n = len(batch)
        if not n:
            return
        if not self._alive:
            reason: LostReason = "store_error"
        elif self._queue.offer(batch) is None:
            reason = "queue_full"
        else:
            return
        if not batch.warm_up:  # a worker's own warm-up is never stored, so never lost either
            self.on_lost(reason, n)

    def _send(self) -> None:
        """Every SEND_SECONDS, what was queued: one pickle and one write for many single-flow calls, and not woken
        by each request right as its model call returns, when the request needs the GIL back."""
        while True:
            self._wake.wait(SEND_SECONDS)
            self._wake.clear()
            closing = self._closing
            batches = self._queue.take()
            try:
                if batches:
                    self._conn.send_bytes(pickle.dumps(batches, protocol=pickle.HIGHEST_PROTOCOL))
                    self.sent_rows += sum(map(len, batches))
                if closing:
                    self._conn.send_bytes(CLOSE)
                    return
            except OSError as error:  # the child is gone
                self._gone(sum(map(len, batches)), error)
                return

    def _receive(self) -> None:
        """Counts from the child: ("written", rows), ("lost", reason, rows), ("outage", since, error, queued)."""
        try:
            while True:
                message = pickle.loads(self._conn.recv_bytes())
                if message[0] == "written":
                    self.on_written(message[1])
                elif message[0] == "outage":
                    self.on_outage(*message[1:])
                else:
                    self.on_lost(message[1], message[2])
        except (EOFError, OSError) as error:
            if not self._closing:
                self._gone(0, error)

    def _gone(self, rows: int, error: BaseException) -> None:
        with self._lock:
            was_alive, self._alive = self._alive, False
        rows += user_rows(self._queue.take())  # queued before the end was seen: lost too, and counted
        if rows:
            self.on_lost("store_error", rows)
        if was_alive:
            logger.error("the prediction log's writer process ended (%s: %s): predictions are no longer recorded",
                         type(error).__name__, error)  # fmt: skip

    def close(self) -> None:
        """Hand over what is queued; the child writes it, closes its store and exits."""
        self._closing = True
        self._wake.set()
        self._sender.join(timeout=30)
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
        self._receiver.join(timeout=5)
        self._conn.close()


def lower_priority(priority: LogPriority) -> None:
    """This process's CPU priority below the workers' (measured on bulk scoring with 2 workers on 2 cores: the
    writers took 30% of the machine at nice 10, 20% as SCHED_IDLE, and the API went from 75-78k to 87-91k flows/s)."""
    if priority == "low":
        os.nice(10)
    elif priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # not Linux
            os.nice(19)


def _serve(conn: Connection) -> None:
    """The child: its configuration (the first message), then batches from the worker into an ordinary
    PredictionLog, counts back to it."""
    config: dict[str, Any] = json.loads(conn.recv_bytes())
    lower_priority(config.pop("priority"))
    reply_lock = threading.Lock()

    def reply(*message: Any) -> None:
        with reply_lock, contextlib.suppress(OSError):  # the worker is gone: its counts with it
            conn.send_bytes(pickle.dumps(message))

    store = PredictionStore(open_database(config.pop("url")), config.pop("table_prefix"))
    log = PredictionLog(
        store,
        on_written=lambda rows: reply("written", rows),
        on_lost=lambda reason, rows: reply("lost", reason, rows),
        on_outage=lambda since, error, queued: reply("outage", since, error, queued),
        **config,
    )
    try:
        while (data := conn.recv_bytes()) != CLOSE:
            for batch in pickle.loads(data):
                log.record(batch)
    except EOFError:  # the worker is gone: write what was received
        pass
    finally:
        log.close()
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="the prediction log's writer process (started by the service)")
    parser.add_argument("fd", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] [prediction-log] %(message)s")
    _serve(Connection(args.fd))


if __name__ == "__main__":
    main()
