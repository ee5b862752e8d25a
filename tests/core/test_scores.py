"""The original system's score meaning: `prediction_score >= 0.5` exactly when `is_attack`, `threshold` 0.5, the
model's own probability in `attack_probability` (nids.core.pipeline.verdict_scores)."""

from __future__ import annotations

import numpy as np
import pytest

from nids.core import pipeline
from nids.core.columns import FlowBatch
from nids.core.features import ATTACK_CLASSES, THREAT_FEATURES
from nids.core.pipeline import classifier_verdict_scores, verdict_scores
from nids.core.schemas import ThreatFlow
from nids.models.artifacts import load_model
from nids.models.registry import ModelRegistry
from training.data import NSL_KDD_TEST, load_nsl_kdd, rows_of


@pytest.mark.parametrize("threshold", [0.0, 1e-9, 0.0903, 0.5, 0.77, 1 - 1e-9, 1.0])
def test_the_score_is_at_or_above_one_half_exactly_for_attacks_and_monotone(threshold: float) -> None:
    rng = np.random.default_rng(12)
    near = [np.nextafter(threshold, -1), threshold, np.nextafter(threshold, 2)]
    p = np.clip(np.sort(np.concatenate([rng.random(5000), near, [0.0, 1.0]])), 0.0, 1.0)
    scores, is_attack = verdict_scores(p, threshold)
    assert np.array_equal(is_attack, p >= threshold)
    assert np.array_equal(scores >= 0.5, is_attack)
    assert np.all(np.diff(scores) >= 0), "the map must keep the order of the probabilities"
    assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_a_classifier_verdict_scores_on_the_same_scale() -> None:
    rng = np.random.default_rng(12)
    proba = rng.dirichlet(np.ones(len(ATTACK_CLASSES)) * 0.3, size=5000)
    proba[:10, 0] = proba[:10, 1] = 0.5  # ties go to BENIGN (stable argsort): normal, score below 0.5
    proba[:10, 2:] = 0.0
    codes = np.argsort(-proba, axis=1, kind="stable")[:, 0]
    scores = classifier_verdict_scores(proba, codes)
    assert np.array_equal(scores >= 0.5, codes != 0)


def test_every_kddtest_row_scores_at_or_above_one_half_exactly_when_it_is_an_attack(model_store) -> None:
    models = ModelRegistry().load(model_store.threat_tag, model_store.attack_tag, load_model)
    frame = load_nsl_kdd(NSL_KDD_TEST).frame
    flows = FlowBatch.of("threat", [ThreatFlow(**row) for row in rows_of(frame, THREAT_FEATURES)])
    answered = pipeline.detect_threats(models, flows)
    records = answered.records()
    assert len(records) == len(frame) == 22544
    scores = np.array([r["prediction_score"] for r in records])
    is_attack = np.array([r["is_attack"] for r in records])
    probability = np.array([r["attack_probability"] for r in records])
    assert {r["threshold"] for r in records} == {0.5}
    assert {r["decision_threshold"] for r in records} == {models.threat.threshold}
    assert np.array_equal(scores >= 0.5, is_attack)
    assert np.array_equal(is_attack, probability >= models.threat.threshold)
    assert 0 < is_attack.sum() < len(records)  # both verdicts occur: the test means something
    order = np.argsort(probability, kind="stable")
    assert np.all(np.diff(scores[order]) >= 0)
