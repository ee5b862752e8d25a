"""Why a forest scored a flow as it did: exact path contributions (issue 21).

For a random forest, P(class | x) is the mean over trees of the class fraction at the leaf x reaches. Along the
path from a tree's root to that leaf, each split moves the fraction from the parent's value to the child's; that
move is credited to the feature the parent splits on. Summed over the path it telescopes to leaf - root, so per
flow and class

    base value (mean root fraction over the trees) + sum of the feature contributions == predict_proba

exactly, up to float64 rounding (tests/models/test_explain.py checks 1e-6 on both served models). This is the
"Saabas" decomposition (treeinterpreter), not TreeSHAP: both add up exactly, but path contributions need no new
dependency and are computed for every tree and flow at once (a walk from the leaves `apply` gives up to the
roots), whereas the `shap` package brings numba and llvmlite into the served image for its TreeExplainer. The
known weakness: a feature split on near the root takes credit a Shapley value would share with features deeper
in the tree (docs/analyst.md, "Explanations").

The explained model is the scikit-learn estimator of the stored version, loaded on first use and checked against
its recorded sha256 again; the served ONNX form agrees with it within ONNX parity (~1e-7, recorded at training).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from nids.core.calibration import CalibrationError, CalibrationMap
from nids.core.errors import Unavailable
from nids.core.model import Contributions


class PathExplainer:
    """Path contributions of a fitted scikit-learn forest (or single tree), for any class per flow.

    Each tree's `apply` gives the leaf a flow reaches; the walk from all leaves up to their roots, one level per
    step for every tree and flow at once, credits each node's change of class fraction to its parent's feature."""

    def __init__(self, estimator: Any) -> None:
        self._served = estimator
        self._calibration = Calibration(estimator) if hasattr(estimator, "calibrated_classifiers_") else None
        forest = estimator.estimator if self._calibration is not None else estimator
        self._forest = forest
        trees = _trees(forest)
        self._structures = [tree.tree_ for tree in trees]
        self.n_features = int(forest.n_features_in_)
        deltas, parents, features, roots, offsets = [], [], [], [], [0]
        for structure in self._structures:
            value = structure.value[:, 0, :].astype(np.float64)
            value = value / value.sum(axis=1, keepdims=True)  # class fractions (older releases store counts)
            parent = np.full(structure.node_count, -1)
            for side in (structure.children_left, structure.children_right):
                inner = np.flatnonzero(side >= 0)
                parent[side[inner]] = inner
            delta = np.zeros_like(value)
            has_parent = parent >= 0
            delta[has_parent] = value[has_parent] - value[parent[has_parent]]
            deltas.append(delta / len(self._structures))
            features.append(np.where(has_parent, structure.feature[np.maximum(parent, 0)], 0))
            parents.append(np.where(has_parent, parent + offsets[-1], -1))
            roots.append(value[0])
            offsets.append(offsets[-1] + structure.node_count)
        self._delta = np.concatenate(deltas)  # (all nodes, classes): the move into each node, averaged over trees
        self._feature = np.concatenate(features)  # node -> the feature its parent splits on (roots: 0)
        self._parent = np.concatenate(parents)  # node -> its parent, in the forest's numbering (roots: -1)
        self._offsets = offsets[:-1]
        self.base = np.mean(roots, axis=0)  # (classes,)

    def __call__(self, X: np.ndarray, classes: np.ndarray) -> Contributions:
        """Per flow (row of float32 X), the contribution of every feature to P(classes[i]) and the base value."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        classes = np.asarray(classes, dtype=np.int64)
        n, width = len(X), self.n_features
        totals = np.zeros(n * width)
        if n:
            nodes = np.concatenate(
                [s.apply(X) + offset for s, offset in zip(self._structures, self._offsets, strict=True)]
            )
            row = np.tile(np.arange(n), len(self._structures))
            while len(nodes):
                cells = row * width + self._feature[nodes]
                totals += np.bincount(cells, weights=self._delta[nodes, classes[row]], minlength=n * width)
                nodes = self._parent[nodes]
                climbing = self._parent[nodes] >= 0  # the root's own delta is 0: stop there
                nodes, row = nodes[climbing], row[climbing]
        values = totals.reshape(n, width)
        if self._calibration is None or not n:
            return Contributions(values, self.base[classes])
        return self._calibration.rescale(X, classes, values, self.base, self._served, self._forest)


class Calibration:
    """A calibrated forest (sklearn's CalibratedClassifierCV, sigmoid or isotonic, as training.common.calibrate
    stores it): the forest's path contributions are exact for its raw probability f of the explained class; the
    served probability p is the calibration table's map of the raw probabilities (nids.core.calibration). Each
    contribution is scaled by the secant (p - b) / (f - f0), b the table's map of the forest's base value f0, so
    that b + contributions == p exactly, in the calibrated space and keeping every contribution's sign and rank
    (where f == f0, the difference p - b is shared equally). The map is checked against the estimator's own
    predict_proba on the first flows explained: any disagreement (another sklearn's calibration) makes the
    explanation unavailable, never wrong."""

    TOLERANCE = 1e-9

    def __init__(self, estimator: Any) -> None:
        try:
            self.calibrated = CalibrationMap.of_estimator(estimator)  # raw (n, classes) -> served probabilities
        except CalibrationError as exc:
            raise Unavailable(f"explanations support one sigmoid or isotonic calibration only: {exc}") from exc
        self._checked = False

    def rescale(
        self, X: np.ndarray, classes: np.ndarray, values: np.ndarray, raw_base: np.ndarray, served: Any, forest: Any
    ) -> Contributions:
        """`values`: the forest's contributions to its raw probability of `classes`; `raw_base`: its base vector."""
        rows = np.arange(len(classes))
        p = np.asarray(served.predict_proba(X), dtype=np.float64)
        if not self._checked:
            raw = np.asarray(forest.predict_proba(X), dtype=np.float64)
            if np.abs(self.calibrated(raw) - p).max() > self.TOLERANCE:
                raise Unavailable("this model's calibration cannot be explained exactly (unexpected calibrator)")
            self._checked = True
        b = self.calibrated(raw_base[None, :])[0][classes]
        gap, raw_gap = p[rows, classes] - b, values.sum(axis=1)
        flat = np.abs(raw_gap) <= 1e-12
        slope = np.divide(gap, raw_gap, out=np.zeros_like(gap), where=~flat)
        scaled = values * slope[:, None]
        scaled[flat] = gap[flat, None] / values.shape[1]
        return Contributions(scaled, b)


def _trees(forest: Any) -> list[Any]:
    return getattr(forest, "estimators_", None) or [forest]


class LazyExplainer:
    """A stored version's PathExplainer, built on first use: explanations cost nothing until one is asked for.

    `load` returns the fitted estimator (nids.models.artifacts checks its sha256 again before unpickling it)."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._explainer: PathExplainer | None = None

    def __call__(self, X: np.ndarray, classes: np.ndarray) -> Contributions:
        with self._lock:
            if self._explainer is None:
                self._explainer = PathExplainer(self._load())
        return self._explainer(X, classes)
