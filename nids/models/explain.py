"""Why a forest scored a flow as it did: exact path contributions (issue 21).

For a random forest, P(class | x) is the mean over trees of the class fraction at the leaf x reaches. Along the
path from a tree's root to that leaf, each split moves the fraction from the parent's value to the child's; that
move is credited to the feature the parent splits on. Summed over the path it telescopes to leaf - root, so per
flow and class

    base value (mean root fraction over the trees) + sum of the feature contributions == predict_proba

exactly, up to float64 rounding (tests/models/test_explain.py checks 1e-9 on both served models). This is the
"Saabas" decomposition (treeinterpreter), not TreeSHAP: both are exact in that sense, but path contributions are
computed in one sparse matrix product over `decision_path` (tens of microseconds per flow, no new dependency),
whereas the `shap` package adds numba and llvmlite to the served image for its TreeExplainer. The known weakness:
a feature split on near the root takes credit a Shapley value would share with features deeper in the tree
(docs/api.md, "Explanations").

The explained model is the scikit-learn estimator of the stored version, loaded on first use and checked against
its recorded sha256 again; the served ONNX form agrees with it within ONNX parity (~1e-6, recorded at training).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse

from nids.core.model import Contributions


class PathExplainer:
    """Path contributions of a fitted scikit-learn forest (or single tree), for any class per flow."""

    def __init__(self, estimator: Any) -> None:
        trees = getattr(estimator, "estimators_", None) or [estimator]
        structures = [tree.tree_ for tree in trees]
        n_features = int(estimator.n_features_in_)
        deltas, parents_feature, roots = [], [], []
        for structure in structures:
            value = structure.value[:, 0, :].astype(np.float64)
            value = value / value.sum(axis=1, keepdims=True)  # class fractions (older releases store counts)
            parent = np.full(structure.node_count, -1)
            for side in (structure.children_left, structure.children_right):
                inner = np.flatnonzero(side >= 0)
                parent[side[inner]] = inner
            delta = np.zeros_like(value)
            has_parent = parent >= 0
            delta[has_parent] = value[has_parent] - value[parent[has_parent]]
            deltas.append(delta / len(structures))
            parents_feature.append(np.where(has_parent, structure.feature[np.maximum(parent, 0)], 0))
            roots.append(value[0])
        self.n_features = n_features
        self._estimator = estimator
        self._delta = np.concatenate(deltas)  # (all nodes, classes): the move into each node, averaged over trees
        feature = np.concatenate(parents_feature)
        nodes = len(feature)
        # node -> the feature its parent splits on (roots map to column 0 with a zero delta)
        self._credit = sparse.csr_matrix((np.ones(nodes), (np.arange(nodes), feature)), shape=(nodes, n_features))
        self.base = np.mean(roots, axis=0)  # (classes,)

    def __call__(self, X: np.ndarray, classes: np.ndarray) -> Contributions:
        """Per flow (row of float32 X), the contribution of every feature to P(classes[i]) and the base value."""
        X = np.asarray(X, dtype=np.float32)
        classes = np.asarray(classes, dtype=np.int64)
        if len(X) == 0:
            return Contributions(np.empty((0, self.n_features)), np.empty(0))
        if hasattr(self._estimator, "estimators_"):
            paths, _ = self._estimator.decision_path(X)
        else:
            paths = self._estimator.decision_path(X)
        paths = sparse.csr_matrix(paths, dtype=np.float64)
        rows = np.repeat(np.arange(len(X)), np.diff(paths.indptr))
        paths.data = self._delta[paths.indices, classes[rows]]
        contributions = np.asarray((paths @ self._credit).todense())
        return Contributions(contributions, self.base[classes])


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
