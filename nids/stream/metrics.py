"""Prometheus metrics of the stream worker (served by prometheus_client's own HTTP server)."""

from __future__ import annotations

from functools import cache

import prometheus_client as prom


class StreamMetrics:
    def __init__(self) -> None:
        self.records_in = prom.Counter("nids_stream_records_in", "Records read from the input topic", ["topic"])
        self.records_out = prom.Counter(
            "nids_stream_records_out", "Prediction events acknowledged by the broker", ["topic"]
        )
        self.dead_lettered = prom.Counter(
            "nids_stream_records_dead_lettered", "Invalid records acknowledged on the dead-letter topic", ["topic"]
        )
        self.lag = prom.Gauge(
            "nids_stream_consumer_lag",
            "Records of a partition not yet committed: high watermark - committed offset",
            ["topic", "partition"],
        )
        self.batch_seconds = prom.Histogram(
            "nids_stream_batch_seconds",
            "From a batch's arrival to its results' acknowledgement (scoring, producing, retries)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.batch_records = prom.Histogram(
            "nids_stream_batch_records", "Records per batch", buckets=(1, 10, 100, 250, 500, 1000, 2500, 5000)
        )
        self.retries = prom.Counter(
            "nids_stream_retries",
            "Retries after a failure, by what failed",
            ["cause"],  # produce, audit
        )
        self.assigned = prom.Gauge("nids_stream_assigned_partitions", "Input partitions this worker owns")
        self.prediction_log_lost = prom.Counter(
            "nids_stream_prediction_log_lost", "Predictions the prediction log could not take or write", ["reason"]
        )
        self.paused = prom.Gauge("nids_stream_paused", "1 while consumption is paused for back-pressure")


@cache
def stream_metrics() -> StreamMetrics:
    """The process's metrics (created once: prometheus_client refuses duplicate registrations)."""
    return StreamMetrics()
