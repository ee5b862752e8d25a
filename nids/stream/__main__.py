"""`python -m nids.stream` runs the worker; `python -m nids.stream produce FILE.csv|FILE.json` publishes records.

The worker serves the model versions the lifecycle records as active (as the service does, following
activations and rollbacks; the configured tags at first start), verified (exit 2 when none can be served: a
worker without models would only pile up lag), opens the self-healing engine, serves metrics on
NIDS_STREAM_METRICS_PORT, and runs until SIGTERM or SIGINT, which settle and commit everything read before it
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nids.core.settings import Settings

if TYPE_CHECKING:
    from nids.core.settings import Settings
    from nids.observability.log import PredictionLog
    from nids.observability.records import PredictionBatch

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
    import prometheus_client

    from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
    from nids.core.settings import get_settings
    from nids.healing.engine import HealingEngine
    from nids.models.artifacts import load_model
    from nids.models.lifecycle import Lifecycle
    from nids.models.registry import REGISTRY
    from nids.models.state import open_lifecycle_store
    from nids.stream.worker import StreamWorker, tune_collector

    service_settings = get_settings()
    # the versions recorded as active (shared with the service's replicas), followed as they switch
    # (fetching the versions its own store lacks from the shared packages, and listed in the fleet status)
    lifecycle = Lifecycle(
        open_lifecycle_store(
            service_settings.state_url, service_settings.model_state_table_prefix, service_settings.state_setting
        ),
        REGISTRY,
        load_model,
        gate_margin=service_settings.model_gate_margin,
        signing_key=service_settings.signing_key,
        max_package_bytes=service_settings.model_max_package_bytes,
        member=(f"stream:{service_settings.replica_id or socket.gethostname()}:{os.getpid()}", 0),
        sync_seconds=service_settings.model_sync_seconds,
    )
    lifecycle.bootstrap(
        {THREAT_MODEL_NAME: service_settings.threat_model_tag, ATTACK_MODEL_NAME: service_settings.attack_model_tag}
    )
    if not REGISTRY.ready:
        logger.error("no models to score with: %s", REGISTRY.reason)
        return 2
    lifecycle.start(service_settings.model_sync_seconds)
    engine = HealingEngine.from_settings(service_settings)
    log = open_prediction_log(service_settings)
    tune_collector()
    try:
        if settings.stream_metrics_port:
            prometheus_client.start_http_server(settings.stream_metrics_port)
        worker = StreamWorker(settings, REGISTRY, engine, sink=log)
        loop = asyncio.get_running_loop()
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
        engine.close()
        if log is not None:
            log.close()  # writes what is queued
    return 0


class _Unlogged:
    """Stands for a prediction log that could not be opened: counts what it is handed as lost."""

    def record(self, batch: PredictionBatch) -> None:
        from nids.stream.metrics import stream_metrics

        stream_metrics().prediction_log_lost.labels("store_error").inc(len(batch))

    def close(self) -> None:
        return None


def open_prediction_log(settings: Settings) -> PredictionLog | _Unlogged | None:
    """The prediction log the service's replicas share (NIDS_PREDICTION_LOG_*), or None when it is disabled.

    Like the service, the worker scores on when the log's store cannot be opened or written: what is not logged
    is counted (nids_stream_prediction_log_lost_total) and logged, never silently dropped.
    """
    from nids.core.database import open_database
    from nids.observability.log import PredictionLog
    from nids.observability.store import PredictionStore
    from nids.stream.metrics import stream_metrics

    if not settings.prediction_log_enabled:
        return None
    lost = stream_metrics().prediction_log_lost
    try:
        database = open_database(settings.prediction_log_database_url)
        store = PredictionStore(database, settings.prediction_log_table_prefix)
    except Exception:
        logger.exception("the prediction log cannot be opened: predictions are scored, and counted as lost")
        return _Unlogged()
    return PredictionLog(
        store,
        queue_rows=settings.prediction_log_queue_rows,
        batch_rows=settings.prediction_log_batch_rows,
        flush_seconds=settings.prediction_log_flush_seconds,
        max_rows=settings.prediction_log_max_rows,
        max_age_seconds=settings.prediction_log_max_age_days * 86_400,
        on_lost=lambda reason, rows: lost.labels(reason).inc(rows),
    )


if __name__ == "__main__":
    sys.exit(main())
