"""Calibrated probabilities from a model's raw ones: a small table applied in numpy after inference.

The served `confidence` (attack classifier) and P(attack) (threat detector) are the calibrated probabilities.
The model itself (ONNX form, checked for parity with scikit-learn on its *raw* probabilities) gives the raw
ones; this map turns them into calibrated ones exactly as scikit-learn's `CalibratedClassifierCV` (one fitted
model, `ensemble=False`-like single part) does, with nothing of scikit-learn at serving time:

- isotonic: per class, linear interpolation between the fitted knots (inputs outside them clipped to the ends);
- sigmoid (Platt): per class, 1 / (1 + exp(a * raw + b));
- binary models calibrate P(class 1) and answer P(class 0) = 1 - P(class 1); multiclass models calibrate each
  class one-vs-rest, then normalise each row to sum 1 (a row of zeros becomes uniform).

The table is a JSON file of the stored model (`calibration.json`), its sha256 recorded and checked at load like
every other file (nids.models.artifacts), and training checks it against scikit-learn's own calibrated
predictions before anything is saved (training.common.package).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

FORMAT = "nids-calibration/1"
METHODS = ("isotonic", "sigmoid")
# scikit-learn sets probabilities that exceed 1 by at most this much to exactly 1 (float rounding of the sum)
_OVERSHOOT = 1e-5
# isotonic maps of batches up to this size are computed in plain Python: for one flow, numpy's per-call overhead
# (an np.interp and a column write per class, the normalisation) costs several times the ONNX form's own time
_SMALL_BATCH = 32


def _interpolate(x: Sequence[float], y: Sequence[float], value: float) -> float:
    """np.interp(value, x, y) for one value, with numpy's own arithmetic (the same float64 operations)."""
    if not value > x[0]:  # below the first knot (or on it); NaN stays NaN as in numpy
        return y[0] if value == value else value
    if value >= x[-1]:
        return y[-1]
    i = bisect_right(x, value) - 1  # x[i] <= value < x[i + 1]
    if x[i] == value:
        return y[i]
    slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
    return slope * (value - x[i]) + y[i]


class CalibrationError(ValueError):
    """A calibration table that is malformed, or an estimator whose calibration has no table form."""


@dataclass(frozen=True)
class Calibrator:
    """One class's map of its raw probability: isotonic knots (x ascending, y) or sigmoid parameters (a, b)."""

    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 0.0
    b: float = 0.0


@dataclass(frozen=True)
class CalibrationMap:
    method: str
    n_classes: int
    calibrators: tuple[Calibrator, ...]  # binary: one (class 1); multiclass: one per class

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"calibration method {self.method!r}: one of {', '.join(METHODS)}")
        if self.n_classes < 2 or len(self.calibrators) != (1 if self.n_classes == 2 else self.n_classes):
            raise CalibrationError(f"{len(self.calibrators)} calibrators cannot calibrate {self.n_classes} classes")
        if self.method == "isotonic":
            for part in self.calibrators:
                x = np.asarray(part.x, dtype=np.float64)
                if not len(x) or len(x) != len(part.y) or np.any(np.diff(x) < 0) or not np.all(np.isfinite(x)):
                    raise CalibrationError("isotonic knots must be finite, ascending and as many x as y")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """(n, n_classes) raw probabilities -> (n, n_classes) calibrated probabilities (float64)."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != self.n_classes:
            raise CalibrationError(f"expected (n, {self.n_classes}) probabilities, got shape {raw.shape}")
        if self.method == "isotonic" and len(raw) <= _SMALL_BATCH:
            return self._few_rows(raw)
        proba = np.empty_like(raw)
        if self.n_classes == 2:
            proba[:, 1] = self._map(0, raw[:, 1])
            proba[:, 0] = 1.0 - proba[:, 1]
        else:
            for j in range(self.n_classes):
                proba[:, j] = self._map(j, raw[:, j])
            total = proba.sum(axis=1, keepdims=True)
            proba = np.divide(proba, total, out=np.full_like(proba, 1.0 / self.n_classes), where=total != 0)
        proba[(proba > 1.0) & (proba <= 1.0 + _OVERSHOOT)] = 1.0
        return proba

    def _few_rows(self, raw: np.ndarray) -> np.ndarray:
        """The isotonic map of a few rows in plain Python: the same operations, without numpy's per-call cost
        (the row sums may differ from numpy's in the last bit)."""
        rows = []
        for row in raw.tolist():
            if self.n_classes == 2:
                positive = _interpolate(self.calibrators[0].x, self.calibrators[0].y, row[1])
                values = [1.0 - positive, positive]
            else:
                values = [
                    _interpolate(part.x, part.y, value) for part, value in zip(self.calibrators, row, strict=True)
                ]
                total = sum(values)
                values = [value / total for value in values] if total != 0 else [1.0 / self.n_classes] * len(values)
            rows.append([1.0 if 1.0 < value <= 1.0 + _OVERSHOOT else value for value in values])
        return np.array(rows, dtype=np.float64).reshape(len(rows), self.n_classes)

    def _map(self, j: int, raw: np.ndarray) -> np.ndarray:
        if self.method == "isotonic":
            x, y = self._knots[j]
            return np.interp(raw, x, y)  # constant beyond the end knots: sklearn's out_of_bounds="clip"
        part = self.calibrators[j]
        return 1.0 / (1.0 + np.exp(part.a * raw + part.b))

    @cached_property
    def _knots(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The isotonic knots as arrays, converted once (the per-call conversion of tuples would dominate)."""
        return [
            (np.asarray(part.x, dtype=np.float64), np.asarray(part.y, dtype=np.float64)) for part in self.calibrators
        ]

    def wrap(self, predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """A predictor of calibrated probabilities from one of raw probabilities."""
        return lambda X: self(predict(X))

    def to_json(self) -> bytes:
        parts: list[dict[str, Any]] = [
            {"x": list(part.x), "y": list(part.y)} if self.method == "isotonic" else {"a": part.a, "b": part.b}
            for part in self.calibrators
        ]
        body = {"format": FORMAT, "method": self.method, "n_classes": self.n_classes, "calibrators": parts}
        return json.dumps(body, indent=None, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CalibrationMap:
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT:
                raise CalibrationError(f"not a calibration table of format {FORMAT!r}")
            parts = [
                Calibrator(x=tuple(map(float, p.get("x", ()))), y=tuple(map(float, p.get("y", ()))),
                           a=float(p.get("a", 0.0)), b=float(p.get("b", 0.0)))
                for p in body["calibrators"]
            ]  # fmt: skip
            return cls(method=str(body["method"]), n_classes=int(body["n_classes"]), calibrators=tuple(parts))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CalibrationError(f"unreadable calibration table ({exc.__class__.__name__}: {exc})") from exc

    @classmethod
    def of_estimator(cls, estimator: Any) -> CalibrationMap:
        """The table of a fitted scikit-learn `CalibratedClassifierCV` holding one calibrated model whose raw
        score is its predict_proba (a forest, LightGBM: no decision_function), sigmoid or isotonic."""
        parts: Sequence[Any] = getattr(estimator, "calibrated_classifiers_", ())
        if len(parts) != 1:
            raise CalibrationError(f"expected one calibrated model, found {len(parts)}")
        if hasattr(parts[0].estimator, "decision_function"):
            raise CalibrationError("the calibrated model's raw score is its decision_function, not a probability")
        method, n_classes = str(parts[0].method), len(estimator.classes_)
        calibrators = []
        for fitted in parts[0].calibrators:
            if method == "isotonic":
                x, y = fitted.X_thresholds_, fitted.y_thresholds_
                calibrators.append(Calibrator(x=tuple(map(float, x)), y=tuple(map(float, y))))
            elif method == "sigmoid":
                calibrators.append(Calibrator(a=float(fitted.a_), b=float(fitted.b_)))
            else:
                raise CalibrationError(f"calibration method {method!r}: one of {', '.join(METHODS)}")
        return cls(method=method, n_classes=n_classes, calibrators=tuple(calibrators))
