"""Prometheus metrics of the service, beyond BentoML's request metrics; all on /metrics.

`prometheus_client` decides at import time whether it writes to the multiprocess directory that
`bentoml serve` sets up for its workers; importing it at service-module import time (before the worker
sets PROMETHEUS_MULTIPROC_DIR) would make these metrics invisible. So the client is imported, and the
metrics created, on first use: in the worker, from the service's __init__.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from nids.core.features import ATTACK_CLASSES, ATTACK_MODEL_NAME, THREAT_MODEL_NAME

if TYPE_CHECKING:
    from nids.core.actions import HealingAction
    from nids.core.model import ActiveModels

BENIGN = ATTACK_CLASSES[0]


class ServiceMetrics:
    def __init__(self) -> None:
        import prometheus_client as prom  # deferred on purpose: see the module docstring

        self.predictions = prom.Counter(
            "nids_predictions",
            "Flows scored, by model, verdict (attack/benign) and predicted attack type",
            ["model", "verdict", "attack_type"],
        )
        self.actions = prom.Counter(
            "nids_healing_actions", "Self-healing actions decided, by action type and status", ["action_type", "status"]
        )
        self.unknown_categories = prom.Counter(
            "nids_unknown_categories",
            "Threat flows scored with a service/flag name the model does not know, by feature",
            ["feature"],
        )
        self.active_model = prom.Gauge(
            "nids_active_model",
            "1 for each model version being served",
            ["role", "name", "tag", "inference_form"],
            multiprocess_mode="livemax",
        )
        self.reference_checks = prom.Gauge(
            "nids_reference_checks_passed",
            "1 when every reference case of the served model passed at load time, else 0",
            ["role", "tag"],
            multiprocess_mode="livemax",
        )
        self.auth_refusals = prom.Counter(
            "nids_auth_refusals", "Requests refused by access control, by reason (no_token, forbidden)", ["reason"]
        )
        self.ready = prom.Gauge(
            "nids_models_ready", "1 when verified models are being served, else 0", multiprocess_mode="livemax"
        )

    def observe_models(self, models: ActiveModels | None) -> None:
        """Publish the served versions (at startup; a later version switch must also zero the old labels)."""
        self.ready.set(0 if models is None else 1)
        if models is None:
            return
        for role, model in models.by_role().items():
            self.active_model.labels(role, model.name, model.tag, model.inference_form).set(1)
            passed = all(case.passed for case in model.reference_results)
            self.reference_checks.labels(role, model.tag).set(1 if passed else 0)

    def switch_models(self, models: ActiveModels, previous: ActiveModels | None) -> None:
        """A version switch: zero the labels of versions no longer served (livemax keeps the last value of a
        label per process), then publish the new pair."""
        if previous is not None:
            served = {model.tag for model in models.by_role().values()}
            for role, model in previous.by_role().items():
                if model.tag not in served:
                    self.active_model.labels(role, model.name, model.tag, model.inference_form).set(0)
                    self.reference_checks.labels(role, model.tag).set(0)
        self.observe_models(models)

    def count_threats(self, is_attack: np.ndarray) -> None:
        attacks = int(np.count_nonzero(is_attack))
        self.predictions.labels(THREAT_MODEL_NAME, "attack", "").inc(attacks)
        self.predictions.labels(THREAT_MODEL_NAME, "benign", "").inc(len(is_attack) - attacks)

    def count_unknown_categories(self, feature: str, flows: int) -> None:
        self.unknown_categories.labels(feature).inc(flows)

    def count_attacks(self, codes: np.ndarray, class_names: Sequence[str]) -> None:
        counts = np.bincount(codes, minlength=len(class_names))
        for code in np.flatnonzero(counts):
            name = class_names[code]
            verdict = "benign" if name == BENIGN else "attack"
            self.predictions.labels(ATTACK_MODEL_NAME, verdict, name).inc(int(counts[code]))

    def count_actions(self, actions: Iterable[HealingAction]) -> None:
        for (action_type, status), n in Tally((action.action_type, action.status) for action in actions).items():
            self.actions.labels(action_type, status).inc(n)


@cache
def service_metrics() -> ServiceMetrics:
    """The process's metrics (created once: prometheus_client refuses duplicate registrations)."""
    return ServiceMetrics()
