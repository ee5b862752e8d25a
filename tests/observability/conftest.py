"""Real predictions of the session's models on real KDDTest+ rows, shared by the prediction-log tests."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from nids.core import pipeline
from nids.core.features import THREAT_FEATURES
from nids.core.model import ActiveModels
from nids.core.schemas import ThreatFlow
from nids.models.artifacts import load_model
from nids.observability.records import PredictionBatch
from training.data import NSL_KDD_TEST


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
