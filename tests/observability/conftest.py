"""Real predictions of the session's models on real KDDTest+ rows, shared by the prediction-log tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nids.core import pipeline
from nids.core.database import PostgresDatabase, SqliteDatabase
from nids.core.features import THREAT_FEATURES
from nids.core.model import ActiveModels
from nids.core.schemas import ThreatFlow
from nids.models.artifacts import load_model
from nids.observability.records import PredictionBatch
from nids.observability.store import PredictionStore
from training.data import NSL_KDD_TEST

from ..healing.conftest import PG_URL, postgres_reachable


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PredictionStore]:
    """The prediction log on SQLite and on PostgreSQL (a table prefix of its own, dropped after the test, with the
    analysts' verdicts table of the same prefix)."""
    if request.param == "sqlite":
        store = PredictionStore(SqliteDatabase(tmp_path / "log.sqlite3"))
        yield store
        store.close()
        return
    if reason := postgres_reachable():
        pytest.skip(reason)
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    store = PredictionStore(PostgresDatabase(PG_URL), prefix)
    try:
        yield store
    finally:
        store.db.execute([(f"DROP TABLE IF EXISTS {store.predictions}, {store.schema}, {prefix}feedback", {})])
        store.close()


@pytest.fixture(scope="module")
def models(model_store: Any) -> ActiveModels:
    return ActiveModels(threat=load_model(model_store.threat_tag), attack=load_model(model_store.attack_tag))


@pytest.fixture(scope="module")
def flows() -> list[ThreatFlow]:
    rows = pd.read_csv(NSL_KDD_TEST, nrows=200)[list(THREAT_FEATURES)].to_dict("records")
    return [ThreatFlow(**row, src_ip=f"10.0.0.{i % 4}") for i, row in enumerate(rows)]


def batch(models: ActiveModels, flows: list[ThreatFlow], **kwargs: Any) -> PredictionBatch:
    predictions = pipeline.detect_threats(models, flows)
    return PredictionBatch(
        "api",
        models.threat.tag,
        models.attack.tag,
        flows,
        predictions,
        [None] * len(flows),
        [None] * len(flows),
        **kwargs,
    )
