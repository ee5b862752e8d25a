"""Drift of served traffic against the training data: reference distributions and the population stability index.

Training records, per feature of the model's input matrix (categorical features as their codes), the bin edges
of the training rows' deciles and the share of rows in each bin (`reference_distribution`, stored in the model's
metadata under `drift_reference`). The service bins recent traffic on the same edges and compares the shares:
PSI = sum((actual - expected) * ln(actual / expected)), empty bins floored at EPSILON. Edges are the distinct
deciles, so a feature with few values (a flag, a rate that is mostly 0 or 1) gets one bin per value; bin i holds
edges[i-1] <= x < edges[i], with an open bin below the first edge and above the last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

METADATA_KEY = "drift_reference"  # where training stores the reference in the model metadata
BINS = 10
EPSILON = 1e-4
DriftStatus = Literal["ok", "watch", "drift"]


def reference_distribution(matrix: np.ndarray, feature_names: Sequence[str], bins: int = BINS) -> dict[str, Any]:
    """{"rows", "features": {name: {"edges", "proportions"}}} of the training matrix (JSON-serialisable)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    features = {}
    for j, name in enumerate(feature_names):
        column = matrix[:, j]
        column = column[np.isfinite(column)]
        edges = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1])) if column.size else np.empty(0)
        features[name] = {"edges": edges.tolist(), "proportions": proportions(column, edges).tolist()}
    return {"rows": int(matrix.shape[0]), "bins": bins, "features": features}


def proportions(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Share of values in each of the len(edges) + 1 bins."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    return counts / max(int(counts.sum()), 1)


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def status(value: float, watch: float, drift: float) -> DriftStatus:
    return "drift" if value >= drift else "watch" if value >= watch else "ok"


def feature_psi(reference: Mapping[str, Any], matrix: np.ndarray, feature_names: Sequence[str]) -> dict[str, float]:
    """PSI of each feature of `matrix` (rows of recent traffic, the model's input columns) against the reference."""
    matrix = np.asarray(matrix, dtype=np.float64)
    result = {}
    for j, name in enumerate(feature_names):
        ref = reference["features"].get(name)
        if ref is None:
            continue
        column = matrix[:, j]
        result[name] = psi(ref["proportions"], proportions(column[np.isfinite(column)], ref["edges"]))
    return result
