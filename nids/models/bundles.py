"""Foreign models, safely: the original system's `.joblib` / `.pkl` bundles and its ZIP deployment packages.

A pickle runs code when it is loaded, so nothing here is unpickled before its bytes are proven to come from a
holder of NIDS_MODEL_SIGNING_KEY: the signature is HMAC-SHA256 of the file's exact bytes, hex, sent beside the
file (the `signature` form field of the upload, `FILE.sig` or `--signature` for the CLI). A ZIP package (the
original's `model_{version}_deployment.zip`) is signed the same way as a whole, and then every file its
`deployment_manifest.json` lists is checked against its sha256 before any is loaded.

Then the checks the original lists, in its order: the bundle's structure; the feature names, exactly and in the
order of the schema; a test prediction on committed reference flows (classes in range, probabilities summing to
1); the metric on held-out data (KDDTest+ for a threat detector, the committed CIC-IDS2017 samples for an attack
classifier) in the shape the activation gate compares. Only a bundle that passes them all becomes a store model:
a scikit-learn pipeline (scaler, model) over the service's encoded features, its metadata, and the reference
flows with the bundle's own outputs as its reference cases; the stored model is loaded and verified like any
other before the import answers. It stays inactive until activated (which runs the gate).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import json
import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import bentoml
import joblib
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.pipeline import Pipeline

from nids.core.encoding import to_matrix
from nids.core.features import (
    ATTACK_CLASSES,
    ATTACK_FEATURES,
    ATTACK_IMPROVED_COLUMNS,
    ATTACK_MODEL_NAME,
    THREAT_CATEGORICAL,
    THREAT_CLASSES,
    THREAT_FEATURES,
    THREAT_MODEL_NAME,
    normalise_attack_label,
)
from nids.core.model import ReferenceCase, class_and_score
from nids.models.artifacts import ModelLoadError, latest_kept, load_model, save_model, sha256_bytes
from nids.models.packages import CHUNK, PackageRefused, PackageTooLarge, SigningNotConfigured
from nids.models.registry import check_contract

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
KDD_TEST = DATA_DIR / "nsl-kdd" / "KDDTest+.csv.gz"
CIC_SAMPLES = {
    "original": DATA_DIR / "cic-ids2017" / "cic-ids2017-dev-sample.csv.gz",
    "corrected": DATA_DIR / "cic-ids2017-improved" / "cic-ids2017-improved-dev.csv.gz",
}
# The held-out files the metric check reads, as data/*/SOURCE.md records them (sha256). The Bento ships them
# (bentofile.yaml `include`), so an upload inside the container is checked like one from a checkout; a copy whose
# bytes differ is refused, never scored on: a model's metric is only comparable on the same rows.
HELD_OUT_SHA256 = {
    KDD_TEST: "6da05cbe6c49511a2b4c73fcf51f1202197316ceacc8d557e704d27dc672a6f0",
    CIC_SAMPLES["original"]: "6ac44d16bdee0fa80a2fc1db8ab2a3dd68088e352b8997394254a802f7e7ba4e",
    CIC_SAMPLES["corrected"]: "b004126ab099c0bdbbc074abe2ada2695d6b4d7647e5b198b90237eca4fc3f5c",
}
REFERENCE_FLOWS = 40  # reference flows per model: the test prediction and the stored reference cases
REFERENCE_TOLERANCE = 1e-6
MANIFEST = "deployment_manifest.json"
HOW_TO_SIGN = (
    "sign the file's bytes with the service's key: `python -m nids.models.cli sign-bundle FILE` writes FILE.sig "
    '(HMAC-SHA256, hex; by hand: `openssl dgst -sha256 -hmac "$NIDS_MODEL_SIGNING_KEY" FILE`), then send it as '
    'the signature form field: curl ... -F "signature=<FILE.sig"'
)
Kind = Literal["package", "bundle", "zip"]
_CONTRACT = {
    THREAT_MODEL_NAME: (THREAT_FEATURES, THREAT_CLASSES),
    ATTACK_MODEL_NAME: (ATTACK_FEATURES, ATTACK_CLASSES),
}


class BundleRefused(PackageRefused):
    """A bundle or deployment package failed a check; the message names it (400)."""


# --- what was uploaded ---------------------------------------------------------------------------------------------
def upload_kind(filename: str | None, head: bytes) -> Kind:
    """Which importer reads a file: by the original's extensions first (.pkl, .joblib, .zip), else by its first
    bytes. Anything else is refused with what is accepted (never a parser's own message)."""
    suffix = PurePosixPath(filename or "").suffix.lower()
    if suffix in {".pkl", ".pickle", ".joblib"}:
        return "bundle"
    if suffix == ".zip" or head.startswith(b"PK\x03\x04"):
        return "zip"
    if suffix == ".h5":
        raise BundleRefused("Keras .h5 models are not accepted: this service serves scikit-learn models only")
    if head.startswith((b"\xfd7zXZ", b"\x1f\x8b", b"BZh")) or head[257:262] == b"ustar":
        return "package"
    if head[:1] == b"\x80" or head[:1] == b"\x78":  # a pickle (protocol 2+) or joblib's zlib stream
        return "bundle"
    raise BundleRefused(
        "the file is not a model package: send a signed .joblib/.pkl bundle, a signed ZIP deployment package "
        "(model_{version}_deployment.zip) or a signed package of `python -m nids.models.cli export`"
    )


def _digest(path: Path, digest: Any) -> str:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_signature(path: Path, key: bytes) -> str:
    """HMAC-SHA256 (hex) of the file's bytes."""
    return _digest(path, hmac.new(key, digestmod=hashlib.sha256))


def verify_file_signature(path: Path, signature: str | None, key: bytes | None) -> None:
    """Refuse the file unless `signature` is its HMAC under `key`; reads bytes only (nothing is deserialized)."""
    if key is None:
        raise SigningNotConfigured("a model upload or import")
    if not signature or not signature.strip():
        raise BundleRefused(f"the file is unsigned, and a pickle is never loaded unsigned: {HOW_TO_SIGN}")
    text = signature.strip()  # the hex alone, or `openssl dgst` output: "HMAC-SHA2-256(FILE)= <hex>"
    claimed = (text.rpartition("= ")[2] if "= " in text else text.split()[0]).lower()
    if not hmac.compare_digest(file_signature(path, key), claimed):
        raise BundleRefused(
            "the signature does not match the file's bytes: the file was altered, or signed with another key; "
            + HOW_TO_SIGN
        )


# --- the original's bundle ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """The parts of a foreign model the service needs, taken out of its bundle or package."""

    estimator: Any  # predict_proba over the encoded features (the scaler, when any, inside)
    feature_names: tuple[str, ...]
    encoders: dict[str, list[str]]
    threshold: float | None
    source: dict[str, Any]  # what it came from: file name, sha256, format


def _get(bundle: Mapping[str, Any], *names: str) -> Any:
    return next((bundle[name] for name in names if name in bundle), None)


def parse_bundle(raw: Any, model_type: str, source: dict[str, Any], profile: Mapping[str, Any]) -> Bundle:
    """The original's bundle structure: a dict with `model` (predict_proba), `feature_names` (the schema's, in
    order), optional `scaler` (transform), `label_encoders` (service and flag: required for a threat detector),
    `class_labels` and `threshold`."""
    features, classes = _CONTRACT[model_type]
    if not isinstance(raw, Mapping):
        raise BundleRefused(
            f"bundle structure: a dict with model, feature_names, label_encoders, scaler, class_labels; got a "
            f"{type(raw).__name__}"
        )
    model = _get(raw, "model", "estimator", "classifier", "pipeline")
    if model is None or not callable(getattr(model, "predict_proba", None)):
        raise BundleRefused("bundle structure: `model` must be a fitted estimator with predict_proba")
    names = _get(raw, "feature_names", "selected_features", "features")
    if names is None:
        names = profile.get("feature_names")
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise BundleRefused("bundle structure: `feature_names` must list the model's feature names")
    if tuple(names) != features:
        missing = [n for n in features if n not in names]
        extra = [n for n in names if n not in features]
        why = f"missing {missing}, unknown {extra}" if missing or extra else "the same names in another order"
        raise BundleRefused(
            f"feature names: a {model_type} takes exactly the {len(features)} features of its schema, in order "
            f"({why}); see docs/compat.md"
        )
    encoders: dict[str, list[str]] = {}
    raw_encoders = _get(raw, "label_encoders", "encoders") or {}
    if model_type == THREAT_MODEL_NAME:
        for feature in THREAT_CATEGORICAL:
            encoder = raw_encoders.get(feature) if isinstance(raw_encoders, Mapping) else None
            values = getattr(encoder, "classes_", encoder)
            if values is None or isinstance(values, str) or not all(isinstance(v, str) for v in list(values)):
                raise BundleRefused(
                    f"bundle structure: label_encoders[{feature!r}] (a LabelEncoder or the list of names, code = "
                    "index) is required: flows name the service and flag"
                )
            encoders[feature] = [str(v) for v in values]
    labels = _get(raw, "class_labels", "class_mapping", "classes")
    if labels is not None:
        _check_labels(labels, classes, model_type)
    fitted = getattr(model, "classes_", None)
    if fitted is not None and [int(c) if _is_int(c) else c for c in list(fitted)] not in (
        list(range(len(classes))),
        list(classes),
    ):
        raise BundleRefused(
            f"class labels: the model's classes_ must be 0..{len(classes) - 1} (or the names {list(classes)}), in order"
        )
    scaler = _get(raw, "scaler")
    if scaler is not None and not callable(getattr(scaler, "transform", None)):
        raise BundleRefused("bundle structure: `scaler` must have transform")
    estimator = Pipeline([("scaler", scaler), ("model", model)]) if scaler is not None else model
    threshold = _get(raw, "threshold")
    if threshold is None:
        threshold = profile.get("threshold", 0.5 if model_type == THREAT_MODEL_NAME else None)
    if model_type == THREAT_MODEL_NAME:
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 < threshold < 1:
            raise BundleRefused(f"threshold: a probability within (0, 1), got {threshold!r}")
        threshold = float(threshold)
    else:
        threshold = None
    return Bundle(estimator, tuple(names), encoders, threshold, source)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_labels(labels: Any, classes: Sequence[str], model_type: str) -> None:
    if isinstance(labels, Mapping):
        labels = [labels.get(i, labels.get(str(i))) for i in range(len(labels))]
    names = [str(label) for label in labels] if isinstance(labels, list | tuple) else None
    if model_type == THREAT_MODEL_NAME:
        ok = names is not None and [n.casefold() for n in names] == list(classes)
    else:
        try:
            ok = names is not None and [normalise_attack_label(n) for n in names] == list(classes)
        except ValueError:
            ok = False
    if not ok:
        raise BundleRefused(f"class labels: {model_type} classes must be {list(classes)} in this order, got {labels!r}")


def load_bundle_file(path: Path, signature: str | None, key: bytes | None) -> Any:
    """The bundle's object, once its signature is verified (before that, nothing is unpickled)."""
    verify_file_signature(path, signature, key)
    try:
        return joblib.load(path)
    except Exception as exc:  # a signed file that is no pickle/joblib: say so, never a 500
        raise BundleRefused(f"model loading test: the file does not load with joblib ({type(exc).__name__})") from exc


def load_zip_package(path: Path, signature: str | None, key: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The original's deployment package (model.joblib, scaler.joblib, metadata.json, deployment_manifest.json)
    as a bundle dict: signature first, then every file's sha256 against the manifest, only then joblib."""
    verify_file_signature(path, signature, key)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleRefused("the file is not a ZIP deployment package (model_{version}_deployment.zip)") from exc
    with archive:
        members = {PurePosixPath(info.filename).name: info for info in archive.infolist() if not info.is_dir()}
        if sum(info.file_size for info in members.values()) > max_bytes:
            raise PackageTooLarge(f"the package unpacks to more than {max_bytes} bytes (NIDS_MODEL_MAX_PACKAGE_BYTES)")
        if MANIFEST not in members:
            raise BundleRefused(f"the ZIP package has no {MANIFEST}")
        try:
            manifest = json.loads(archive.read(members[MANIFEST]))
            integrity = dict(manifest["file_integrity"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleRefused(f"{MANIFEST} must be JSON with file_integrity (file name -> sha256)") from exc
        if "model.joblib" not in integrity:
            raise BundleRefused(f"{MANIFEST}: file_integrity must list model.joblib")
        blobs: dict[str, bytes] = {}
        for name, expected in integrity.items():
            if name not in members:
                raise BundleRefused(f"file integrity: {name} is listed in {MANIFEST} but not in the package")
            blobs[name] = archive.read(members[name])
            if sha256_bytes(blobs[name]) != str(expected).lower():
                raise BundleRefused(f"file integrity: {name} does not match its sha256 in {MANIFEST}")
    unlisted = sorted(name.removesuffix(".joblib") for name in members if name.endswith(".joblib"))
    if any(f"{name}.joblib" not in integrity for name in unlisted):
        raise BundleRefused(f"file integrity: every .joblib file must be listed in {MANIFEST}")

    def load(name: str) -> Any:
        try:
            return joblib.load(io.BytesIO(blobs[name]))
        except Exception as exc:
            raise BundleRefused(f"model loading test: {name} does not load with joblib ({type(exc).__name__})") from exc

    training = manifest.get("training_info") or {}
    config = manifest.get("inference_config") or {}
    bundle: dict[str, Any] = {"model": load("model.joblib"), "feature_names": training.get("feature_names")}
    if "scaler.joblib" in blobs:
        bundle["scaler"] = load("scaler.joblib")
    if "label_encoders.joblib" in blobs:
        bundle["label_encoders"] = load("label_encoders.joblib")
    if "threshold" in config:
        bundle["threshold"] = config["threshold"]
    bundle["manifest"] = {k: manifest.get(k) for k in ("model_version", "package_format_version", "model_info")}
    return bundle


# --- committed data: reference flows and held-out rows -------------------------------------------------------------
def _rows(path: Path) -> Iterator[dict[str, str]]:
    held_out_sha256(path)
    with gzip.open(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
        yield from csv.DictReader(handle)


@cache
def held_out_sha256(path: Path) -> str:
    """The sha256 of a held-out file, checked against the one recorded (ModelLoadError naming the file when it is
    missing or differs)."""
    relative = path.relative_to(DATA_DIR.parent)
    if not path.is_file():
        raise ModelLoadError(
            f"the held-out data {relative} is not at {path}: the Bento ships it (bentofile.yaml include); "
            "a checkout has it under data/ (docs/compat.md)"
        )
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if digest != HELD_OUT_SHA256[path]:
        raise ModelLoadError(
            f"the held-out data {relative} has sha256 {digest}, not the recorded {HELD_OUT_SHA256[path]}: "
            "restore the committed file"
        )
    return digest


def threat_rows() -> tuple[list[dict[str, Any]], np.ndarray]:
    """KDDTest+: flows and labels (1 attack)."""
    flows, labels = [], []
    for row in _rows(KDD_TEST):
        flows.append({f: row[f] if f in THREAT_CATEGORICAL else float(row[f]) for f in THREAT_FEATURES})
        labels.append(int(row["label"].strip() != "normal"))
    return flows, np.array(labels)


def attack_rows() -> dict[str, tuple[list[dict[str, Any]], np.ndarray]]:
    """Both committed CIC-IDS2017 samples: flows and class codes (Heartbleed, attempted attacks, NaN rows left out)."""
    codes = {name: code for code, name in enumerate(ATTACK_CLASSES)}
    out = {}
    for source, path in CIC_SAMPLES.items():
        columns = ATTACK_IMPROVED_COLUMNS if source == "corrected" else {f: f for f in ATTACK_FEATURES}
        label = "Label" if source == "corrected" else " Label"
        flows, labels = [], []
        for row in _rows(path):
            if source == "corrected" and row.get("Attempted Category", "-1").strip() not in ("-1", ""):
                continue
            name = normalise_attack_label(row[label])
            values = {f: float(row[columns[f]] or "nan") for f in ATTACK_FEATURES}
            if name is None or any(math.isnan(v) for v in values.values()):
                continue
            flows.append(values)
            labels.append(codes[name])
        out[source] = (flows, np.array(labels))
    return out


def reference_flows(model_type: str) -> list[dict[str, Any]]:
    """The committed flows every imported model is tested on and keeps as reference cases: the first rows of
    KDDTest+, or the first rows of each class of the original CIC-IDS2017 sample."""
    if model_type == THREAT_MODEL_NAME:
        return threat_rows()[0][:REFERENCE_FLOWS]
    flows, labels = attack_rows()["original"]
    picked: list[dict[str, Any]] = []
    for code in range(len(ATTACK_CLASSES)):
        picked += [flows[i] for i in np.flatnonzero(labels == code)[:3]]
    return picked[:REFERENCE_FLOWS]


# --- validation and conversion ------------------------------------------------------------------------------------
def _predict(bundle: Bundle, flows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    matrix = to_matrix(flows, bundle.feature_names, bundle.encoders)
    try:
        return np.asarray(bundle.estimator.predict_proba(matrix), dtype=np.float64)
    except Exception as exc:  # the foreign model itself fails: a refusal naming the check
        raise BundleRefused(f"test prediction: predict_proba failed ({type(exc).__name__}: {exc})") from exc


def check_test_prediction(bundle: Bundle, model_type: str, flows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The original's test prediction: one probability per class, each in [0, 1], summing to 1 per flow."""
    classes = _CONTRACT[model_type][1]
    proba = _predict(bundle, flows)
    if proba.shape != (len(flows), len(classes)):
        raise BundleRefused(
            f"test prediction: predict_proba gave shape {proba.shape}; expected ({len(flows)}, {len(classes)})"
        )
    if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
        raise BundleRefused("test prediction: probabilities must be finite and within [0, 1]")
    if not np.allclose(proba.sum(axis=1), 1.0, atol=1e-6):
        raise BundleRefused("test prediction: the probabilities of each flow must sum to 1")
    return proba


def held_out_metrics(bundle: Bundle, model_type: str) -> dict[str, Any]:
    """The metric the activation gate compares, on held-out data, in the shape training records it."""
    if model_type == THREAT_MODEL_NAME:
        flows, labels = threat_rows()
        predicted = (_predict(bundle, flows)[:, 1] >= bundle.threshold).astype(int)
        return {
            "kddtest": {
                "rows": len(labels),
                "accuracy": float(accuracy_score(labels, predicted)),
                "precision": float(precision_score(labels, predicted, zero_division=0)),
                "recall": float(recall_score(labels, predicted, zero_division=0)),
                "f1": float(f1_score(labels, predicted, zero_division=0)),
            }
        }
    holdout = {}
    for source, (flows, labels) in attack_rows().items():
        predicted = np.argmax(_predict(bundle, flows), axis=1)
        holdout[source] = {
            "rows": len(labels),
            "accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        }
    return {"holdout": holdout}


@dataclass(frozen=True)
class Imported:
    tag: str
    validation_results: dict[str, Any]


def import_bundle_object(
    raw: Any, model_type: str, source: dict[str, Any], profile: Mapping[str, Any] | None = None
) -> Imported:
    """Validate a loaded bundle as the original lists, convert it into a store model (inactive), verify it loads."""
    profile = dict(profile or {})
    bundle = parse_bundle(raw, model_type, source, profile)
    flows = reference_flows(model_type)
    proba = check_test_prediction(bundle, model_type, flows)
    metrics = held_out_metrics(bundle, model_type)
    cases = []
    for i, (flow, row) in enumerate(zip(flows, proba, strict=True)):
        expected = int(np.argmax(row))
        got_class, score = class_and_score(row, expected, bundle.threshold)
        cases.append(
            ReferenceCase(
                description=f"committed reference flow {i} ({model_type})",
                features=dict(flow),
                expected_class=got_class,
                expected_score=score,
                tolerance=REFERENCE_TOLERANCE,
            )
        )
    classes = _CONTRACT[model_type][1]
    predicted = np.argmax(proba, axis=1)
    results = {
        "bundle_structure": "passed",
        "feature_names": f"passed: the {len(bundle.feature_names)} features of the schema, in order",
        "test_prediction": {
            "flows": len(flows),
            "classes_in_range": bool(((predicted >= 0) & (predicted < len(classes))).all()),
            "probabilities_sum_to_1": True,
            "predicted": {classes[c]: int(n) for c, n in zip(*np.unique(predicted, return_counts=True), strict=True)},
        },
        "held_out_metrics": metrics,
        "held_out_files": _data_files(model_type),  # which rows, byte for byte (sha256)
        "signature": "passed: HMAC-SHA256 of the file's bytes",
    }
    metadata: dict[str, Any] = {
        "feature_names": list(bundle.feature_names),
        "class_names": list(classes),
        "encoders": bundle.encoders,
        "metrics": metrics,
        "input_files": {"bundle": source, **results["held_out_files"]},
        "training_params": {"imported": True, "profile_config": profile},
        "source": "imported bundle (the original system's format)",
        "original_version": str(profile.get("version") or datetime.now(UTC).strftime("%Y%m%d_%H%M%S")),
        "validation_results": results,
    }
    if bundle.threshold is not None:
        metadata["threshold"] = bundle.threshold
    with latest_kept(model_type):  # imported, never implicitly served (only an activation moves :latest)
        model = save_model(
            model_type, estimator=bundle.estimator, metadata=metadata, reference_cases=cases, onnx_model=None
        )
        tag = str(model.tag)
        try:
            check_contract("threat" if model_type == THREAT_MODEL_NAME else "attack", load_model(tag))
        except ModelLoadError:
            bentoml.models.delete(tag)  # a model that fails its own checks is never kept
            raise
    results["stored_model_checks"] = "passed: hashes and reference cases"
    return Imported(tag=tag, validation_results=results)


def _data_files(model_type: str) -> dict[str, Any]:
    paths = [KDD_TEST] if model_type == THREAT_MODEL_NAME else list(CIC_SAMPLES.values())
    return {
        path.name: {"path": str(path.relative_to(DATA_DIR.parent)), "sha256": held_out_sha256(path)} for path in paths
    }


def import_file(
    path: Path,
    filename: str | None,
    model_type: str,
    signature: str | None,
    key: bytes | None,
    max_bytes: int,
    profile: Mapping[str, Any] | None = None,
) -> Imported:
    """A signed .joblib/.pkl bundle or ZIP deployment package, validated and converted (the upload and the CLI)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise PackageTooLarge(f"the file has {size} bytes; the limit is {max_bytes} (NIDS_MODEL_MAX_PACKAGE_BYTES)")
    with path.open("rb") as handle:
        kind = upload_kind(filename, handle.read(512))
    if kind == "package":
        raise BundleRefused("this is a package of `python -m nids.models.cli export`: import it with `import`")
    source = {"name": filename or path.name, "sha256": _digest(path, hashlib.sha256()), "format": kind}
    zipped = kind == "zip"
    raw = load_zip_package(path, signature, key, max_bytes) if zipped else load_bundle_file(path, signature, key)
    return import_bundle_object(raw, model_type, source, profile)


def parse_profile(text: bytes | str | None) -> dict[str, Any]:
    """The original's profile_config JSON (metadata: version, threshold, feature_names, metrics ...)."""
    if text is None or not text.strip():
        return {}
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise BundleRefused(f"profile_config must be a JSON object ({exc})") from exc
    if not isinstance(profile, dict):
        raise BundleRefused("profile_config must be a JSON object")
    return profile
