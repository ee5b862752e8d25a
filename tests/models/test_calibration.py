"""Calibrated confidence: the served probabilities are the calibration table's map of the ONNX form's raw ones
(nids.core.calibration), the table is scikit-learn's calibration exactly, and it is integrity-checked at load."""

from __future__ import annotations

import json
from pathlib import Path

import bentoml
import joblib
import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from nids.core import pipeline
from nids.core.calibration import CalibrationError, CalibrationMap
from nids.core.columns import FlowBatch
from nids.core.features import ATTACK_FEATURES, THREAT_FEATURES
from nids.core.model import ActiveModels
from nids.core.schemas import AttackFlow, ThreatFlow
from nids.models.artifacts import (
    CALIBRATION_FILE,
    ESTIMATOR_FILE,
    ONNX_FILE,
    ModelIntegrityError,
    OnnxPredictor,
    get_store_model,
    load_model,
)
from training.data import CIC_IMPROVED, NSL_KDD_TEST, load_cic_improved, load_nsl_kdd, rows_of
from training.selection import _GivenProbabilities

ROWS = 400


@pytest.fixture(scope="module")
def models(model_store) -> ActiveModels:
    return ActiveModels(threat=load_model(model_store.threat_tag), attack=load_model(model_store.attack_tag))


@pytest.fixture(scope="module")
def threat_rows() -> list[dict]:
    return rows_of(load_nsl_kdd(NSL_KDD_TEST, nrows=ROWS).frame, THREAT_FEATURES)


@pytest.fixture(scope="module")
def attack_rows() -> list[dict]:
    frame = load_cic_improved(CIC_IMPROVED).frame.sample(n=ROWS, random_state=0)  # every class, not the file's head
    return rows_of(frame, ATTACK_FEATURES)


def raw_and_table(tag: str) -> tuple[OnnxPredictor, CalibrationMap]:
    """The stored ONNX form (raw probabilities) and calibration table of a version, read straight from the store."""
    stored = get_store_model(tag)
    assert {ONNX_FILE, CALIBRATION_FILE} <= set(stored.info.metadata["files"])
    table = CalibrationMap.from_json(Path(stored.path_of(CALIBRATION_FILE)).read_bytes())
    return OnnxPredictor(Path(stored.path_of(ONNX_FILE)).read_bytes()), table


def test_both_served_models_are_calibrated_by_a_table_after_onnx(models) -> None:
    assert models.threat.metadata["calibration"]["method"] == "sigmoid"
    assert models.attack.metadata["calibration"]["method"] == "isotonic"
    assert models.attack.metadata["confidence"] == "largest class probability, calibrated"
    for model in models.by_role().values():
        assert model.inference_form == "onnx"
        parity = model.metadata["onnx_parity"]
        assert parity["compared"] == "raw probabilities" and parity["stored"]
        assert parity["max_abs_diff_holdout_sample"] <= parity["tolerance"]
        assert "table applied in numpy after the ONNX form" in parity["calibration"]
        ece = model.metadata["calibration"]["ece"]
        assert any(name.endswith(", calibrated") for name in ece) and any(name.endswith("uncalibrated") for name in ece)


def test_the_served_attack_confidence_is_the_table_of_the_raw_onnx_scores(models, model_store, attack_rows) -> None:
    flows = FlowBatch.of("attack", [AttackFlow.model_validate(row) for row in attack_rows])
    answered = pipeline.classify_attacks(models, flows)
    raw_onnx, table = raw_and_table(model_store.attack_tag)
    raw = raw_onnx(flows.matrix(models.attack))
    calibrated = np.clip(table(raw), 0.0, 1.0)
    records = answered.records()
    np.testing.assert_array_equal([r["attack_type_encoded"] for r in records], calibrated.argmax(axis=1))
    np.testing.assert_array_equal([r["confidence"] for r in records], calibrated.max(axis=1))
    assert not np.allclose(calibrated.max(axis=1), raw.max(axis=1))  # the calibration does change the numbers
    # the table is scikit-learn's own calibration of the same raw model
    estimator = joblib.load(get_store_model(model_store.attack_tag).path_of(ESTIMATOR_FILE))
    X = flows.matrix(models.attack)
    np.testing.assert_allclose(table(estimator.estimator.predict_proba(X)), estimator.predict_proba(X), atol=1e-12)


def test_the_served_attack_probability_is_the_table_of_the_raw_onnx_score(models, model_store, threat_rows) -> None:
    flows = FlowBatch.of("threat", [ThreatFlow(**row) for row in threat_rows])
    answered = pipeline.detect_threats(models, flows)
    raw_onnx, table = raw_and_table(model_store.threat_tag)
    expected = np.clip(table(raw_onnx(flows.matrix(models.threat))), 0.0, 1.0)[:, 1]
    probability = np.array([r["attack_probability"] for r in answered.records()])
    np.testing.assert_array_equal(probability, expected)
    np.testing.assert_array_equal(answered.is_attack, expected >= models.threat.threshold)


def test_an_altered_calibration_table_is_never_served(model_store, clone_model) -> None:
    tag = clone_model(model_store.attack_tag, "recalibrated_attack")
    path = Path(bentoml.models.get(tag).path_of(CALIBRATION_FILE))
    body = json.loads(path.read_bytes())
    body["calibrators"][0]["y"] = [min(1.0, y + 0.01) for y in body["calibrators"][0]["y"]]
    path.write_text(json.dumps(body))
    with pytest.raises(ModelIntegrityError, match=f"file {CALIBRATION_FILE} does not match its recorded sha256"):
        load_model(tag)


def test_a_missing_calibration_table_is_never_served(model_store, clone_model) -> None:
    tag = clone_model(model_store.threat_tag, "uncalibrated_threat")
    Path(bentoml.models.get(tag).path_of(CALIBRATION_FILE)).unlink()
    with pytest.raises(ModelIntegrityError, match=f"file {CALIBRATION_FILE} is missing"):
        load_model(tag)


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_the_table_is_sklearns_calibration_and_survives_json(method: str, n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    raw = rng.dirichlet(np.ones(n_classes) * 0.5, size=3000)
    y = np.array([rng.choice(n_classes, p=row**2 / (row**2).sum()) for row in raw])  # sharper than the scores
    fitted = CalibratedClassifierCV(FrozenEstimator(_GivenProbabilities(n_classes)), method=method).fit(raw, y)
    table = CalibrationMap.of_estimator(fitted)
    again = CalibrationMap.from_json(table.to_json())
    assert again == table
    probe = np.vstack([rng.dirichlet(np.ones(n_classes), size=2000), np.eye(n_classes), np.zeros((1, n_classes))])
    np.testing.assert_allclose(again(probe), fitted.predict_proba(probe), rtol=0, atol=1e-12)
    # a few rows at a time (isotonic: plain Python instead of numpy) give the same numbers
    on_knots = np.column_stack([1 - np.array(table.calibrators[0].x[:5]), table.calibrators[0].x[:5]])
    for rows in (
        probe[:1],
        probe[-1:],
        probe[:5],
        probe[:32],
        *([on_knots] if n_classes == 2 and method == "isotonic" else []),
    ):
        np.testing.assert_allclose(again(rows), fitted.predict_proba(rows), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "unreadable calibration table"),
        (b'{"format": "other/1"}', "not a calibration table"),
        (b'{"format": "nids-calibration/1", "method": "beta", "n_classes": 2, "calibrators": [{}]}', "method"),
        (b'{"format": "nids-calibration/1", "method": "sigmoid", "n_classes": 3, "calibrators": [{}]}', "1 calibr"),
        (
            b'{"format": "nids-calibration/1", "method": "isotonic", "n_classes": 2, '
            b'"calibrators": [{"x": [0.5, 0.1], "y": [0, 1]}]}',
            "ascending",
        ),
    ],
)
def test_a_malformed_table_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(CalibrationError, match=reason):
        CalibrationMap.from_json(body)
