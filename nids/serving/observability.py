"""The service's observability parts, built from the settings: prediction log, live-stream hub, drift monitor.

The APIs hand each call's predictions to `Observability.record` (a queue append); the log's writer process,
the hub's poller and the drift-gauge thread do the rest. Prometheus metrics are created here on first use
(in the worker: see nids.serving.metrics for why the client import is deferred).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, get_args

from nids.core.database import cause_of, open_database, redacted
from nids.core.errors import Unavailable
from nids.observability.drift import DriftMonitor
from nids.observability.feedback import FeedbackStore
from nids.observability.log import LossTally, LostReason
from nids.observability.process import PredictionLogProcess
from nids.observability.schemas import LogHealth
from nids.observability.store import LogUnavailable, PredictionStore, logged_prediction
from nids.observability.stream import Hub

if TYPE_CHECKING:
    from nids.core.model import ActiveModels
    from nids.core.settings import Settings
    from nids.models.registry import ModelRegistry
    from nids.observability.records import PredictionBatch
    from nids.observability.schemas import DriftReport, LoggedPrediction

logger = logging.getLogger("nids.observability")
OPEN_RETRY_SECONDS = 2.0


class ObservabilityMetrics:
    def __init__(self) -> None:
        import prometheus_client as prom  # deferred on purpose: see nids.serving.metrics

        self.written = prom.Counter("nids_prediction_log_written", "Predictions written to the prediction log")
        self.lost = prom.Counter(
            "nids_prediction_log_lost", "Predictions that could not be logged, by reason", ["reason"]
        )
        for reason in get_args(LostReason):  # exported at 0 before anything is lost (dashboards, alerts)
            self.lost.labels(reason)
        self.clients = prom.Gauge(
            "nids_realtime_clients", "Connected /ws/realtime clients", multiprocess_mode="livesum"
        )
        self.dropped = prom.Counter(
            "nids_realtime_events_dropped", "Live events not delivered because a client's queue was full"
        )
        self.cut_off = prom.Counter(
            "nids_realtime_clients_cut_off", "/ws/realtime clients disconnected for being too slow"
        )
        self.refused = prom.Counter(
            "nids_realtime_clients_refused", "/ws/realtime connections refused: the worker's client cap was reached"
        )
        self.psi = prom.Gauge(
            "nids_drift_psi",
            "PSI of recent traffic against training, per feature",
            ["model", "feature"],
            multiprocess_mode="livemax",
        )
        self.psi_overall = prom.Gauge(
            "nids_drift_psi_overall", "Mean PSI over the features, per model", ["model"], multiprocess_mode="livemax"
        )

    def lost_rows(self, reason: LostReason, rows: int) -> None:
        self.lost.labels(reason).inc(rows)

    def publish_drift(self, report: DriftReport) -> None:
        for model in report.models:
            if model.overall_psi is not None:
                self.psi_overall.labels(model.role).set(model.overall_psi)
            for feature in model.features:
                self.psi.labels(model.role, feature.feature).set(feature.psi)


@cache
def observability_metrics() -> ObservabilityMetrics:
    return ObservabilityMetrics()


class Observability:
    """Everything the observability routes and the APIs need; `reason` says why it is off, when it is."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = observability_metrics()
        self.log: PredictionLogProcess | None = None
        self.reader: PredictionStore | None = None
        self.feedback: FeedbackStore | None = None  # analysts' verdicts, in the log's database
        self.hub: Hub | None = None
        self.drift: DriftMonitor | None = None
        self.reason = "the prediction log is disabled (NIDS_PREDICTION_LOG_ENABLED=false)"
        self.opened_at = time.time()
        self._closing = threading.Event()
        self._drift_lock = threading.Lock()
        self._drift_cache: tuple[float, ActiveModels, DriftReport] | None = None
        self.lost = LossTally()
        self._outage: tuple[float | None, str, int] = (None, "", 0)  # the writer's: failing since, error, queued
        if settings.prediction_log_enabled:
            self._open(settings)

    def _open(self, settings: Settings) -> None:
        url = settings.prediction_log_database_url
        prefix = settings.prediction_log_table_prefix
        try:
            # opens and migrates; reads never wait on writes; the writer process checkpoints
            reader = PredictionStore(open_database(url, checkpoints=False), prefix)
            feedback = FeedbackStore(reader.db, prefix)
        except Exception as error:  # the service still predicts; what it cannot log is counted; retried
            setting = "NIDS_PREDICTION_LOG_URL" if settings.prediction_log_url else "NIDS_DATA_DIR"
            # the cause's class for callers; the driver's own text in the log, once per distinct cause
            reason = f"the prediction log cannot be opened at {redacted(url)} (set by {setting}): {cause_of(error)}"
            if reason != self.reason:
                logger.error(
                    "%s (%s: %s); retrying every %g s", reason, type(error).__name__, error, OPEN_RETRY_SECONDS
                )
            self.reason = reason
            if not self._closing.is_set():
                retry = threading.Timer(OPEN_RETRY_SECONDS, self._open, args=(settings,))
                retry.daemon = True
                retry.start()
            return
        logger.info("prediction log open at %s", redacted(url))
        # written by a process of its own, at a lower priority than inference (nids.observability.process)
        self.log = PredictionLogProcess(
            str(url),
            prefix,
            priority=settings.prediction_log_priority,
            queue_rows=settings.prediction_log_queue_rows,
            batch_rows=settings.prediction_log_batch_rows,
            flush_seconds=settings.prediction_log_flush_seconds,
            max_rows=settings.prediction_log_max_rows,
            max_age_seconds=settings.prediction_log_max_age_days * 86_400,
            on_written=self.metrics.written.inc,
            on_lost=self._lost,
            on_outage=self._on_outage,
        )
        self.reader, self.feedback = reader, feedback
        self.hub = Hub(
            reader,
            poll_seconds=settings.realtime_poll_seconds,
            client_queue=settings.realtime_client_queue,
            on_dropped=self.metrics.dropped.inc,
        )
        self.drift = DriftMonitor(
            reader,
            window=settings.drift_window,
            min_rows=settings.drift_min_rows,
            watch=settings.drift_watch_psi,
            alert=settings.drift_alert_psi,
        )
        threading.Thread(target=self._publish_drift, name="drift-gauges", daemon=True).start()

    def record(self, batch: PredictionBatch) -> None:
        if self.log is not None:
            self.log.record(batch)
        elif self.settings.prediction_log_enabled and not batch.warm_up:  # warm-up rows are never stored
            self._lost("store_error", len(batch))

    def _lost(self, reason: LostReason, rows: int) -> None:
        self.metrics.lost_rows(reason, rows)
        self.lost.add(reason, rows)

    def _on_outage(self, since: float | None, error: str, queued: int) -> None:
        self._outage = (since, error, queued)

    def health(self) -> LogHealth:
        """What this worker's log dropped (since when) and whether its store takes writes now."""
        since, error, queued = self._outage
        if self.log is None and self.settings.prediction_log_enabled:
            since, error = since or self.opened_at, self.reason
        lost = self.lost
        details = [
            lost.describe(),
            f"prediction log store unavailable since {_iso(since)}, {queued} rows buffered: {error}" if since else "",
        ]
        return LogHealth(
            complete=lost.first_at is None and since is None,
            lost_rows=dict(lost.rows),
            lost_since=_datetime(lost.first_at),
            last_lost_at=_datetime(lost.last_at),
            store_unavailable_since=_datetime(since),
            store_error=error or None,
            buffered_rows=queued,
            detail="; ".join(filter(None, details)),
        )

    def degradation(self) -> str:
        """For /readyz: '' while the log records everything."""
        return self.health().detail if self.settings.prediction_log_enabled else ""

    def record_now(self, batch: PredictionBatch) -> list[LoggedPrediction] | None:
        """Write the batch on the caller's thread and answer its logged predictions (the CSV API returns their ids).

        None when the log is off or cannot be written now: the batch then goes the usual way (queued, or counted
        as lost), so an answer is never refused for the log's sake.
        """
        if self.reader is None:
            self.record(batch)
            return None
        rows = batch.rows()
        try:
            ids = self.reader.insert_returning(rows)
        except LogUnavailable as error:
            logger.warning("CSV predictions queued for the log instead of written at once: %s", error)
            self.record(batch)
            return None
        self.metrics.written.inc(len(ids))
        return [logged_prediction(i, row) for i, row in zip(ids, rows, strict=True)]

    def require(self, part: Any) -> Any:
        """`part` (the reader store, hub or drift monitor), or 503 naming why observability is off."""
        if part is None:
            raise Unavailable(self.reason)
        return part

    def drift_report(self) -> DriftReport:
        """The drift of the served models, computed at most once per NIDS_DRIFT_REFRESH_SECONDS (it parses the
        whole window: ~0.1 s of CPU per 5,000 rows, not to be paid by every dashboard poll). Each report computed
        is on /metrics at once (nids_drift_psi*), whether GET /api/v1/drift or the gauges' own round asked."""
        monitor = self.require(self.drift)
        models = self.registry.active()
        with self._drift_lock:
            cached = self._drift_cache
            fresh = cached is not None and time.monotonic() - cached[0] < self.settings.drift_refresh_seconds
            if not (fresh and cached[1] is models):
                self._drift_cache = (time.monotonic(), models, monitor.report(models))
                self.metrics.publish_drift(self._drift_cache[2])
            return self._drift_cache[2]

    def _publish_drift(self) -> None:
        while not self._closing.wait(self.settings.drift_refresh_seconds):
            if self.registry.current is None:
                continue
            try:
                self.drift_report()  # published when computed
            except Exception as error:  # the next round tries again
                logger.warning("drift gauges not updated: %s: %s", type(error).__name__, error)

    def close(self) -> None:
        self._closing.set()
        for part in (self.log, self.reader):
            if part is not None:
                part.close()


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
