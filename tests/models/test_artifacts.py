"""Saving to and loading from the real BentoML store (temporary BENTOML_HOME): integrity and reference cases."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import bentoml
import numpy as np
import pytest

from nids.core.encoding import UNKNOWN_CODE, to_matrix
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_CLASSES, THREAT_FEATURES, THREAT_MODEL_NAME
from nids.models.artifacts import (
    CASES_FILE,
    ESTIMATOR_FILE,
    ONNX_FILE,
    REQUIRED_METADATA,
    ModelIntegrityError,
    ModelLoadError,
    ReferenceCaseError,
    latest_kept,
    latest_version,
    load_model,
    load_reference_cases,
    point_latest,
)
from training.data import CIC_IMPROVED, NSL_KDD_TEST, NSL_KDD_TRAIN, load_nsl_kdd, rows_of, sha256_file


def test_threat_model_loads_with_complete_metadata(model_store):
    model = load_model(model_store.threat_tag)
    assert set(REQUIRED_METADATA) <= set(model.metadata)
    assert model.feature_names == THREAT_FEATURES and model.class_names == THREAT_CLASSES
    assert 0.0 < model.threshold < 1.0
    assert set(model.encoders) == {"service", "flag"} and model.encoders["flag"] == sorted(model.encoders["flag"])
    assert model.inference_form == "onnx"
    assert model.metadata["input_files"]["train"]["sha256"] == sha256_file(NSL_KDD_TRAIN)
    assert model.metadata["input_files"]["test"]["sha256"] == sha256_file(NSL_KDD_TEST)
    assert model.metadata["git_commit"] and model.metadata["created_at"]
    assert model.metadata["library_versions"]["scikit-learn"]
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "false_positive_rate"} <= set(
        model.metadata["metrics"]["kddtest"]
    )
    # reference cases: at least one normal and one attack, all passing
    assert {r.expected_class for r in model.reference_results} == {0, 1}
    assert all(r.passed for r in model.reference_results)


def test_attack_model_has_a_passing_case_per_held_out_class(model_store):
    model = load_model(model_store.attack_tag)
    assert model.feature_names == ATTACK_FEATURES and model.class_names == ATTACK_CLASSES
    assert model.encoders == {} and model.threshold is None
    assert model.metadata["input_files"]["corrected"]["sha256"] == sha256_file(CIC_IMPROVED)
    held_out = {name for metrics in model.metadata["metrics"]["holdout"].values() for name in metrics["per_class"]}
    covered = {ATTACK_CLASSES[r.expected_class] for r in model.reference_results}
    missing = set(model.metadata["classes_without_reference_case"])
    assert covered | missing == held_out and not covered & missing
    assert len(covered) >= 10
    assert all(r.passed for r in model.reference_results)


def test_onnx_and_sklearn_forms_agree_on_real_rows(model_store):
    onnx = load_model(model_store.threat_tag)
    sklearn = load_model(model_store.threat_tag, prefer_onnx=False)
    assert sklearn.inference_form == "sklearn"
    rows = rows_of(load_nsl_kdd(NSL_KDD_TEST, nrows=300).frame, THREAT_FEATURES)
    X = to_matrix(rows, onnx.feature_names, onnx.encoders)
    p_onnx, p_sklearn = onnx.predict_proba(X), sklearn.predict_proba(X)
    assert p_onnx.shape == (300, 2)
    np.testing.assert_allclose(p_onnx, p_sklearn, atol=1e-4)
    parity = onnx.metadata["onnx_parity"]
    assert parity["stored"] and parity["max_abs_diff_holdout_sample"] <= parity["tolerance"]


def test_categories_may_be_sent_as_names_or_codes(model_store):
    model = load_model(model_store.threat_tag)
    row = rows_of(load_nsl_kdd(NSL_KDD_TEST, nrows=1).frame, THREAT_FEATURES)[0]
    as_codes = {**row, "service": model.encoders["service"].index(row["service"]), "flag": 2}
    as_names = {**row, "flag": model.encoders["flag"][2]}
    X = to_matrix([as_codes, as_names, {**row, "service": "gopher-over-quic"}], model.feature_names, model.encoders)
    np.testing.assert_array_equal(X[0], X[1])
    assert X[2, THREAT_FEATURES.index("service")] == UNKNOWN_CODE
    assert model.predict_proba(X).shape == (3, 2)  # an unknown name is scored, not a crash


def test_tampered_model_file_fails_integrity(model_store, clone_model):
    tag = clone_model(model_store.threat_tag, "tampered_threat")
    path = Path(bentoml.models.get(tag).path_of(ESTIMATOR_FILE))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match=f"file {ESTIMATOR_FILE} does not match its recorded sha256"):
        load_model(tag, prefer_onnx=False)
    with pytest.raises(ModelIntegrityError):  # the ONNX form is refused too: every file is verified
        load_model(tag)


def test_missing_model_file_fails_integrity(model_store, clone_model):
    tag = clone_model(model_store.attack_tag, "incomplete_attack")
    Path(bentoml.models.get(tag).path_of(ONNX_FILE)).unlink()
    with pytest.raises(ModelIntegrityError, match=f"file {ONNX_FILE} is missing"):
        load_model(tag)


def test_wrong_reference_case_is_reported_case_by_case(model_store, clone_model):
    cases = load_reference_cases(bentoml.models.get(model_store.threat_tag))
    wrong = dataclasses.replace(cases[0], expected_class=1 - cases[0].expected_class, description="flipped")
    tag = clone_model(model_store.threat_tag, "flipped_threat", reference_cases=[wrong, *cases[1:]])
    with pytest.raises(ReferenceCaseError, match=f"1 of {len(cases)} reference cases failed") as error:
        load_model(tag)
    assert [r.passed for r in error.value.results] == [False] + [True] * (len(cases) - 1)
    assert error.value.results[0].got_class == cases[0].expected_class


def test_edited_reference_cases_file_fails_integrity(model_store, clone_model):
    tag = clone_model(model_store.threat_tag, "edited_cases")
    path = Path(bentoml.models.get(tag).path_of(CASES_FILE))
    path.write_text(path.read_text().replace('"tolerance": 0.001', '"tolerance": 1.0'))
    with pytest.raises(ModelIntegrityError, match=f"file {CASES_FILE} does not match"):
        load_model(tag)


def test_incomplete_metadata_is_refused_at_save(model_store, clone_model):
    with pytest.raises(ValueError, match="metadata lacks encoders"):
        clone_model(model_store.threat_tag, "no_encoders", drop_metadata=("encoders",))


def test_unknown_tag_is_a_load_error(model_store):
    with pytest.raises(ModelLoadError, match="'threat_detector:doesnotexist' is not in the BentoML store"):
        load_model("threat_detector:doesnotexist")


def test_latest_is_kept_in_the_store_a_bento_serves_from(model_store, tmp_path: Path) -> None:
    """Served from a Bento (the container), BentoML reads and saves models in the Bento's own `models/`, not in
    BENTOML_HOME's: an import there kept `:latest` by writing the pointer into BENTOML_HOME (FileNotFoundError,
    a 500 on every signed upload inside the container). The pointer goes where the model is."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    shutil.copytree(model_store.home / "models", tmp_path / "bento" / "models")
    global_store = BentoMLContainer.model_store.get()
    BentoMLContainer.model_store.set(ModelStore(str(tmp_path / "bento" / "models")))  # as BentoML's Bento loader
    try:
        before = latest_version(THREAT_MODEL_NAME)
        with latest_kept(THREAT_MODEL_NAME), bentoml.models.create(THREAT_MODEL_NAME) as created:
            Path(created.path, "estimator.txt").write_text("a newer save")
        assert latest_version(THREAT_MODEL_NAME) == before  # the save moved it; kept where it was
        point_latest(str(created.tag))  # an activation moves it
        assert latest_version(THREAT_MODEL_NAME) == str(created.tag.version)
        assert (tmp_path / "bento" / "models" / THREAT_MODEL_NAME / "latest").read_text() == str(created.tag.version)
    finally:
        BentoMLContainer.model_store.set(global_store)
