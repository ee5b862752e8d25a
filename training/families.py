"""The model families both detectors choose from, built from a name and a few hyper-parameters.

Every family here converts to ONNX (skl2onnx; LightGBM through onnxmltools' converter) except
HistGradientBoosting, which skl2onnx 1.20 cannot convert for scikit-learn 1.9: it stays in the comparison
tables (scikit-learn form) but a model of that family would be served without its ONNX hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

RANDOM_FOREST = "random_forest"
EXTRA_TREES = "extra_trees"
HIST_GRADIENT_BOOSTING = "hist_gradient_boosting"
LIGHTGBM = "lightgbm"
DECISION_TREE = "decision_tree"
FAMILIES = (RANDOM_FOREST, EXTRA_TREES, HIST_GRADIENT_BOOSTING, LIGHTGBM, DECISION_TREE)
WITHOUT_ONNX = frozenset({HIST_GRADIENT_BOOSTING})
# gradient boosting: rounds and learning rate of both boosting families (trees a round: one per class)
BOOSTING_ROUNDS = 200
BOOSTING_LEARNING_RATE = 0.1


@dataclass(frozen=True)
class Candidate:
    """One point of a comparison: a family, its class weighting and its size."""

    family: str
    class_weight: str | None = None  # None or "balanced"
    n_estimators: int = 100
    max_depth: int | None = None
    min_samples_leaf: int = 1

    @property
    def name(self) -> str:
        parts = [self.family]
        if self.class_weight:
            parts.append(self.class_weight)
        if self.family in (RANDOM_FOREST, EXTRA_TREES):
            parts.append(f"depth{self.max_depth if self.max_depth is not None else 'None'}")
        if self.min_samples_leaf != 1:
            parts.append(f"leaf{self.min_samples_leaf}")
        return "_".join(parts)


def build(candidate: Candidate, *, seed: int, n_jobs: int) -> Any:
    """An unfitted estimator for `candidate` (n_jobs for training; the stored model predicts with n_jobs=1)."""
    family, weight = candidate.family, candidate.class_weight
    if family in (RANDOM_FOREST, EXTRA_TREES):
        forest = RandomForestClassifier if family == RANDOM_FOREST else ExtraTreesClassifier
        # a random forest's bootstrap samples are re-weighted per tree; extra trees see every row
        balanced = "balanced_subsample" if family == RANDOM_FOREST else "balanced"
        return forest(
            n_estimators=candidate.n_estimators,
            max_depth=candidate.max_depth,
            min_samples_leaf=candidate.min_samples_leaf,
            class_weight=balanced if weight == "balanced" else None,
            random_state=seed,
            n_jobs=n_jobs,
        )
    if family == HIST_GRADIENT_BOOSTING:
        return HistGradientBoostingClassifier(
            max_iter=BOOSTING_ROUNDS,
            learning_rate=BOOSTING_LEARNING_RATE,
            class_weight=weight,
            early_stopping=False,
            random_state=seed,
        )
    if family == LIGHTGBM:
        from lightgbm import LGBMClassifier

        return LGBMClassifier(
            n_estimators=BOOSTING_ROUNDS,
            learning_rate=BOOSTING_LEARNING_RATE,
            num_leaves=31,
            min_child_samples=5,
            class_weight=weight,
            random_state=seed,
            n_jobs=n_jobs,
            verbose=-1,
        )
    if family == DECISION_TREE:
        return DecisionTreeClassifier(class_weight=weight, random_state=seed)
    raise ValueError(f"unknown model family {family!r}: one of {', '.join(FAMILIES)}")


def register_onnx_converters() -> None:
    """Teach skl2onnx the LightGBM classifier (onnxmltools' converter), so calibrated wrappers of it convert."""
    try:
        from lightgbm import LGBMClassifier
    except ImportError:
        return
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
