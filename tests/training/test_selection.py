"""Selection without test data: grouped folds, the one-standard-error pick, calibration error, calibrated models."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV

from nids.models.artifacts import ESTIMATOR_FILE, get_store_model
from training.evaluation import reliability, top_label_reliability
from training.families import DECISION_TREE, RANDOM_FOREST, Candidate
from training.selection import CVResult, cross_fitted_calibration, cross_validate, near_duplicate_groups, pick


def test_near_duplicates_share_a_group_whatever_their_label():
    X = np.array([[100.0, 2.0], [101.0, 2.0], [5000.0, 2.0], [100.0, 2.0]])
    groups = near_duplicate_groups(X)
    assert groups[0] == groups[1] == groups[3] and groups[2] != groups[0]


def test_grouped_folds_never_split_a_group_and_score_every_row_once():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] > 0).astype(int)
    groups = np.arange(300) // 3  # triples of rows
    seen: list[np.ndarray] = []

    def score(y_fold: np.ndarray, proba: np.ndarray, rows: np.ndarray) -> float:
        seen.append(rows)
        return float(np.mean(proba.argmax(axis=1) == y_fold))

    (result,) = cross_validate(
        [Candidate(DECISION_TREE)], X, y, strata=y, groups=groups, folds=3, seed=1, n_jobs=1, score=score, log=print
    )
    rows = np.concatenate(seen)
    assert sorted(rows.tolist()) == list(range(300))
    for fold in seen:
        assert set(groups[fold]).isdisjoint(set(np.delete(groups, fold)))
    assert result.oof_proba.shape == (300, 2) and np.allclose(result.oof_proba.sum(axis=1), 1.0)
    assert result.speed["bulk_us_per_row"] is not None


def _result(name: str, scores: list[float], bulk: float | None) -> CVResult:
    return CVResult(
        Candidate(RANDOM_FOREST, name), scores, np.zeros((1, 2)), 0.0, {"single_us": 1.0, "bulk_us_per_row": bulk}
    )


def test_pick_takes_the_fastest_within_one_paired_standard_error():
    best = _result("a", [0.90, 0.80, 0.70], bulk=10.0)
    close = _result("b", [0.89, 0.81, 0.69], bulk=2.0)  # paired differences average 0, so within one SE
    worse = _result("c", [0.80, 0.70, 0.60], bulk=1.0)  # 0.1 lower on every fold
    no_onnx = _result("d", [0.91, 0.81, 0.71], bulk=None)
    chosen, rule = pick([best, close, worse, no_onnx])
    assert chosen is close and "random_forest_b" in rule


def test_expected_calibration_error():
    confident_and_wrong = reliability(np.full(100, 0.99), np.zeros(100))
    assert abs(confident_and_wrong["ece"] - 0.99) < 1e-9
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    assert reliability(p, (rng.uniform(size=p.size) < p).astype(int))["ece"] < 0.01
    proba = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert abs(top_label_reliability(np.array([0, 1]), proba)["ece"] - (0.5 * 0.1 + 0.5 * 0.6)) < 1e-9


def test_cross_fitted_calibration_fixes_overconfident_scores():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.2, 0.8, size=4000)
    y = (rng.uniform(size=truth.size) < truth).astype(int)
    overconfident = np.where(truth > 0.5, 0.99, 0.01)
    proba = np.column_stack([1 - overconfident, overconfident])
    before = reliability(proba[:, 1], y)["ece"]
    after = reliability(cross_fitted_calibration(proba, y, "sigmoid", seed=0)[:, 1], y)["ece"]
    assert after < before / 3


def test_threat_scores_are_calibrated_on_rows_the_model_never_trained_on(model_store):
    import joblib

    model = get_store_model(model_store.threat_tag)
    metadata = model.info.metadata
    assert metadata["calibration"]["method"] == "sigmoid" and "validation split" in metadata["calibration"]["rule"]
    assert metadata["score"] == "P(attack), calibrated" and "calibrated P(attack)" in metadata["threshold_rule"]
    estimator = joblib.load(model.path_of(ESTIMATOR_FILE))
    assert isinstance(estimator, CalibratedClassifierCV) and len(estimator.calibrated_classifiers_) == 1
    assert metadata["onnx_parity"]["stored"]
    assert set(metadata["calibration"]["ece"]) >= {"validation check half, uncalibrated", "KDDTest+, calibrated"}


def test_attack_confidence_is_calibrated_on_carved_rows_the_model_never_trained_on(model_store):
    metadata = get_store_model(model_store.attack_tag).info.metadata
    assert metadata["calibration"]["method"] == "isotonic"  # the default: the lowest out-of-fold ECE in selection.md
    assert metadata["confidence"] == "largest class probability, calibrated"
    assert "never trained on them" in metadata["calibration"]["rule"]
    assert metadata["training_params"]["calibrated"] == "CalibratedClassifierCV(method='isotonic')"
    assert {name.rsplit(", ", 1)[1] for name in metadata["calibration"]["ece"]} == {"uncalibrated", "calibrated"}
