"""What both training pipelines share: progress output, encoding, the ONNX parity check, saving with a
load-back check, and markdown helpers for the reports."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd

from nids.core.calibration import CalibrationMap
from nids.core.encoding import to_matrix
from nids.core.model import LoadedModel, ReferenceCase
from nids.models.artifacts import ModelLoadError, OnnxPredictor, load_model, save_model
from training.data import LABEL, Split, rows_of
from training.families import register_onnx_converters

# largest |P_onnx - P_sklearn| accepted before the ONNX form is stored
ONNX_PARITY_TOLERANCE = 1e-4
# reference cases: score tolerance, and the least distance from the decision boundary a chosen row must have
CASE_TOLERANCE = 1e-3
CASE_MARGIN = 0.05
PARITY_SAMPLE_ROWS = 2000
REPORTS_DIR = Path(__file__).resolve().parent.parent / "reports"


class Progress:
    """Timestamped progress lines on stderr: `[threat_detector   3.2s] fitting random_forest`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{self.name} {time.monotonic() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def encode(frame: pd.DataFrame, features: Sequence[str], encoders: Mapping[str, Sequence[str]]) -> np.ndarray:
    return to_matrix(rows_of(frame, features), features, encoders)


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(dtype=np.int64)


def jsonable_params(estimator: Any) -> dict[str, str | int | float | bool]:
    """get_params() as values the BentoML metadata accepts (None and objects as their repr)."""
    return {
        key: value if isinstance(value, str | int | float | bool) else repr(value)
        for key, value in estimator.get_params(deep=False).items()
    }


def to_onnx_bytes(estimator: Any, n_features: int) -> bytes:
    """ONNX form of a fitted scikit-learn classifier: float32 input, probabilities without zipmap."""
    from skl2onnx import to_onnx

    register_onnx_converters()
    sample = np.zeros((1, n_features), dtype=np.float32)
    # ai.onnx.ml 3: what onnxruntime's tree ensembles and skl2onnx's calibration converters share (LightGBM's
    # converter would otherwise ask for 5, which skl2onnx 1.20 refuses)
    return to_onnx(
        estimator, sample, options={id(estimator): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3}
    ).SerializeToString()


# largest |map(raw) - CalibratedClassifierCV.predict_proba| accepted: the table is sklearn's calibration itself
CALIBRATION_MAP_TOLERANCE = 1e-9


def raw_model(estimator: Any) -> Any:
    """The fitted model a calibrated wrapper (training.common.calibrate) holds; any other estimator itself."""
    return estimator.estimator if hasattr(estimator, "calibrated_classifiers_") else estimator


def calibration_map(estimator: Any, X_sample: np.ndarray) -> CalibrationMap | None:
    """The table form of a calibrated estimator's calibration (None: not calibrated), checked to give scikit-learn's
    own calibrated probabilities from the raw model's on `X_sample`; a disagreement is a bug and raises."""
    if estimator is raw_model(estimator):
        return None
    table = CalibrationMap.of_estimator(estimator)
    worst = float(
        np.max(np.abs(table(raw_model(estimator).predict_proba(X_sample)) - estimator.predict_proba(X_sample)))
    )
    if worst > CALIBRATION_MAP_TOLERANCE:
        raise ValueError(f"the calibration table differs from scikit-learn's calibration by {worst:.2e}")
    return table


def onnx_with_parity(
    estimator: Any, X_cases: np.ndarray, X_sample: np.ndarray, log: Callable[[str], None]
) -> tuple[bytes | None, dict[str, Any]]:
    """Convert the raw model to ONNX and compare its probabilities with scikit-learn's raw ones; the form is kept
    only within tolerance. A calibrated estimator's calibration is a table applied after the ONNX form (save_model
    stores it), checked here to be scikit-learn's calibration."""
    raw = raw_model(estimator)
    try:
        calibration = calibration_map(estimator, X_sample)
        blob = to_onnx_bytes(raw, X_cases.shape[1])
        predictor = OnnxPredictor(blob)
    except Exception as exc:  # skl2onnx/onnxruntime raise many types; any failure means "serve with sklearn"
        log(f"ONNX conversion failed, serving with scikit-learn: {exc.__class__.__name__}")
        return None, {"stored": False, "reason": f"conversion failed: {exc.__class__.__name__}"}

    def max_diff(X: np.ndarray) -> float:
        return float(np.max(np.abs(predictor(X) - raw.predict_proba(X)))) if len(X) else 0.0

    report: dict[str, Any] = {
        "tolerance": ONNX_PARITY_TOLERANCE,
        "compared": "raw probabilities" if calibration is not None else "probabilities",
        "max_abs_diff_reference_cases": max_diff(X_cases),
        "max_abs_diff_holdout_sample": max_diff(X_sample),
        "holdout_sample_rows": len(X_sample),
        "reference_case_rows": len(X_cases),
        "size_bytes": len(blob),
    }
    if calibration is not None:  # what the served (calibrated) numbers differ by; the reference cases bound it
        served = calibration.wrap(predictor)
        report["calibration"] = f"{calibration.method} table applied in numpy after the ONNX form"
        report["max_abs_diff_calibrated_holdout_sample"] = float(
            np.max(np.abs(served(X_sample) - estimator.predict_proba(X_sample))) if len(X_sample) else 0.0
        )
    worst = max(report["max_abs_diff_reference_cases"], report["max_abs_diff_holdout_sample"])
    report["stored"] = worst <= ONNX_PARITY_TOLERANCE
    verdict = "stored" if report["stored"] else "NOT stored"
    log(f"ONNX parity ({report['compared']}): max |diff| {worst:.2e} -> {verdict}")
    return (blob if report["stored"] else None), report


def parity_sample(X: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return X[rng.choice(len(X), size=min(PARITY_SAMPLE_ROWS, len(X)), replace=False)]


@dataclass(frozen=True)
class ExtraRows:
    """Labelled rows added to a training split only (analysts' verdicts, extra CSVs: training.retrain), so the
    held-out sets every version is compared on stay the committed ones. `lineage` goes into the metadata."""

    frame: pd.DataFrame  # the model's features and LABEL (and SOURCE for the attack classifier)
    lineage: dict[str, Any]

    def add_to(self, split: Split) -> Split:
        if not len(self.frame):
            return split
        return dataclasses.replace(split, train=pd.concat([split.train, self.frame], ignore_index=True))


def with_extra(split: Split, extra: ExtraRows | None) -> Split:
    return split if extra is None else extra.add_to(split)


def lineage_of(extra: ExtraRows | None) -> dict[str, Any]:
    """The metadata entry of a retrained version ({} for a version trained from the committed data alone)."""
    return {} if extra is None else {"lineage": extra.lineage}


def split_metadata(split: Split) -> dict[str, Any]:
    return {
        "rule": split.rule,
        "seed": split.seed,
        "train_rows": len(split.train),
        "validation_rows": len(split.validation),
        "duplicates_removed": split.duplicates_removed,
    }


def training_params(kept: str, baseline: str, selection_rule: str, estimator: Any, config: Any) -> dict[str, Any]:
    """The stored estimator's description: a calibrated wrapper is described by the model it wraps."""
    model = raw_model(estimator) if hasattr(estimator, "calibrated_classifiers_") else None
    return {
        "kept": kept,
        "baseline": baseline,
        "selection_rule": selection_rule,
        "estimator": type(model or estimator).__name__,
        "estimator_params": jsonable_params(model or estimator),
        "calibrated": f"{type(estimator).__name__}(method={estimator.method!r})" if model is not None else "no",
        "config": {key: str(value) for key, value in dataclasses.asdict(config).items()},
    }


def report_header(title: str, module: str, model: LoadedModel) -> str:
    return (
        f"# {title}\n\nGenerated by `python -m {module}` (model `{model.tag}`, git commit "
        f"`{model.metadata['git_commit']}`, {model.metadata['created_at']}).\n"
    )


def package(
    name: str,
    *,
    estimator: Any,
    metadata: dict[str, Any],
    reference_cases: Sequence[ReferenceCase],
    X_holdout: np.ndarray,
    seed: int,
    log: Callable[[str], None],
) -> LoadedModel:
    """ONNX form with its parity check, then save and load back in every stored form.

    A model that fails its own check is deleted again and the ModelLoadError propagates.
    """
    cases_X = to_matrix([case.features for case in reference_cases], metadata["feature_names"], metadata["encoders"])
    onnx_model, parity = onnx_with_parity(estimator, cases_X, parity_sample(X_holdout, seed), log)
    model = save_model(
        name,
        estimator=estimator,
        metadata={**metadata, "onnx_parity": parity},
        reference_cases=reference_cases,
        onnx_model=onnx_model,
    )
    try:
        loaded = load_model(str(model.tag), prefer_onnx=False)
        if onnx_model is not None:
            loaded = load_model(str(model.tag), prefer_onnx=True)
    except ModelLoadError:
        bentoml.models.delete(model.tag)
        raise
    log(f"saved {model.tag}: {len(reference_cases)} reference cases pass ({loaded.inference_form})")
    return loaded


def fmt(value: float) -> str:
    return f"{value:.4f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def parity_text(parity: dict[str, Any]) -> str:
    if "max_abs_diff_holdout_sample" not in parity:
        return f"no ONNX form ({parity.get('reason', 'not stored')}); served with scikit-learn"
    text = (
        f"largest |P_onnx - P_sklearn| of the {parity.get('compared', 'probabilities')} "
        f"{parity['max_abs_diff_reference_cases']:.2e} on the reference cases and "
        f"{parity['max_abs_diff_holdout_sample']:.2e} on {parity['holdout_sample_rows']} held-out rows "
        f"(tolerance {parity['tolerance']:.0e}); ONNX form {'stored' if parity['stored'] else 'NOT stored'}"
    )
    if "calibration" in parity:
        text += (
            f". The served probabilities are the {parity['calibration']}: they differ from scikit-learn's calibrated "
            f"ones by at most {parity['max_abs_diff_calibrated_holdout_sample']:.2e} on the same rows"
        )
    return text


def calibrate(estimator: Any, X: np.ndarray, y: np.ndarray, method: str) -> Any:
    """The fitted `estimator` with a calibrator (sklearn CalibratedClassifierCV, 'sigmoid' or 'isotonic') fitted on
    rows it was not trained on; one calibrator per class for a multiclass model, normalised.

    Every class must occur in (X, y). The stored wrapper holds the estimator itself, not sklearn's FrozenEstimator
    (which skl2onnx cannot convert); predictions are the same.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    missing = sorted(set(np.asarray(estimator.classes_).tolist()) - set(np.unique(y).tolist()))
    if missing:
        raise ValueError(f"the calibration rows lack classes {missing}")
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method=method).fit(X, y)
    calibrated.estimator = estimator
    for part in calibrated.calibrated_classifiers_:
        part.estimator = estimator
    return calibrated
