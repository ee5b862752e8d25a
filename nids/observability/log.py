"""The prediction log: a bounded in-memory queue that a background thread writes to the store in batches.

`record` only appends a reference to the batch (under a lock held for microseconds) and never waits for the
store. The writer wakes every `flush_seconds`, or as soon as `batch_rows` rows wait, and writes them in
transactions of at most `batch_rows`. Rows that do not fit in the queue, or whose write failed (store slow or
down), are counted through `on_lost(reason, rows)` and logged (at most once per LOST_LOG_SECONDS per reason):
never silently dropped. Retention runs on the same thread every RETENTION_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from nids.observability.records import PredictionBatch
from nids.observability.store import PredictionStore

logger = logging.getLogger("nids.observability")
LostReason = Literal["queue_full", "store_error"]
RETENTION_SECONDS = 30.0
LOST_LOG_SECONDS = 10.0


class BatchQueue:
    """Batches waiting for the writer, at most `max_rows` rows in all (thread-safe, never blocks)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._batches: deque[PredictionBatch] = deque()
        self._rows = 0
        self._lock = threading.Lock()

    def offer(self, batch: PredictionBatch) -> int | None:
        """Queue the batch: the rows now waiting, or None when it does not fit (nothing queued)."""
        with self._lock:
            if self._rows + len(batch) > self.max_rows:
                return None
            self._batches.append(batch)
            self._rows += len(batch)
            return self._rows

    def take(self, max_rows: int | None = None) -> list[PredictionBatch]:
        """The oldest batches, up to `max_rows` rows (at least one batch when any waits; all when None)."""
        with self._lock:
            taken, rows = [], 0
            while self._batches and (not taken or max_rows is None or rows + len(self._batches[0]) <= max_rows):
                batch = self._batches.popleft()
                taken.append(batch)
                rows += len(batch)
            self._rows -= rows
            return taken


class PredictionLog:
    def __init__(
        self,
        store: PredictionStore,
        *,
        queue_rows: int = 100_000,
        batch_rows: int = 1_000,
        flush_seconds: float = 0.5,
        max_rows: int = 1_000_000,
        max_age_seconds: float = 30 * 86_400,
        on_written: Callable[[int], None] = lambda rows: None,
        on_lost: Callable[[LostReason, int], None] = lambda reason, rows: None,
    ) -> None:
        self.store = store
        self.queue_rows = queue_rows
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.max_age_seconds = max_age_seconds
        self.on_written = on_written
        self.on_lost = on_lost
        self._queue = BatchQueue(queue_rows)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._last_lost_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}  # lost since the last log line, per reason
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # --- the request path ----------------------------------------------------------------------------------
    def record(self, batch: PredictionBatch) -> None:
        n = len(batch)
        if not n:
            return
        waiting = self._queue.offer(batch)
        if waiting is None:
            self._lost("queue_full", n, f"{self.queue_rows} rows already wait to be written")
        elif waiting >= self.batch_rows:
            self._wake.set()

    # --- the writer thread -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything queued so far (the writer thread does this on its own; tests and shutdown call it)."""
        while batches := self._queue.take(self.batch_rows):
            rows = [row for batch in batches for row in batch.rows()]
            try:
                self.store.insert(rows)
            except Exception as error:  # any store failure: count and log what is lost, keep serving
                self._lost("store_error", len(rows), f"{type(error).__name__}: {error}")
            else:
                self.on_written(len(rows))

    def _run(self) -> None:
        next_retention = time.monotonic()
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            closing = self._closing
            self.flush()
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + RETENTION_SECONDS
                self._retain()
            if closing:
                return

    def _retain(self) -> None:
        try:
            deleted = self.store.enforce_retention(self.max_rows, time.time() - self.max_age_seconds)
        except Exception as error:  # retention is retried on the next round
            logger.warning("prediction log retention failed: %s: %s", type(error).__name__, error)
            return
        if deleted:
            logger.info("prediction log retention deleted %d rows", deleted)

    def _lost(self, reason: LostReason, rows: int, why: str) -> None:
        self.on_lost(reason, rows)
        now = time.monotonic()
        with self._lock:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + rows
            if now - self._last_lost_log.get(reason, -LOST_LOG_SECONDS) < LOST_LOG_SECONDS:
                return
            self._last_lost_log[reason] = now
            rows, self._unlogged[reason] = self._unlogged[reason], 0
        logger.error("prediction log: %d predictions not recorded (%s): %s", rows, reason, why)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the store."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.store.close()
