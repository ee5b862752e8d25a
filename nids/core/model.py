"""What a served model is, independent of where it is stored: features, classes, a predictor, and its checks.

nids.models builds a `LoadedModel` from the BentoML store; the pipeline only needs this interface, so it runs
the same in the service, the stream worker and a script.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nids.core.encoding import to_matrix
from nids.core.errors import Unavailable


@dataclass(frozen=True)
class ReferenceCase:
    """A real held-out row with the output the model gave it at training time.

    Threat detector: expected_score = P(attack), expected_class = int(score >= threshold).
    Attack classifier: expected_class = the predicted class, expected_score = P(expected_class).
    """

    description: str
    features: dict[str, float | int | str]
    expected_class: int
    expected_score: float
    tolerance: float


@dataclass(frozen=True)
class CaseResult:
    description: str
    expected_class: int
    got_class: int
    expected_score: float
    got_score: float
    tolerance: float
    passed: bool


def class_and_score(proba: np.ndarray, expected_class: int, threshold: float | None) -> tuple[int, float]:
    """The class and score a reference case is judged by, from one row of probabilities."""
    if threshold is not None:
        score = float(proba[1])
        return int(score >= threshold), score
    return int(np.argmax(proba)), float(proba[expected_class])


def run_reference_cases(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    cases: Sequence[ReferenceCase],
    feature_names: Sequence[str],
    encoders: Mapping[str, Sequence[str]],
    threshold: float | None,
) -> tuple[CaseResult, ...]:
    if not cases:
        return ()
    proba = predict_proba(to_matrix([case.features for case in cases], feature_names, encoders))
    results = []
    for case, row in zip(cases, proba, strict=True):
        got_class, got_score = class_and_score(row, case.expected_class, threshold)
        passed = got_class == case.expected_class and abs(got_score - case.expected_score) <= case.tolerance
        results.append(
            CaseResult(
                description=case.description,
                expected_class=case.expected_class,
                got_class=got_class,
                expected_score=case.expected_score,
                got_score=got_score,
                tolerance=case.tolerance,
                passed=passed,
            )
        )
    return tuple(results)


@dataclass(frozen=True)
class Contributions:
    """Why a model scored flows as it did: per flow, each feature's contribution to the explained class's
    probability (model feature order) and the base value; base + contributions.sum(axis=1) == the probability."""

    values: np.ndarray  # (n, n_features)
    base: np.ndarray  # (n,)


Explainer = Callable[[np.ndarray, np.ndarray], Contributions]  # (float32 X, class code per row) -> contributions


@dataclass(frozen=True)
class LoadedModel:
    tag: str
    name: str
    metadata: dict[str, Any]
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    encoders: dict[str, list[str]]
    threshold: float | None
    inference_form: str
    reference_results: tuple[CaseResult, ...]
    _predict: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)
    _explain: Explainer | None = field(default=None, repr=False, compare=False)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """float32 (n, n_features) -> (n, n_classes) probabilities."""
        return self._predict(np.asarray(X, dtype=np.float32))

    def explain(self, X: np.ndarray, classes: np.ndarray) -> Contributions:
        """Contributions of each feature of float32 X to P(classes[i]) per row (nids.models.explain)."""
        if self._explain is None:
            raise Unavailable(f"model {self.tag} cannot explain its predictions (no tree estimator stored)")
        return self._explain(np.asarray(X, dtype=np.float32), classes)


@dataclass(frozen=True)
class ActiveModels:
    """The (threat, attack) pair one request is served with."""

    threat: LoadedModel
    attack: LoadedModel

    def by_role(self) -> dict[str, LoadedModel]:
        return {"threat": self.threat, "attack": self.attack}
