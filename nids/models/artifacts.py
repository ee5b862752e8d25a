"""Models in the BentoML store as self-describing, self-testing packages.

`save_model` writes the fitted estimator (joblib), an optional ONNX form (of the raw model, with the calibration
table applied after it when the estimator is calibrated: nids.core.calibration) and the reference cases into a new
store entry, with the sha256 of every file and everything a server needs in the metadata. `load_model`
resolves a tag, verifies every recorded hash and the metadata, builds the predictor (ONNX Runtime when stored
and preferred, scikit-learn otherwise) and runs the reference cases; any failure raises a `ModelLoadError`,
so a broken model is never served.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import bentoml
import joblib
import numpy as np
from bentoml.exceptions import BentoMLException, NotFound

from nids.core.calibration import CalibrationMap
from nids.core.errors import NIDSError
from nids.core.model import CaseResult, LoadedModel, ReferenceCase, run_reference_cases
from nids.models.explain import LazyExplainer

ESTIMATOR_FILE = "estimator.joblib"
ONNX_FILE = "model.onnx"
CASES_FILE = "reference_cases.json"
# the calibration table applied after the ONNX form's raw probabilities (nids.core.calibration); the
# scikit-learn form (a CalibratedClassifierCV) calibrates itself
CALIBRATION_FILE = "calibration.json"
ONNX_PROBABILITIES = "probabilities"
# keys a server relies on; save_model adds the ones marked (auto)
REQUIRED_METADATA: tuple[str, ...] = (
    "feature_names",
    "class_names",
    "encoders",
    "metrics",
    "input_files",
    "training_params",
    "files",  # (auto) file name -> sha256
    "library_versions",  # (auto)
    "git_commit",  # (auto)
    "created_at",  # (auto)
    "reference_case_count",  # (auto)
)
_LIBRARIES = ("bentoml", "scikit-learn", "numpy", "pandas", "joblib", "onnx", "onnxruntime", "skl2onnx")
_REPO_DIR = Path(__file__).resolve().parent.parent


class ModelLoadError(NIDSError):
    """A model cannot be served; str(error) is a one-line human reason (422 when asked to serve it)."""

    status_code = HTTPStatus.UNPROCESSABLE_ENTITY


class ModelIntegrityError(ModelLoadError):
    """A model file is missing or altered, or the metadata is incomplete."""


class ReferenceCaseError(ModelLoadError):
    """At least one reference case gave a different class or a score outside its tolerance."""

    def __init__(self, message: str, results: Sequence[CaseResult]) -> None:
        super().__init__(message)
        self.results: tuple[CaseResult, ...] = tuple(results)


@dataclass(frozen=True)
class FileCheck:
    name: str
    expected_sha256: str
    actual_sha256: str | None  # None: file missing

    @property
    def passed(self) -> bool:
        return self.expected_sha256 == self.actual_sha256


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO_DIR, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class OnnxPredictor:
    """predict_proba over an ONNX Runtime session (single-threaded; InferenceSession.run is thread-safe)."""

    def __init__(self, onnx_model: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, X: np.ndarray) -> np.ndarray:
        (proba,) = self._session.run([ONNX_PROBABILITIES], {self._input: np.ascontiguousarray(X, dtype=np.float32)})
        return np.asarray(proba, dtype=np.float64)


def single_threaded(estimator: Any) -> Any:
    """Predict with n_jobs=1: a forest with n_jobs=-1 costs ~20 ms a call when served."""
    if hasattr(estimator, "get_params") and "n_jobs" in estimator.get_params(deep=False):
        estimator.set_params(n_jobs=1)
    return estimator


def save_model(
    name: str,
    *,
    estimator: Any,
    metadata: dict[str, Any],
    reference_cases: Sequence[ReferenceCase],
    onnx_model: bytes | None,
) -> bentoml.Model:
    """Write a new version of `name` into the BentoML store; returns the stored model.

    `onnx_model` is the form of the raw model: of a calibrated estimator (sklearn's CalibratedClassifierCV), the
    model it calibrates; its calibration is then stored beside it as a table (CALIBRATION_FILE), so the ONNX form
    serves the table's map of its raw probabilities, as the estimator does.
    """
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer, compress=3)
    blobs = {
        ESTIMATOR_FILE: buffer.getvalue(),
        CASES_FILE: json.dumps([asdict(case) for case in reference_cases], indent=1, ensure_ascii=False).encode(),
    }
    if onnx_model is not None:
        blobs[ONNX_FILE] = onnx_model
        if hasattr(estimator, "calibrated_classifiers_"):
            blobs[CALIBRATION_FILE] = CalibrationMap.of_estimator(estimator).to_json()
    full = {
        **{key: value for key, value in metadata.items() if value is not None},
        "files": {file: sha256_bytes(blob) for file, blob in blobs.items()},
        "library_versions": library_versions(),
        "git_commit": git_commit(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reference_case_count": len(reference_cases),
        "inference_forms": ["onnx", "sklearn"] if onnx_model is not None else ["sklearn"],
    }
    missing = [key for key in REQUIRED_METADATA if key not in full]
    if missing:
        raise ValueError(f"metadata lacks {', '.join(missing)}")
    with bentoml.models.create(
        name, module="nids.models.artifacts", labels={"framework": "scikit-learn"}, metadata=full
    ) as model:
        for file, blob in blobs.items():
            Path(model.path_of(file)).write_bytes(blob)
    return model


def get_store_model(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except NotFound as exc:
        raise ModelLoadError(f"model {tag!r} is not in the BentoML store") from exc
    except (BentoMLException, ValueError) as exc:
        raise ModelLoadError(f"cannot resolve model {tag!r}: {exc}") from exc


def latest_version(name: str) -> str | None:
    """The version `name:latest` resolves to in the store (None: the store holds no `name`)."""
    try:
        return str(bentoml.models.get(f"{name}:latest").tag.version)
    except NotFound:
        return None


def point_latest(tag: str) -> None:
    """Make `name:latest` resolve to `tag` (what a process with fresh lifecycle state starts serving).

    BentoML 1.4 keeps the pointer as the file `<model store>/<name>/latest` holding the version, in the store the
    model is in: served from a Bento (the container) that is the Bento's own `models/`, not BENTOML_HOME's. The
    result is read back through the public API, and a store laid out otherwise raises instead of serving something
    else. Nothing is written when `name:latest` is already `tag` (a Bento's store may be read-only)."""
    model = bentoml.models.get(tag)
    name, version = model.tag.name, str(model.tag.version)
    if latest_version(name) == version:
        return
    (Path(model.path).parent / "latest").write_text(version)
    if latest_version(name) != version:
        raise RuntimeError(f"cannot point {name}:latest at {tag}: this BentoML store keeps the pointer elsewhere")


@contextmanager
def latest_kept(name: str) -> Iterator[None]:
    """Save or delete versions of `name` inside: `name:latest` stays where it was, whatever BentoML does with it
    (an upload or import never decides what a process starting with fresh state serves; an activation does)."""
    before = latest_version(name)
    try:
        yield
    finally:
        if before is not None:
            point_latest(f"{name}:{before}")


def verify_files(model: bentoml.Model) -> tuple[FileCheck, ...]:
    """sha256 of every file recorded at save against the file now in the store."""
    files = model.info.metadata.get("files")
    if not isinstance(files, dict) or ESTIMATOR_FILE not in files or CASES_FILE not in files:
        raise ModelIntegrityError(f"model {model.tag}: metadata does not record the sha256 of its files")
    checks = []
    for file, expected in files.items():
        path = Path(model.path_of(file))
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        checks.append(FileCheck(name=file, expected_sha256=str(expected), actual_sha256=actual))
    return tuple(checks)


def _verify(model: bentoml.Model) -> None:
    metadata = model.info.metadata
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelIntegrityError(f"model {model.tag}: metadata lacks {', '.join(missing)}")
    for check in verify_files(model):
        if check.actual_sha256 is None:
            raise ModelIntegrityError(f"model {model.tag}: file {check.name} is missing")
        if not check.passed:
            raise ModelIntegrityError(f"model {model.tag}: file {check.name} does not match its recorded sha256")


def load_reference_cases(model: bentoml.Model) -> tuple[ReferenceCase, ...]:
    try:
        raw = json.loads(Path(model.path_of(CASES_FILE)).read_text(encoding="utf-8"))
        return tuple(ReferenceCase(**case) for case in raw)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelIntegrityError(f"model {model.tag}: unreadable reference cases ({exc})") from exc


def _estimator(loaded: Any, path: Path, sha256: str) -> Any:
    """The fitted estimator: the one already loaded, or the file unpickled once its sha256 matches again."""
    if loaded is not None:
        return loaded
    data = path.read_bytes()
    if sha256_bytes(data) != sha256:
        raise ModelIntegrityError(f"{path}: the estimator file no longer matches its recorded sha256")
    return joblib.load(io.BytesIO(data))


def load_model(tag: str, *, prefer_onnx: bool = True) -> LoadedModel:
    """Resolve `tag`, verify hashes and metadata, build the predictor and run the reference cases."""
    model = get_store_model(tag)
    _verify(model)
    metadata = dict(model.info.metadata)
    cases = load_reference_cases(model)
    if not cases:
        raise ModelIntegrityError(f"model {model.tag}: stores no reference cases")
    form = "onnx" if prefer_onnx and ONNX_FILE in metadata["files"] else "sklearn"
    estimator_file = Path(model.path_of(ESTIMATOR_FILE))
    try:
        if form == "onnx":
            predict: Callable[[np.ndarray], np.ndarray] = OnnxPredictor(Path(model.path_of(ONNX_FILE)).read_bytes())
            if CALIBRATION_FILE in metadata["files"]:  # its sha256 checked by _verify above
                predict = CalibrationMap.from_json(Path(model.path_of(CALIBRATION_FILE)).read_bytes()).wrap(predict)
            estimator = None  # loaded by the explainer when an explanation is first asked for
        else:
            estimator = single_threaded(joblib.load(estimator_file))
            predict = estimator.predict_proba
    except Exception as exc:  # any unpickling/ONNX failure means the model cannot be served
        raise ModelIntegrityError(
            f"model {model.tag}: cannot build its {form} predictor ({exc.__class__.__name__}: {exc})"
        ) from exc
    feature_names = tuple(metadata["feature_names"])
    encoders = {key: list(values) for key, values in metadata["encoders"].items()}
    threshold = float(metadata["threshold"]) if "threshold" in metadata else None
    results = run_reference_cases(predict, cases, feature_names, encoders, threshold)
    failed = [result for result in results if not result.passed]
    if failed:
        raise ReferenceCaseError(
            f"model {model.tag}: {len(failed)} of {len(results)} reference cases failed "
            f"(first: {failed[0].description!r})",
            results,
        )
    return LoadedModel(
        tag=str(model.tag),
        name=model.tag.name,
        metadata=metadata,
        feature_names=feature_names,
        class_names=tuple(metadata["class_names"]),
        encoders=encoders,
        threshold=threshold,
        inference_form=form,
        reference_results=results,
        _predict=predict,
        _explain=LazyExplainer(partial(_estimator, estimator, estimator_file, metadata["files"][ESTIMATOR_FILE])),
    )
