"""Training on small real slices: the threshold rule, reports, CLI options and --if-missing."""

from __future__ import annotations

import bentoml
import numpy as np
import pytest

from nids.core.encoding import to_matrix
from nids.core.features import THREAT_FEATURES
from nids.models.artifacts import load_model
from training import train_all
from training.attack import AttackConfig, train_attack
from training.data import CIC_IMPROVED, CIC_ORIGINAL, LABEL, NSL_KDD_TEST, load_nsl_kdd, rows_of
from training.evaluation import fpr_threshold
from training.threat import ThreatConfig, train_threat

pytestmark = pytest.mark.long_running


def test_fpr_threshold_is_the_lowest_within_the_bound(model_store):
    model = load_model(model_store.threat_tag)
    frame = load_nsl_kdd(NSL_KDD_TEST, nrows=3000).frame
    scores = model.predict_proba(to_matrix(rows_of(frame, THREAT_FEATURES), THREAT_FEATURES, model.encoders))[:, 1]
    labels = frame[LABEL].to_numpy()
    threshold = fpr_threshold(scores, labels, max_fpr=0.05)
    normal = scores[labels == 0]
    assert np.mean(normal >= threshold) <= 0.05
    lower = normal[normal < threshold]
    assert lower.size == 0 or np.mean(normal >= lower.max()) > 0.05


def test_stored_threshold_keeps_validation_fpr_within_one_percent(model_store):
    model = load_model(model_store.threat_tag)
    assert model.metadata["metrics"]["validation"]["false_positive_rate"] <= 0.01
    assert "<= 1%" in model.metadata["threshold_rule"]
    split = model.metadata["split"]
    assert split["seed"] == 42 and split["validation_rows"] > 0 and "stratified" in split["rule"]


def test_threat_reports_are_written(tmp_path, training_slices):
    config = ThreatConfig(model_name="report_threat", reports_dir=tmp_path, **training_slices["threat"])
    result = train_threat(config)
    files = {path.name for path in tmp_path.iterdir()}
    assert files == {"evaluation.md", "MODEL_CARD.md", "confusion_matrix.png", "roc_curve.png", "reliability.png"}
    assert (tmp_path / "roc_curve.png").read_bytes()[:4] == b"\x89PNG"
    evaluation = (tmp_path / "evaluation.md").read_text()
    accuracy = result.evaluations[result.kept].test["accuracy"]
    assert f"{accuracy:.4f}" in evaluation and "always attack" in evaluation
    assert "KDD-era features" in (tmp_path / "MODEL_CARD.md").read_text()


def test_attack_reports_are_written_per_release(tmp_path, training_slices):
    config = AttackConfig(model_name="report_attack", reports_dir=tmp_path, **training_slices["attack"])
    result = train_attack(config)
    names = {path.name for path in tmp_path.iterdir()}
    assert {"confusion_matrix_corrected.png", "confusion_matrix_original.png", "roc_attack_vs_benign.png"} <= names
    evaluation = (tmp_path / "evaluation.md").read_text()
    assert "## Corrected release" in evaluation and "## Original release" in evaluation
    assert f"{result.evaluations[result.kept].per_source['original']['macro_f1']:.4f}" in evaluation
    assert "Heartbleed is absent" in (tmp_path / "MODEL_CARD.md").read_text()


def test_attack_training_refuses_data_lacking_classes(tmp_path):
    import pandas as pd

    for source, name in ((CIC_IMPROVED, "improved.csv"), (CIC_ORIGINAL, "original.csv")):
        pd.read_csv(source, dtype=str, nrows=300).to_csv(tmp_path / name, index=False)
    config = AttackConfig(
        improved_path=tmp_path / "improved.csv", original_path=tmp_path / "original.csv", reports_dir=None
    )
    with pytest.raises(ValueError, match=r"training rows lack classes \['Web Attack – Sql Injection'\]"):
        train_attack(config)


def test_train_all_if_missing_trains_only_what_the_store_lacks(model_store, training_slices, capsys):
    threat = training_slices["threat"]
    before = {str(m.tag) for m in bentoml.models.list()}
    train_all.main(
        [
            "--if-missing",
            "--threat-model-name", "fresh_threat",
            "--threat-max-train-rows", str(threat["max_train_rows"]),
            "--threat-max-test-rows", str(threat["max_test_rows"]),
            "--threat-n-estimators", "5",
            "--threat-reports-dir", "none",
            "--attack-reports-dir", "none",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    added = {str(m.tag) for m in bentoml.models.list()} - before
    assert [tag.split(":")[0] for tag in added] == ["fresh_threat"]
    assert "attack_classifier: already in the store, not retrained" in captured.err
    assert captured.out.strip() in added
    assert load_model("fresh_threat:latest").metadata["training_params"]["estimator_params"]["n_estimators"] == 5
