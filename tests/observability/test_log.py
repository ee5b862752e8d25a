"""The prediction log on SQLite and PostgreSQL: real predictions of the session's models on real rows, the
writer thread, queries, retention, migration, a store that is down, the stream fan-out and the drift maths."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nids.core import drift, pipeline
from nids.core.database import PostgresDatabase, SqliteDatabase
from nids.core.features import THREAT_FEATURES
from nids.core.model import ActiveModels
from nids.models.artifacts import load_model
from nids.observability.drift import DriftMonitor
from nids.observability.log import PredictionLog
from nids.observability.schemas import PredictionQuery, TimelineQuery, TimeWindow
from nids.observability.store import SCHEMA_VERSION, PredictionStore
from nids.observability.stream import EventFilter, Hub
from training.data import NSL_KDD_TEST, NSL_KDD_TRAIN

from ..healing.conftest import PG_URL, postgres_reachable
from .conftest import batch


def test_written_off_the_request_path_and_queried(store: PredictionStore, models: ActiveModels, flows: Any) -> None:
    """`record` only queues: nothing is written until the writer thread wakes (here: once a batch of rows waits,
    the flush period being an hour), and then the writer writes it all."""
    log = PredictionLog(store, batch_rows=len(flows), flush_seconds=3600)
    log.record(batch(models, flows[:100]))
    assert store.last_id() == 0  # returned without writing: the rows wait for the writer
    log.record(batch(models, flows[100:]))  # a batch of rows now waits: the writer wakes
    deadline = time.monotonic() + 30
    while store.last_id() < len(flows) and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = store.stats(TimeWindow(), time.time())
    assert stats.total_predictions == len(flows)
    expected = int(sum(p.is_attack for p in pipeline.detect_threats(models, flows)))
    assert (stats.total_attacks, stats.total_normal) == (expected, len(flows) - expected)
    assert len(stats.recent_predictions) == 100
    rows = store.list(PredictionQuery(src_ip="10.0.0.1", verdict="attack", limit=1000), time.time())
    assert rows and all(r.src_ip == "10.0.0.1" and r.threat_prediction.is_attack for r in rows)
    assert rows[0].features == {name: flows[rows[0].traffic_data_id - 1][name] for name in THREAT_FEATURES}
    assert [r.traffic_data_id for r in store.tail(190, 100)] == list(range(191, 201))
    log.close()


def test_schema_is_versioned_and_migration_is_idempotent(store: PredictionStore) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    again = PredictionStore(store.db, store.predictions.removesuffix("predictions"))  # a second worker starting
    assert again.schema_version() == SCHEMA_VERSION


def test_retention_by_rows_and_by_age(store: PredictionStore, models: ActiveModels, flows: Any) -> None:
    old = batch(models, flows[:50], created_at=time.time() - 10 * 86_400)
    store.insert(old.rows())
    store.insert(batch(models, flows).rows())
    assert store.enforce_retention(max_rows=1_000, oldest=time.time() - 86_400) == 50
    assert store.stats(TimeWindow(), time.time()).total_predictions == 200
    assert store.enforce_retention(max_rows=120, oldest=0) == 80
    remaining = store.list(PredictionQuery(limit=1000, include_features=False), time.time())
    assert [r.traffic_data_id for r in remaining] == list(range(250, 130, -1))


def test_attack_timeline_counts_each_bucket_of_the_window(
    store: PredictionStore, models: ActiveModels, flows: Any
) -> None:
    """Batches logged at known times land in their bucket; rows before the window or after `now` do not count."""
    now = 1_800_000_000.0
    placed = {0: flows[:20], 3: flows[20:70], 11: flows[70:100]}  # bucket index -> its flows
    for index, chunk in placed.items():
        store.insert(batch(models, chunk, created_at=now - 60 + 5 * index + 2.5).rows())
    store.insert(batch(models, flows[100:110], created_at=now - 61).rows())  # before the window
    store.insert(batch(models, flows[110:120], created_at=now + 1).rows())  # logged after the answer's time
    timeline = store.timeline(TimelineQuery(), now)
    attacks = {i: sum(p.is_attack for p in pipeline.detect_threats(models, chunk)) for i, chunk in placed.items()}
    expected = [(len(placed.get(i, [])), attacks.get(i, 0)) for i in range(12)]
    assert [(b.predictions, b.attacks) for b in timeline.buckets] == expected
    assert (timeline.predictions, timeline.attacks) == (100, sum(attacks.values()))
    assert timeline.attack_rate == round(100 * sum(attacks.values()) / 100, 4)
    assert [b.start.timestamp() for b in timeline.buckets] == [now - 60 + 5 * i for i in range(12)]
    quiet = store.timeline(TimelineQuery(window_seconds=10, bucket_seconds=1), now + 3600)
    assert (quiet.predictions, quiet.attack_rate, len(quiet.buckets)) == (0, None, 10)


def test_a_store_that_is_down_costs_no_latency_and_is_counted(tmp_path: Path, models: ActiveModels, flows: Any) -> None:
    lost: dict[str, int] = {}
    store = PredictionStore(SqliteDatabase(tmp_path / "log.sqlite3"))
    store.db.close()  # every write now fails
    log = PredictionLog(
        store,
        queue_rows=300,
        flush_seconds=0.05,
        on_lost=lambda reason, n: lost.__setitem__(reason, lost.get(reason, 0) + n),
    )
    one = batch(models, flows)
    log.record(one)
    log.record(one)  # 400 rows > 300: the second does not fit
    assert lost == {"queue_full": 200}
    deadline = time.monotonic() + 10
    while "store_error" not in lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost == {"queue_full": 200, "store_error": 200}
    log.close()


def test_a_workers_warm_up_is_never_counted_as_lost(tmp_path: Path, models: ActiveModels, flows: Any) -> None:
    """Warm-up predictions (nids.serving.warmup) are never stored: a full queue or a closing log with the store
    down drops them without a count, so lost rows and the degraded reason speak of users' predictions only."""
    lost: dict[str, int] = {}
    store = PredictionStore(SqliteDatabase(tmp_path / "log.sqlite3"))
    store.db.close()
    log = PredictionLog(
        store,
        queue_rows=300,
        flush_seconds=60,
        on_lost=lambda reason, n: lost.__setitem__(reason, lost.get(reason, 0) + n),
    )
    warm = dataclasses.replace(batch(models, flows), warm_up=True)
    log.record(warm)
    log.record(warm)  # past the queue: dropped, not counted
    log.close()  # the one queued is never written: not counted either
    assert lost == {}


@pytest.fixture
def own_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, so that an outage of it (connections refused, sessions ended)
    touches nothing else on the server."""
    if reason := postgres_reachable():
        pytest.skip(reason)
    import psycopg

    name = f"nids_outage_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _allow_connections(database: str, allowed: bool) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {str(allowed).lower()}")
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


def test_a_store_outage_is_buffered_and_written_once_it_is_back(
    own_database: str, models: ActiveModels, flows: Any
) -> None:
    """12,000 rows - a minute of 200 single-flow requests/s - recorded while PostgreSQL refuses every connection
    are all written once it accepts them again; the outage is reported while it lasts, nothing is lost."""
    lost: dict[str, int] = {}
    outages: list[tuple[float | None, str, int]] = []
    url = PG_URL.rsplit("/", 1)[0] + f"/{own_database}"
    store = PredictionStore(PostgresDatabase(url, connect_timeout=2))
    log = PredictionLog(
        store,
        flush_seconds=0.05,
        on_lost=lambda reason, n: lost.__setitem__(reason, lost.get(reason, 0) + n),
        on_outage=lambda since, error, queued: outages.append((since, error, queued)),
    )
    try:
        _allow_connections(own_database, False)
        one = batch(models, flows)
        for _ in range(60):
            log.record(one)
        deadline = time.monotonic() + 30
        while not outages and time.monotonic() < deadline:
            time.sleep(0.05)
        since, error, _ = outages[0]
        assert since is not None and error  # e.g. AdminShutdown, then OperationalError: connections refused
        assert log.outage.since is not None
        _allow_connections(own_database, True)
        reader = PredictionStore(PostgresDatabase(url))
        deadline = time.monotonic() + 60
        while reader.stats(TimeWindow(), time.time()).total_predictions < 12_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reader.stats(TimeWindow(), time.time()).total_predictions == 12_000
        reader.close()
        assert lost == {}
        assert outages[-1][0] is None and log.outage.since is None  # the end of the outage was reported too
    finally:
        _allow_connections(own_database, True)
        log.close()


def test_stream_drops_for_a_full_client_only(tmp_path: Path, models: ActiveModels, flows: Any) -> None:
    store = PredictionStore(SqliteDatabase(tmp_path / "log.sqlite3"))
    store.insert(batch(models, flows[:20]).rows())
    dropped: list[int] = []

    async def scenario() -> tuple[int, int, bool]:
        hub = Hub(store, poll_seconds=0.01, client_queue=5, on_dropped=dropped.append)
        slow, reading = hub.subscribe(EventFilter()), hub.subscribe(EventFilter(attacks_only=True))
        got = 0
        for prediction in store.tail(0, 100):
            hub.publish(prediction)
            while not reading.queue.empty():
                event = reading.queue.get_nowait()
                assert event["type"] == "prediction" and event["threat_prediction"]["is_attack"]
                got += 1
        hub.unsubscribe(slow)
        hub.unsubscribe(reading)
        return got, slow.dropped, slow.stalled.is_set()

    got, slow_dropped, stalled = asyncio.run(scenario())
    attacks = sum(p.threat_prediction.is_attack for p in store.tail(0, 100))
    assert got == attacks and slow_dropped == 15 and stalled
    assert sum(dropped) == 15
    store.close()


def test_psi_is_small_in_distribution_and_large_for_novel_attacks() -> None:
    columns = list(THREAT_FEATURES)
    train = pd.read_csv(NSL_KDD_TRAIN, usecols=[*columns, "label"])
    numeric = [c for c in columns if c not in ("service", "flag")]
    reference = drift.reference_distribution(train[numeric].iloc[:20_000].to_numpy(), numeric)
    held_out = train[numeric].iloc[40_000:42_000].to_numpy()
    test = pd.read_csv(NSL_KDD_TEST, usecols=[*columns, "label"])
    novel = test[~test["label"].isin(set(train["label"]))][numeric].iloc[:2_000].to_numpy()
    calm = drift.feature_psi(reference, held_out, numeric)
    shifted = drift.feature_psi(reference, novel, numeric)
    assert max(calm.values()) < 0.1
    assert np.mean(list(shifted.values())) > 0.25
    assert drift.status(0.05, 0.1, 0.25) == "ok" and drift.status(0.2, 0.1, 0.25) == "watch"
    assert drift.status(0.3, 0.1, 0.25) == "drift"
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_drift_of_a_model_without_reference_says_so(clone_model: Any, model_store: Any, tmp_path: Path) -> None:
    tag = clone_model(model_store.threat_tag, "threat_without_reference", drop_metadata=(drift.METADATA_KEY,))
    old = load_model(tag)
    store = PredictionStore(SqliteDatabase(tmp_path / "log.sqlite3"))
    report = DriftMonitor(store, window=100, min_rows=10, watch=0.1, alert=0.25).model_drift("threat", old)
    assert (report.status, report.features, report.overall_psi) == ("no_reference", [], None)
    assert "retrain" in (report.reason or "")
    store.close()


def test_drift_needs_enough_rows(models: ActiveModels, flows: Any, tmp_path: Path) -> None:
    store = PredictionStore(SqliteDatabase(tmp_path / "log.sqlite3"))
    store.insert(batch(models, flows[:50]).rows())
    monitor = DriftMonitor(store, window=100, min_rows=60, watch=0.1, alert=0.25)
    assert monitor.model_drift("threat", models.threat).status == "insufficient_data"
    store.insert(batch(models, flows[50:]).rows())
    judged = monitor.model_drift("threat", models.threat)
    assert judged.window_rows == 100 and judged.status in ("ok", "watch", "drift") and len(judged.features) == 10
    with pytest.raises(ValueError, match="cut-offs"):
        DriftMonitor(store, window=100, min_rows=60, watch=0.3, alert=0.25)
    store.close()


def test_training_records_a_reference_per_feature(models: ActiveModels) -> None:
    for model in (models.threat, models.attack):
        reference = model.metadata[drift.METADATA_KEY]
        assert list(reference["features"]) == list(model.feature_names)
        for bins in reference["features"].values():
            assert len(bins["proportions"]) == len(bins["edges"]) + 1
            assert sum(bins["proportions"]) == pytest.approx(1.0)
            assert bins["edges"] == sorted(bins["edges"])
