"""Analysts' verdicts on logged predictions: stored once per prediction, checked, counted per model version."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nids.core.errors import InvalidInput
from nids.core.model import ActiveModels
from nids.observability.feedback import FeedbackStore
from nids.observability.feedback_schemas import FeedbackIn
from nids.observability.schemas import LoggedPrediction, PredictionQuery, TimeWindow
from nids.observability.store import PredictionStore

from .conftest import batch


@pytest.fixture
def logged(store: PredictionStore, models: ActiveModels, flows: Any) -> list[LoggedPrediction]:
    """40 real predictions, logged (newest first)."""
    store.insert(batch(models, flows[:40]).rows())
    return store.list(PredictionQuery(limit=40), time.time())


def test_a_verdict_round_trips_into_statistics_and_a_repeat_updates(
    store: PredictionStore, logged: list[LoggedPrediction], models: ActiveModels
) -> None:
    log, feedback = store, FeedbackStore(store.db, store.predictions.removesuffix("predictions"))
    attacks = [p for p in logged if p.threat_prediction.is_attack]
    benign = [p for p in logged if not p.threat_prediction.is_attack]
    assert len(attacks) >= 3 and len(benign) >= 3
    now = time.time()
    for p in attacks[:2]:
        feedback.give(log.get(p.traffic_data_id), FeedbackIn(verdict="true_positive"), "alice", now)
    feedback.give(log.get(attacks[2].traffic_data_id), FeedbackIn(verdict="false_positive", note="scanner"), "bob", now)
    feedback.give(log.get(benign[0].traffic_data_id), FeedbackIn(verdict="false_negative"), "alice", now)
    for p in benign[1:3]:
        feedback.give(log.get(p.traffic_data_id), FeedbackIn(verdict="true_negative"), "alice", now)

    (counts,) = feedback.stats(TimeWindow(), time.time())
    assert (counts.model_version, counts.kind) == (models.threat.tag, "threat")
    assert (counts.true_positive, counts.false_positive, counts.false_negative, counts.true_negative) == (2, 1, 1, 2)
    assert counts.precision == round(2 / 3, 6)
    assert counts.false_positive_rate == round(1 / 3, 6)
    assert counts.false_negative_rate == round(1 / 3, 6)

    # the analyst changes their mind: the verdict is replaced, not added
    first = feedback.get(attacks[2].traffic_data_id)
    again = feedback.give(log.get(attacks[2].traffic_data_id), FeedbackIn(verdict="true_positive"), "carol", now + 5)
    assert (again.verdict, again.analyst, again.revisions, again.note) == ("true_positive", "carol", 2, None)
    assert again.created_at == first.created_at and again.updated_at > first.updated_at
    (counts,) = feedback.stats(TimeWindow(), time.time())
    assert (counts.total, counts.true_positive, counts.false_positive) == (6, 3, 0)
    assert counts.precision == 1.0

    # the labels retraining reads: the features as logged, normal / attack by the truth
    labelled = feedback.labelled("threat")
    assert len(labelled) == 6
    assert {label for _, label, _ in labelled} == {"attack", "normal"}
    assert all(set(features) == set(logged[0].features) for features, _, _ in labelled)
    assert feedback.stats(TimeWindow(window_seconds=0.001), time.time() + 3600) == []


def test_a_verdict_that_contradicts_the_prediction_is_refused_naming_the_field(
    store: PredictionStore, logged: list[LoggedPrediction]
) -> None:
    log, feedback = store, FeedbackStore(store.db, store.predictions.removesuffix("predictions"))
    attack = next(p for p in logged if p.threat_prediction.is_attack)
    with pytest.raises(InvalidInput) as refused:
        feedback.give(log.get(attack.traffic_data_id), FeedbackIn(verdict="true_negative"), "alice", time.time())
    assert refused.value.detail[0]["loc"] == ["body", "verdict"]
    with pytest.raises(InvalidInput) as refused:
        feedback.give(
            log.get(attack.traffic_data_id), FeedbackIn(verdict="true_positive", attack_type="DDoS"), "a", time.time()
        )
    assert refused.value.detail[0]["loc"] == ["body", "attack_type"]  # threat flows have no attack type
    assert feedback.get(attack.traffic_data_id) is None
    with pytest.raises(ValueError, match="attack_type must be one of"):
        FeedbackIn(verdict="true_positive", attack_type="Nonsense")
