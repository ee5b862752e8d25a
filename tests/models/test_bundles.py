"""Foreign models from the original system, in-process: a signed .joblib bundle of a scikit-learn model trained on
the committed data is validated and converted into a store model; an unsigned or tampered one is refused before
anything is unpickled (a pickle whose loading would create a file leaves no file); the ZIP deployment package."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import bentoml
import joblib
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.preprocessing import LabelEncoder, StandardScaler

from nids.core.encoding import to_matrix
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_CATEGORICAL, THREAT_FEATURES
from nids.models.artifacts import ModelLoadError, load_model
from nids.models.bundles import HELD_OUT_SHA256, KDD_TEST, BundleRefused, held_out_sha256, import_file, upload_kind
from nids.models.cli import main
from training.data import NSL_KDD_TRAIN, load_cic_improved, load_cic_original, load_nsl_kdd, rows_of

KEY = b"bundle-test-key"
LIMIT = 64 * 1024 * 1024


class CreatesAFile:
    """A pickle whose loading runs open(path, 'w'): proof of whether anything was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


def sign(path: Path, key: bytes = KEY) -> str:
    return hmac.new(key, path.read_bytes(), hashlib.sha256).hexdigest()


def threat_bundle(rows: int = 6000) -> dict[str, Any]:
    """The original's bundle: label encoders, selected feature names, a scaler, the model, class labels."""
    frame = load_nsl_kdd(NSL_KDD_TRAIN, nrows=rows).frame
    encoders = {f: LabelEncoder().fit(frame[f]) for f in THREAT_CATEGORICAL}
    X = to_matrix(rows_of(frame, THREAT_FEATURES), THREAT_FEATURES, {f: list(e.classes_) for f, e in encoders.items()})
    scaler = StandardScaler().fit(X)
    model = RandomForestClassifier(n_estimators=30, max_depth=12, random_state=12).fit(
        scaler.transform(X), frame["label"]
    )
    return {
        "model": model,
        "scaler": scaler,
        "label_encoders": encoders,
        "feature_names": list(THREAT_FEATURES),
        "class_labels": ["Normal", "Attack"],
        "threshold": 0.5,
    }


def write_bundle(directory: Path, bundle: Any, name: str = "threat_detector_ensemble.joblib") -> Path:
    path = directory / name
    joblib.dump(bundle, path, compress=3)
    return path


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle"), threat_bundle())


def test_a_signed_bundle_is_validated_converted_and_loads(bundle_file: Path) -> None:
    profile = {"version": "20241201_143022", "threshold": 0.5}
    imported = import_file(bundle_file, bundle_file.name, "threat_detector", sign(bundle_file), KEY, LIMIT, profile)
    try:
        results = imported.validation_results
        assert results["test_prediction"]["classes_in_range"] and results["test_prediction"]["probabilities_sum_to_1"]
        assert results["held_out_metrics"]["kddtest"]["rows"] == 22544
        assert results["held_out_metrics"]["kddtest"]["f1"] > 0.5
        model = load_model(imported.tag)  # hashes and the reference cases, as every stored model
        assert model.feature_names == THREAT_FEATURES and model.threshold == 0.5
        assert len(model.reference_results) == 40 and all(r.passed for r in model.reference_results)
        assert model.metadata["original_version"] == "20241201_143022"
        recorded = model.metadata["input_files"]["KDDTest+.csv.gz"]
        assert recorded == {"path": "data/nsl-kdd/KDDTest+.csv.gz", "sha256": HELD_OUT_SHA256[KDD_TEST]}
    finally:
        bentoml.models.delete(imported.tag)


def test_held_out_rows_other_than_the_recorded_ones_are_refused_naming_the_file(
    bundle_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of KDDTest+ whose sha256 is not the recorded one (here: the record says otherwise) is never scored on."""
    monkeypatch.setitem(HELD_OUT_SHA256, KDD_TEST, "0" * 64)
    held_out_sha256.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match=r"held-out data data/nsl-kdd/KDDTest\+\.csv\.gz has sha256 6da05c"):
            import_file(bundle_file, bundle_file.name, "threat_detector", sign(bundle_file), KEY, LIMIT, None)
    finally:
        held_out_sha256.cache_clear()


@pytest.mark.parametrize("signature", [None, "", "0" * 64, "tampered"])
def test_an_unsigned_or_tampered_pickle_is_refused_before_it_is_unpickled(
    tmp_path: Path, signature: str | None
) -> None:
    marker = tmp_path / "unpickled"
    path = write_bundle(tmp_path, CreatesAFile(marker), "evil.pkl")
    if signature == "tampered":
        signature = sign(path)
        path.write_bytes(path.read_bytes() + b"\x00")
    before = {str(m.tag) for m in bentoml.models.list()}
    with pytest.raises(BundleRefused) as refused:
        import_file(path, path.name, "threat_detector", signature, KEY, LIMIT)
    assert "sign" in refused.value.message and int(refused.value.status_code) == 400
    assert not marker.exists()
    assert {str(m.tag) for m in bentoml.models.list()} == before


def test_the_probe_is_real_a_signed_one_is_unpickled_then_refused_for_its_structure(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = write_bundle(tmp_path, CreatesAFile(marker), "probe.pkl")
    with pytest.raises(BundleRefused, match="bundle structure"):
        import_file(path, path.name, "threat_detector", sign(path), KEY, LIMIT)
    assert marker.exists()


def test_feature_names_must_be_the_schemas_in_order(tmp_path: Path, bundle_file: Path) -> None:
    bundle = joblib.load(bundle_file)
    names = list(THREAT_FEATURES)
    names[2], names[3] = names[3], names[2]
    path = write_bundle(tmp_path, {**bundle, "feature_names": names})
    with pytest.raises(BundleRefused, match="in another order"):
        import_file(path, path.name, "threat_detector", sign(path), KEY, LIMIT)
    path = write_bundle(tmp_path, {**bundle, "label_encoders": {}})
    with pytest.raises(BundleRefused, match="label_encoders"):
        import_file(path, path.name, "threat_detector", sign(path), KEY, LIMIT)


def zip_package(directory: Path, bundle: dict[str, Any], *, model_blob: bytes | None = None) -> Path:
    """The original's model_{version}_deployment.zip (003): model, scaler, metadata, manifest with sha256 per file."""
    blobs = {}
    for name, value in (
        ("model.joblib", bundle["model"]),
        ("scaler.joblib", bundle["scaler"]),
        ("label_encoders.joblib", bundle["label_encoders"]),
    ):
        buffer = io.BytesIO()
        joblib.dump(value, buffer)
        blobs[name] = buffer.getvalue()
    blobs["metadata.json"] = json.dumps({"model_info": {"version": "20241201_143022"}}).encode()
    manifest = {
        "model_version": "20241201_143022",
        "package_format_version": "1.0",
        "training_info": {"feature_names": list(THREAT_FEATURES), "feature_count": 10},
        "file_integrity": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
        "inference_config": {"threshold": 0.5},
    }
    if model_blob is not None:
        blobs["model.joblib"] = model_blob  # altered after the manifest was written
    path = directory / "model_20241201_143022_deployment.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in {**blobs, "deployment_manifest.json": json.dumps(manifest).encode()}.items():
            archive.writestr(f"model_20241201_143022_deployment/{name}", blob)
    return path


def test_a_signed_zip_deployment_package_is_imported(tmp_path: Path, bundle_file: Path) -> None:
    path = zip_package(tmp_path, joblib.load(bundle_file))
    imported = import_file(path, path.name, "threat_detector", sign(path), KEY, LIMIT)
    try:
        assert load_model(imported.tag).metadata["input_files"]["bundle"]["format"] == "zip"
    finally:
        bentoml.models.delete(imported.tag)


def test_a_zip_member_that_differs_from_its_manifest_is_never_loaded(tmp_path: Path, bundle_file: Path) -> None:
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    joblib.dump(CreatesAFile(marker), buffer)
    path = zip_package(tmp_path, joblib.load(bundle_file), model_blob=buffer.getvalue())
    with pytest.raises(BundleRefused, match=r"model\.joblib does not match its sha256"):
        import_file(path, path.name, "threat_detector", sign(path), KEY, LIMIT)
    assert not marker.exists()


def test_a_file_that_is_no_model_package_is_refused_in_words(tmp_path: Path) -> None:
    with pytest.raises(BundleRefused, match="not a model package") as refused:
        upload_kind("notes.txt", b"hello, this is not a model")
    assert "\n" not in refused.value.message and "ReadError" not in refused.value.message
    assert upload_kind("threat_detector_ensemble.joblib", b"") == "bundle"
    assert upload_kind(None, b"PK\x03\x04...") == "zip"
    with pytest.raises(BundleRefused, match="Keras"):
        upload_kind("threat_detector.h5", b"\x89HDF")


def test_the_cli_imports_a_bundle_signed_beside_it(
    tmp_path: Path, bundle_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NIDS_MODEL_SIGNING_KEY", KEY.decode())
    monkeypatch.setenv("NIDS_DATA_DIR", str(tmp_path / "var"))
    assert main(["sign-bundle", str(bundle_file)]) == 0
    assert Path(str(bundle_file) + ".sig").read_text().strip() == sign(bundle_file)
    profile = tmp_path / "threat_detector_profile.json"
    profile.write_text(json.dumps({"model_type": "threat_detector", "version": "20241201_143022"}))
    capsys.readouterr()
    assert main(["import-bundle", str(bundle_file), "--profile", str(profile)]) == 0
    entry = json.loads(capsys.readouterr().out)
    try:
        assert isinstance(entry["id"], int) and entry["is_active"] is False
        assert entry["validation_results"]["feature_names"].startswith("passed")
    finally:
        bentoml.models.delete(entry["tag"])
    os.remove(str(bundle_file) + ".sig")
    assert main(["import-bundle", str(bundle_file), "--profile", str(profile)]) == 1
    assert "unsigned" in capsys.readouterr().err


def test_a_signed_attack_classifier_bundle_is_scored_on_both_committed_samples(tmp_path: Path) -> None:
    frames = [load_cic_original().frame, load_cic_improved().frame]
    rows = pd.concat([frame.groupby("label").head(60) for frame in frames], ignore_index=True)
    model = RandomForestClassifier(n_estimators=20, max_depth=12, random_state=12)
    model.fit(to_matrix(rows_of(rows, ATTACK_FEATURES), ATTACK_FEATURES), rows["label"])
    bundle = {"model": model, "feature_names": list(ATTACK_FEATURES), "class_labels": dict(enumerate(ATTACK_CLASSES))}
    path = write_bundle(tmp_path, bundle, "attack_classifier.joblib")
    imported = import_file(path, path.name, "attack_classifier", sign(path), KEY, LIMIT)
    try:
        holdout = imported.validation_results["held_out_metrics"]["holdout"]
        assert set(holdout) == {"original", "corrected"} and all(m["macro_f1"] > 0.3 for m in holdout.values())
        loaded = load_model(imported.tag)
        assert loaded.class_names == ATTACK_CLASSES and loaded.threshold is None
        assert all(r.passed for r in loaded.reference_results)
    finally:
        bentoml.models.delete(imported.tag)
