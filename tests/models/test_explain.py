"""Explanations of both served models: exact additivity against the stored estimator, stability, the API shapes."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from loadtest.payloads import load_pool
from nids.core import pipeline
from nids.core.columns import validate_flows
from nids.core.model import ActiveModels
from nids.core.schemas import AnalyzeFlow
from nids.models.artifacts import ESTIMATOR_FILE, get_store_model, load_model

FLOWS = 200


@pytest.fixture(scope="module")
def models(model_store) -> ActiveModels:
    return ActiveModels(threat=load_model(model_store.threat_tag), attack=load_model(model_store.attack_tag))


def _estimator(tag: str):
    return joblib.load(get_store_model(tag).path_of(ESTIMATOR_FILE))


@pytest.mark.parametrize("role", ["threat", "attack"])
def test_contributions_plus_base_value_equal_the_estimators_probability(models: ActiveModels, role: str) -> None:
    model = models.by_role()[role]
    flows = validate_flows(role, load_pool(role)[:FLOWS])
    proba = _estimator(model.tag).predict_proba(flows.matrix(model))
    classes = np.argmax(proba, axis=1)
    everything = pipeline.explain(model, flows, classes, top=len(model.feature_names))
    listed = pipeline.explain(model, flows, classes, top=3)
    for row, (full, short) in enumerate(zip(everything, listed, strict=True)):
        total = sum(c.contribution for c in full.top_features)
        assert full.other_features == 0.0
        assert abs(full.base_value + total - proba[row, classes[row]]) <= 1e-6
        assert abs(full.score - proba[row, classes[row]]) <= 1e-6
        # the top 3 plus the rest tell the same sum
        shown = sum(c.contribution for c in short.top_features)
        assert abs(short.base_value + shown + short.other_features - short.score) <= 1e-9
        magnitudes = [abs(c.contribution) for c in short.top_features]
        assert magnitudes == sorted(magnitudes, reverse=True) and len(magnitudes) == 3
        assert full.explained_class == model.class_names[classes[row]]
    # the served (ONNX) score explains within ONNX parity
    served = model.predict_proba(flows.matrix(model))
    assert np.abs(served[np.arange(FLOWS), classes] - [e.score for e in everything]).max() <= 1e-5


@pytest.mark.parametrize("role", ["threat", "attack"])
def test_the_same_flow_gets_the_same_explanation_alone_or_in_any_batch(models: ActiveModels, role: str) -> None:
    model = models.by_role()[role]
    rows = load_pool(role)[:50]
    batch = validate_flows(role, rows)
    classes = np.argmax(model.predict_proba(batch.matrix(model)), axis=1)
    together = pipeline.explain(model, batch, classes, top=5)
    reversed_batch = validate_flows(role, rows[::-1])
    reversed_explained = pipeline.explain(model, reversed_batch, classes[::-1], top=5)[::-1]
    alone = [
        pipeline.explain(model, validate_flows(role, [row]), classes[i : i + 1], 5)[0] for i, row in enumerate(rows[:5])
    ]
    assert together == reversed_explained
    assert together[:5] == alone
    assert pipeline.explain(model, batch, classes, top=5) == together


def test_explained_apis_and_analyze_explain_the_verdict(models: ActiveModels) -> None:
    threat_rows, attack_rows = load_pool("threat")[:20], load_pool("attack")[:20]
    scores, explained = pipeline.explain_threats(models, validate_flows("threat", threat_rows), 4)
    for score, prediction in zip(scores, explained, strict=True):
        assert prediction.prediction_score == score.prediction_score
        assert prediction.explanation.explained_class == ("attack" if score.is_attack else "normal")
        assert len(prediction.explanation.top_features) == 4
    attacks, explained_attacks = pipeline.explain_attacks(models, validate_flows("attack", attack_rows), 2)
    assert [p.explanation.explained_class for p in explained_attacks] == [a.attack_type_name for a in attacks]

    items = [AnalyzeFlow.model_validate(row) for row in [*threat_rows[:3], *attack_rows[:3]]]
    plain = pipeline.analyze(models, lambda events: [None] * len(events), items)  # type: ignore[arg-type, return-value]
    assert all(result.explanation is None for result in plain.results)
    explained_analysis = pipeline.analyze(models, lambda events: [None] * len(events), items, explain_top=3)  # type: ignore[arg-type, return-value]
    for result in explained_analysis.results:
        assert result.explanation is not None and len(result.explanation.top_features) == 3
        expected = result.attack_prediction.attack_type_name if result.attack_prediction else None
        if expected is not None:
            assert result.explanation.explained_class == expected
