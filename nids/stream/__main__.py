"""`python -m nids.stream` runs the worker; `python -m nids.stream produce FILE.csv|FILE.json` publishes records.

The worker serves the model versions the lifecycle records as active (as the service does, following
activations and rollbacks; the configured tags at first start), verified, opens the self-healing engine, serves
metrics, `/readyz` and `/livez` on NIDS_STREAM_METRICS_PORT, and runs until SIGTERM or SIGINT, which settle and
commit everything read before it exits 0. Until it has verified models and the audit log (a lifecycle or audit
database unreachable or unreadable, a version that fails its checks) it consumes nothing, answers `/readyz` 503
with the reason, logs each new reason and retries (NIDS_STREAM_RETRY_SECONDS doubling up to
NIDS_STREAM_MAX_RETRY_SECONDS): never a crash loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nids.core.settings import Settings

if TYPE_CHECKING:
    from nids.core.settings import Settings
    from nids.healing.engine import HealingEngine
    from nids.observability.process import PredictionLogProcess

logger = logging.getLogger("nids.stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nids.stream", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the worker (the default)")
    produce = commands.add_parser("produce", help="publish the flow records of a CSV or JSON file")
    produce.add_argument("file", type=Path, help=".csv, .csv.gz (e.g. data/nsl-kdd/KDDTest+.csv.gz) or .json")
    produce.add_argument("--limit", type=int, default=None, help="publish at most this many records")
    produce.add_argument("--topic", default=None, help="default: NIDS_KAFKA_TOPIC")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if args.command == "produce":
        return asyncio.run(_produce(settings, args.file, args.limit, args.topic))
    return asyncio.run(_run(settings))


async def _produce(settings: Settings, path: Path, limit: int | None, topic: str | None) -> int:
    from nids.stream.produce import encode, publish, read_records

    acknowledged = await publish(settings, encode(read_records(path, limit)), topic)
    partitions = sorted({partition for partition, _ in acknowledged})
    print(f"published {len(acknowledged)} records to {topic or settings.kafka_topic} (partitions {partitions})")
    return 0


async def _run(settings: Settings) -> int:
    from functools import partial

    from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
    from nids.core.settings import get_settings
    from nids.models.artifacts import load_model
    from nids.models.lifecycle import Lifecycle
    from nids.models.registry import REGISTRY
    from nids.models.state import open_lifecycle_store
    from nids.stream import health
    from nids.stream.worker import StreamWorker, tune_collector

    service_settings = get_settings()
    # the versions recorded as active (shared with the service's replicas), followed as they switch
    # (fetching the versions its own store lacks from the shared packages, and listed in the fleet status);
    # while the state cannot be opened or read, the poll thread retries every NIDS_MODEL_SYNC_SECONDS
    lifecycle = Lifecycle(
        partial(
            open_lifecycle_store,
            service_settings.state_url,
            service_settings.model_state_table_prefix,
            service_settings.state_setting,
        ),
        REGISTRY,
        load_model,
        gate_margin=service_settings.model_gate_margin,
        signing_key=service_settings.signing_key,
        max_package_bytes=service_settings.model_max_package_bytes,
        member=(f"stream:{service_settings.replica_id or socket.gethostname()}:{os.getpid()}", 0),
        sync_seconds=service_settings.model_sync_seconds,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    audit = _Audit(service_settings)
    port = (
        health.serve(
            settings.stream_metrics_port, [REGISTRY.unready_reason, lambda: audit.reason], [lifecycle.degradation]
        )
        if settings.stream_metrics_port
        else None
    )
    lifecycle.bootstrap(
        {THREAT_MODEL_NAME: service_settings.threat_model_tag, ATTACK_MODEL_NAME: service_settings.attack_model_tag}
    )
    lifecycle.start(service_settings.model_sync_seconds)
    log = None
    try:
        # unready (on /readyz and in the log) until the models are served and the audit log opens: never a crash loop
        checks = [lambda: "" if REGISTRY.ready else REGISTRY.unready_reason(), audit.open]
        if not await _until_ready(checks, stopping, settings.stream_retry_seconds, settings.stream_max_retry_seconds):
            return 0  # stopped before it could start
        assert audit.engine is not None  # opened by the checks
        log = open_prediction_log(service_settings)
        tune_collector()
        worker = StreamWorker(settings, REGISTRY, audit.engine, sink=log)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        logger.info(
            "scoring %s from %s: results to %s, invalid records to %s",
            settings.kafka_topic,
            settings.kafka_bootstrap_servers,
            settings.kafka_results_topic,
            settings.kafka_dlq_topic,
        )
        await worker.run()
    finally:
        lifecycle.stop()
        if audit.engine is not None:
            audit.engine.close()
        if log is not None:
            log.close()  # writes what is queued
        if port is not None:
            port.shutdown()
    return 0


class _Audit:
    """The self-healing engine, opened by `open` once its audit log can be (why not, meanwhile, in `reason`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: HealingEngine | None = None
        self.reason = "the self-healing audit log is not open yet"

    def open(self) -> str:
        from nids.core.database import cause_of, open_errors, redacted
        from nids.core.errors import Unavailable
        from nids.healing.engine import HealingEngine

        if self.engine is None:
            try:
                self.engine = HealingEngine.from_settings(self.settings)
            except (*open_errors(), Unavailable) as error:
                cause = error if isinstance(error, Unavailable) else cause_of(error)
                where = redacted(self.settings.audit_url)
                self.reason = f"the self-healing audit log cannot be opened at {where}: {cause}"
            else:
                self.reason = ""
        return self.reason


async def _until_ready(checks: list[Callable[[], str]], stopping: asyncio.Event, first: float, most: float) -> bool:
    """Wait until every check says '' (each new reason logged), retrying after `first` seconds, doubling up to
    `most`; False when stopped (SIGTERM, SIGINT) meanwhile."""
    delay, said = first, ""
    while reason := "; ".join(r for r in (check() for check in checks) if r):
        if reason != said:
            logger.error("not scoring until this is fixed (retrying, at most every %g s): %s", most, reason)
            said = reason
        try:
            await asyncio.wait_for(stopping.wait(), delay)
            return False
        except TimeoutError:
            delay = min(delay * 2, most)
    if said:
        logger.info("ready: scoring")
    return True


def open_prediction_log(settings: Settings) -> PredictionLogProcess | None:
    """The prediction log the service's replicas share (NIDS_PREDICTION_LOG_*), or None when it is disabled.

    As in the service, a process of its own writes it (nids.observability.process, at NIDS_PREDICTION_LOG_PRIORITY):
    turning a batch into rows and inserting them on the worker's thread took as much CPU as scoring, under the same
    GIL, and halved the stream (BENCHMARKS.md). Like the service, the worker scores on when the log's store cannot
    be opened or written: what is not logged is counted (nids_stream_prediction_log_lost_total) and logged, never
    silently dropped.
    """
    from nids.observability.process import PredictionLogProcess
    from nids.stream.metrics import stream_metrics

    if not settings.prediction_log_enabled:
        return None
    lost = stream_metrics().prediction_log_lost
    return PredictionLogProcess(
        str(settings.prediction_log_database_url),
        settings.prediction_log_table_prefix,
        priority=settings.prediction_log_priority,
        queue_rows=settings.prediction_log_queue_rows,
        batch_rows=settings.prediction_log_batch_rows,
        flush_seconds=settings.prediction_log_flush_seconds,
        max_rows=settings.prediction_log_max_rows,
        max_age_seconds=settings.prediction_log_max_age_days * 86_400,
        on_lost=lambda reason, rows: lost.labels(reason).inc(rows),
    )


if __name__ == "__main__":
    sys.exit(main())
