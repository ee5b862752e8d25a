"""What the prediction log costs per prediction: `python -m benchmarks.prediction_log [--flows N]`.

Real KDDTest+ flows scored one at a time by the local store's models (`threat_detector:latest`,
`attack_classifier:latest`), then each step of logging timed over all of them: on the request path, building
and queueing the batch; off it, building the row, inserting it (SQLite, batches of 500), reading it back for the
live stream and making its event. Prints Markdown (microseconds per prediction).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from nids.core import pipeline
from nids.core.database import SqliteDatabase
from nids.core.features import ATTACK_MODEL_NAME, THREAT_FEATURES, THREAT_MODEL_NAME
from nids.core.model import ActiveModels
from nids.core.schemas import ThreatFlow
from nids.models.artifacts import load_model
from nids.observability.records import PredictionBatch
from nids.observability.store import PredictionStore
from nids.observability.stream import prediction_event
from training.data import NSL_KDD_TEST


def per_item(step: Callable[[], Any], n: int) -> tuple[float, Any]:
    started = time.perf_counter()
    result = step()
    return (time.perf_counter() - started) / n * 1e6, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=2_000)
    n = parser.parse_args().flows
    models = ActiveModels(load_model(f"{THREAT_MODEL_NAME}:latest"), load_model(f"{ATTACK_MODEL_NAME}:latest"))
    flows = [ThreatFlow(**row) for row in pd.read_csv(NSL_KDD_TEST, nrows=n)[list(THREAT_FEATURES)].to_dict("records")]
    predictions = [pipeline.detect_threats(models, [flow]) for flow in flows]
    store = PredictionStore(SqliteDatabase(Path(tempfile.mkdtemp(prefix="nids-bench-")) / "log.sqlite3"))

    def insert(rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), 500):
            store.insert(rows[start : start + 500])

    batch_us, batches = per_item(
        lambda: [PredictionBatch.of_threats(models, [f], p, "api") for f, p in zip(flows, predictions, strict=True)], n
    )
    row_us, rows = per_item(lambda: [row for batch in batches for row in batch.rows()], n)
    insert_us, _ = per_item(lambda: insert(rows), n)
    tail_us, logged = per_item(lambda: store.tail(0, n), n)
    event_us, _ = per_item(lambda: [json.dumps(prediction_event(p)) for p in logged], n)
    store.close()
    print(f"Prediction log cost, {n} single-flow predictions of {models.threat.tag}:\n")
    print("| step | where | us per prediction |\n|---|---|---|")
    for step, where, us in (
        ("build the batch (queueing it: a lock and an append)", "request path", batch_us),
        ("build the row (features as JSON)", "writer thread", row_us),
        ("insert (SQLite, batches of 500)", "writer thread", insert_us),
        ("read back for the live stream", "stream poller", tail_us),
        ("make the `prediction` event", "stream poller", event_us),
    ):
        print(f"| {step} | {where} | {us:.1f} |")


if __name__ == "__main__":
    main()
