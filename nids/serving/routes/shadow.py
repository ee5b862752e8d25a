"""Shadow A/B of a challenger (nids.models.shadow), part of the lifecycle app at /api/v1/models:

- `POST /api/v1/models/{model_id}/shadow?share=0.2` (admin): the version scores that share of live flows of its
  type in the shadow of the active version, off the request path, never acting on them.
- `GET /api/v1/models/shadow/report?model_type=...`: the latest run compared with the active version: agreement,
  confusion between the two, score distributions, the latest disagreements, both versions' accuracy on the flows
  analysts labelled.
- `POST /api/v1/models/shadow/stop?model_type=...` (admin), `POST /api/v1/models/shadow/promote?model_type=...`
  (admin: activation through the lifecycle's gate, `force` and `reason` as for activate; then the run ends).

Counted on /metrics: `nids_shadow_flows_total{model_type, outcome=agreed|disagreed|shed}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Query, Request

from nids.core.columns import FlowBatch
from nids.core.errors import Unavailable
from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
from nids.core.model import ActiveModels
from nids.core.schemas import AnalyzeFlow, AnalyzeResponse, ThreatFlow
from nids.models.lifecycle import ModelEntry, parse_model_type
from nids.models.shadow import Offered, ShadowReport, Shadows
from nids.serving.auth import AdminCaller
from nids.serving.routes import feedback as feedback_routes
from nids.serving.routes.models import app as lifecycle_app

router = lifecycle_app  # the routes join the /api/v1/models app of nids.serving.routes.models
MODEL_TYPE_OF = {"threat": THREAT_MODEL_NAME, "attack": ATTACK_MODEL_NAME}


def shadows(request: Request) -> Shadows:
    service = request.app.state.shadows
    if service is None:
        raise Unavailable("shadow runs are unavailable: the lifecycle database could not be opened at startup")
    return service


Service = Annotated[Shadows, Depends(shadows)]
ModelType = Annotated[str, Query(description="threat_detector or attack_classifier")]


def _run(run: Any) -> dict[str, Any]:
    return dict(vars(run))


@router.post("/{model_id}/shadow")
def start_shadow(
    service: Service,
    caller: AdminCaller,
    model_id: str,
    share: Annotated[
        float, Query(ge=0.001, le=1, description="share of live flows the shadow scores (0.001 to 1)")
    ] = 0.1,
) -> dict[str, Any]:
    """Start (or replace) the shadow run of the version's type; the version is verified first (422 if it fails)."""
    return _run(service.start(model_id, share, caller.label))


@router.get("/shadow/report")
def shadow_report(service: Service, model_type: ModelType) -> ShadowReport:
    """The latest shadow run of the type against the active version."""
    model_type = parse_model_type(model_type)
    observability = feedback_routes.bound_observability()
    store = observability.feedback if observability is not None else None
    labelled = [(f, label) for f, label, _ in store.labelled(MODEL_KIND[model_type])] if store is not None else None
    return service.report(model_type, labelled)


@router.post("/shadow/stop")
def stop_shadow(service: Service, caller: AdminCaller, model_type: ModelType) -> dict[str, Any]:
    return _run(service.stop(parse_model_type(model_type), caller.label))


@router.post("/shadow/promote")
def promote_shadow(
    service: Service,
    caller: AdminCaller,
    model_type: ModelType,
    force: bool = False,
    reason: str | None = None,
) -> ModelEntry:
    """Activate the shadow version through the gate (409 naming the metric when it refuses), then end the run."""
    return service.promote(parse_model_type(model_type), caller.label, force=force, reason=reason)


MODEL_KIND = {model_type: kind for kind, model_type in MODEL_TYPE_OF.items()}


# --- what the APIs hand over after answering ------------------------------------------------------------------
class ShadowMetrics:
    def __init__(self) -> None:
        import prometheus_client as prom  # deferred: see nids.serving.metrics

        self.flows = prom.Counter(
            "nids_shadow_flows",
            "Flows offered to the shadow model: compared (agreed/disagreed with the active version) or shed",
            ["model_type", "outcome"],
        )
        for model_type in MODEL_TYPE_OF.values():  # exported at 0 before any shadow run
            for outcome in ("agreed", "disagreed", "shed"):
                self.flows.labels(model_type, outcome)

    def shed(self, kind: str, flows: int) -> None:
        self.flows.labels(MODEL_TYPE_OF[kind], "shed").inc(flows)

    def compared(self, kind: str, agreed: int, disagreed: int) -> None:
        self.flows.labels(MODEL_TYPE_OF[kind], "agreed").inc(agreed)
        self.flows.labels(MODEL_TYPE_OF[kind], "disagreed").inc(disagreed)


@cache
def shadow_metrics() -> ShadowMetrics:
    return ShadowMetrics()


def analysis_offers(models: ActiveModels, flows: Sequence[AnalyzeFlow], response: AnalyzeResponse) -> list[Offered]:
    """analyze's flows per kind with the classes and scores it answered, for the shadow (only when one runs)."""
    offers = []
    for kind in ("threat", "attack"):
        index = [i for i, item in enumerate(flows) if isinstance(item.root, ThreatFlow) == (kind == "threat")]
        if not index:
            continue
        results = [response.results[i] for i in index]
        batch = FlowBatch.of(kind, [flows[i].root for i in index])
        if kind == "threat":  # every result of its kind carries the part read here
            classes = np.array([int(r.threat_prediction.is_attack) for r in results])
            scores = np.array([r.threat_prediction.attack_probability for r in results])
            tag = models.threat.tag
        else:
            classes = np.array([r.attack_prediction.attack_type_encoded for r in results if r.attack_prediction])
            scores = np.array([r.attack_prediction.confidence for r in results if r.attack_prediction])
            tag = models.attack.tag
        offers.append(Offered(kind, tag, batch, classes, scores))
    return offers
