"""Drift of the served traffic, per model: PSI of the newest predictions in the log against the training data.

The window is read from the shared log, so every worker and replica reports the same drift. A model trained
before reference distributions were recorded reports `no_reference`; fewer rows than `min_rows` in the window
report `insufficient_data` (a PSI over a handful of flows says nothing).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nids.core import drift
from nids.core.encoding import to_matrix
from nids.core.model import ActiveModels, LoadedModel
from nids.observability.schemas import DriftReport, FeatureDrift, ModelDrift
from nids.observability.store import PredictionStore


class DriftMonitor:
    def __init__(self, store: PredictionStore, *, window: int, min_rows: int, watch: float, alert: float) -> None:
        if not 0 < watch < alert:
            raise ValueError(f"drift cut-offs must satisfy 0 < watch ({watch}) < drift ({alert})")
        self.store = store
        self.window = window
        self.min_rows = min_rows
        self.watch = watch
        self.alert = alert

    def report(self, models: ActiveModels) -> DriftReport:
        return DriftReport(
            window_size=self.window,
            thresholds={"watch": self.watch, "drift": self.alert},
            computed_at=datetime.fromtimestamp(time.time(), UTC),
            models=[self.model_drift(role, model) for role, model in models.by_role().items()],
        )

    def model_drift(self, role: str, model: LoadedModel) -> ModelDrift:
        reference = model.metadata.get(drift.METADATA_KEY)
        base = {"role": role, "model_version": model.tag}
        if not reference:
            return ModelDrift(
                **base,
                status="no_reference",
                reason="the model was trained without a reference distribution (retrain it to monitor drift)",
                window_rows=0,
                reference_rows=None,
                overall_psi=None,
                features=[],
            )
        matrix = _matrix(self.store.recent_features(role, self.window), model)
        base |= {"window_rows": len(matrix), "reference_rows": reference.get("rows")}
        if len(matrix) < self.min_rows:
            reason = f"{len(matrix)} recent predictions; drift is judged from {self.min_rows}"
            return ModelDrift(**base, status="insufficient_data", reason=reason, overall_psi=None, features=[])
        values = drift.feature_psi(reference, matrix, model.feature_names)
        features = [
            FeatureDrift(feature=name, psi=v, status=drift.status(v, self.watch, self.alert))
            for name, v in sorted(values.items(), key=lambda item: -item[1])
        ]
        overall = float(np.mean(list(values.values()))) if values else 0.0
        return ModelDrift(
            **base, status=drift.status(overall, self.watch, self.alert), overall_psi=overall, features=features
        )


def _matrix(rows: Sequence[Mapping[str, Any]], model: LoadedModel) -> np.ndarray:
    """The model's input matrix of logged flows; a row the model cannot encode (a category code past its list,
    logged under another version) is left out."""
    try:
        return to_matrix(rows, model.feature_names, model.encoders)
    except (KeyError, ValueError):
        kept = []
        for row in rows:
            try:
                kept.append(to_matrix([row], model.feature_names, model.encoders))
            except (KeyError, ValueError):
                continue
        return np.vstack(kept) if kept else np.empty((0, len(model.feature_names)), dtype=np.float32)
