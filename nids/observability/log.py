"""The prediction log: a bounded in-memory queue that a background thread writes to the store in batches.

`record` only appends a reference to the batch (under a lock held for microseconds) and never waits for the
store. The writer wakes every `flush_seconds`, or as soon as `batch_rows` rows wait, and writes them in
transactions of at most `batch_rows`. A write that fails for a reason that passes (the database down or
restarting, the connection lost, a full disk: `Database.transient_errors`) is not lost: its rows go back to the
head of the queue and the writer retries every RETRY_SECONDS, so an outage is buffered for as long as the queue
holds (NIDS_PREDICTION_LOG_QUEUE_ROWS, 100,000 rows by default: over 8 minutes at 200 single-flow requests/s).
Rows that do not fit in the queue, or whose write failed otherwise, are counted through `on_lost(reason, rows)`
and in `health` (since when, how many), and logged (at most once per LOST_LOG_SECONDS per reason): never silently
dropped. Retention runs on the same thread every RETENTION_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from nids.core.database import Outage
from nids.observability.records import PredictionBatch, user_rows
from nids.observability.store import PredictionStore

logger = logging.getLogger("nids.observability")
LostReason = Literal["queue_full", "store_error"]
RETENTION_SECONDS = 30.0
LOST_LOG_SECONDS = 10.0
RETRY_SECONDS = 1.0
OutageObserver = Callable[[float | None, str, int], None]  # (failing since or None once written again, error, queued)


class LossTally:
    """Rows not recorded, per reason, since when (thread-safe); what /readyz and the statistics report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: dict[str, int] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, reason: str, rows: int) -> None:
        now = time.time()
        with self._lock:
            self.rows[reason] = self.rows.get(reason, 0) + rows
            self.first_at = self.first_at or now
            self.last_at = now

    def describe(self) -> str:
        """'' when nothing was lost, else how many rows, why and since when."""
        if self.first_at is None:
            return ""
        since = datetime.fromtimestamp(self.first_at, UTC).isoformat(timespec="seconds")
        last = datetime.fromtimestamp(self.last_at or self.first_at, UTC).isoformat(timespec="seconds")
        reasons = ", ".join(f"{reason} {rows}" for reason, rows in sorted(self.rows.items()))
        return f"prediction log dropped {sum(self.rows.values())} rows since {since} (last at {last}; {reasons})"


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

    def put_back(self, batches: list[PredictionBatch]) -> None:
        """Return taken batches to the head of the queue (a failed write; may pass max_rows by one write's rows)."""
        with self._lock:
            self._batches.extendleft(reversed(batches))
            self._rows += sum(map(len, batches))

    @property
    def rows(self) -> int:
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
        on_outage: OutageObserver = lambda since, error, queued: None,
    ) -> None:
        self.store = store
        self.on_outage = on_outage
        self.outage = Outage()
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
        self._closed = threading.Event()
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
            if not batch.warm_up:  # a worker's own warm-up is never stored, so never lost either
                self._lost("queue_full", n, f"{self.queue_rows} rows already wait to be written")
        elif waiting >= self.batch_rows:
            self._wake.set()

    # --- the writer thread -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything queued so far (the writer thread does this on its own; tests and shutdown call it)."""
        while batches := self._queue.take(self.batch_rows):
            rows = [row for batch in batches for row in batch.rows() if not batch.warm_up]
            if not rows:  # a worker's warm-up alone: converted as any batch, never stored
                continue
            try:
                self.store.insert(rows)
            except self.store.db.transient_errors as error:  # the store is down or full: keep them, retry later
                self._queue.put_back(batches)
                first = self.outage.since is None
                self.outage.failed(error)
                if first:
                    logger.error("prediction log store unavailable, buffering (%s rows queued): %s", self._queue.rows,
                                 self.outage.error)  # fmt: skip
                self.on_outage(self.outage.since, self.outage.error, self._queue.rows)
                return
            except Exception as error:  # any other store failure: count and log what is lost, keep serving
                self._lost("store_error", len(rows), f"{type(error).__name__}: {error}")
            else:
                self.on_written(len(rows))
                if self.outage.recovered():
                    logger.info("prediction log store available again; writing the buffered rows")
                    self.on_outage(None, "", self._queue.rows)

    def _run(self) -> None:
        next_retention = time.monotonic()
        while True:
            if self.outage.since is None:
                self._wake.wait(self.flush_seconds)
            else:  # retry at a steady pace, however many rows arrive meanwhile
                self._closed.wait(RETRY_SECONDS)
            self._wake.clear()
            closing = self._closing
            self.flush()
            if time.monotonic() >= next_retention and self.outage.since is None:
                next_retention = time.monotonic() + RETENTION_SECONDS
                self._retain()
            if closing:
                if left := user_rows(self._queue.take()):  # the store is still down: counted, not dropped quietly
                    self._lost("store_error", left, f"closing while the store is unavailable: {self.outage.error}")
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
        self._closed.set()
        self._thread.join(timeout=30)
        self.store.close()
