"""nids-bento: the BentoML service (`bentoml serve nids.serving.service:NIDSService`).

Thin: each API is one typed method over nids.core.pipeline; errors are mapped to HTTP in nids.serving.errors,
readiness and body limits in nids.serving.middleware. Flows are validated by their pydantic models per request
(before adaptive batching merges requests). Models are loaded, hash-checked and reference-tested at startup into
nids.models.registry.REGISTRY; when that fails the service still starts but /readyz and every model API answer
503 with the reason, and no model is served.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from nids.core import pipeline
from nids.core.actions import HealingAction
from nids.core.errors import NotFound
from nids.core.schemas import (
    AnalyzeFlows,
    AnalyzeResponse,
    AttackEvents,
    AttackFlows,
    AttackPrediction,
    ModelInfo,
    ThreatFlows,
    ThreatPrediction,
)
from nids.core.settings import Settings, get_settings
from nids.healing.engine import HealingEngine
from nids.healing.schemas import ActionQuery, ActionRecord, EnforcementState
from nids.models.artifacts import load_model
from nids.models.registry import REGISTRY
from nids.serving import bentoml_fixes, errors, parsing
from nids.serving.metrics import service_metrics
from nids.serving.middleware import RequestGuard
from nids.serving.offload import off_inference

logger = logging.getLogger("nids.service")
bentoml_fixes.install()
errors.install()
parsing.install()  # JSON without duplicate keys; a file field only as an upload, never fetched (issue 12)

# Declaring the media type of list outputs spares BentoML 1.4.39 from generating their whole JSON schema on every
# response just to learn it is JSON (~1.5 ms of CPU per response, 40% of a single-flow request).
JSON = ContentType("application/json")

# Adaptive batching (docs/api.md, "Batching and latency"). max_batch_size counts rows: 1000 rows bound one model
# call to ~10 ms (threat) / ~35 ms (attack). max_latency_ms is the queueing budget past which BentoML sheds a
# request with 503. Single flows meet the 100 ms SLA by batching, not by shedding (p99 5-7 ms at 200 req/s,
# BENCHMARKS.md); a budget of 100 ms made a second concurrent 1,000-flow request fail whenever it queued behind
# the first, so the budget is 1 s: beyond that, shedding with 503 beats waiting. The batched APIs refuse more
# than settings.max_rows_per_batched_request rows (413) rather than split a request past the budget.
MAX_BATCH_ROWS = 1000
MAX_LATENCY_MS = 1000


class PingReply(BaseModel):
    flows: int = Field(description="how many flows the request carried")


# several workers where the machine has the cores (NIDS_WORKERS): every worker shares the audit log, its rate
# limits and stop switch, and exactly one worker lifts each expired block (nids/healing/engine.py). Read with
# Settings() at import, for the decorator, so get_settings() is still first read where the service starts.
@bentoml.service(name="nids", traffic={"timeout": 30}, workers=Settings().workers)
class NIDSService:
    def __init__(self) -> None:
        settings = get_settings()
        logging.getLogger("nids").setLevel(settings.log_level)  # BentoML leaves other loggers at WARNING
        self.models = REGISTRY
        self.metrics = service_metrics()
        try:
            REGISTRY.load(settings.threat_model_tag, settings.attack_model_tag, load_model)
        except Exception:  # any load failure leaves the service up, unready, reporting the reason
            logger.exception("serving no models: %s", REGISTRY.reason)
        self.metrics.observe_models(REGISTRY.current)
        self.healing = HealingEngine.from_settings(settings)
        # what is loaded by now lives as long as the process: keep it out of every later full collection
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.models.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.healing.close()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_ROWS, max_latency_ms=MAX_LATENCY_MS)
    def detect_threat(self, flows: ThreatFlows) -> Annotated[list[ThreatPrediction], JSON]:
        """Threat score of NSL-KDD flows (10 features)."""
        return pipeline.detect_threats(self.models.active(), flows, self.metrics)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_ROWS, max_latency_ms=MAX_LATENCY_MS)
    def classify_attack(self, flows: AttackFlows) -> Annotated[list[AttackPrediction], JSON]:
        """Attack type of CICFlowMeter flows (42 features)."""
        return pipeline.classify_attacks(self.models.active(), flows, self.metrics)

    # The APIs below touch the audit store or parse uploads: async, their work on threads of their own
    # (nids.serving.offload), so a locked or slow audit database never delays detect_threat/classify_attack.
    @bentoml.api
    async def self_heal(self, events: AttackEvents) -> Annotated[list[HealingAction], JSON]:
        """Self-healing decision for each attack event (recorded in the audit log; dry-run by default)."""
        return await off_inference(pipeline.self_heal, self.healing.handle, events, self.metrics)

    @bentoml.api
    async def analyze(self, flows: AnalyzeFlows) -> AnalyzeResponse:
        """The whole pipeline per flow: threat verdict, attack type and action, plus a summary."""
        return await off_inference(pipeline.analyze, self.models.active(), self.healing.handle, flows, self.metrics)

    @bentoml.api
    async def analyze_csv(self, file: Path) -> AnalyzeResponse:
        """`analyze` for an uploaded CSV (CICFlowMeter or NSL-KDD columns)."""
        return await off_inference(self._analyze_csv, file)

    def _analyze_csv(self, file: Path) -> AnalyzeResponse:
        settings = get_settings()
        flows, ignored = pipeline.read_csv(
            file, max_rows=settings.max_rows_per_request, max_bytes=settings.max_csv_bytes
        )
        response = pipeline.analyze(self.models.active(), self.healing.handle, flows, self.metrics)
        return response.model_copy(update={"ignored_columns": ignored})

    @bentoml.api
    def ping(self, flows: list[dict[str, Any]]) -> PingReply:
        """No model, no validation: HTTP, JSON and BentoML dispatch alone - the serving ceiling of benchmarks."""
        return PingReply(flows=len(flows))

    @bentoml.api
    def model_info(self) -> ModelInfo:
        """Tags, features, classes, threshold, metrics and reference-case results of both served models."""
        return pipeline.model_info(self.models.active())

    # --- self-healing audit log and stop switch (docs/self-healing.md) --------------------------------------
    @bentoml.api(input_spec=ActionQuery)
    async def healing_actions(self, **filters: Any) -> Annotated[list[ActionRecord], JSON]:
        """Audit log of self-healing decisions, newest first, filtered by type, status, address and time."""
        return await off_inference(self.healing.list_actions, **filters)

    @bentoml.api
    async def healing_action(self, action_id: str) -> ActionRecord:
        """One audit record: the decision, its context and what became of it (404 if unknown)."""
        record = await off_inference(self.healing.get_action, action_id)
        if record is None:
            raise NotFound(f"no self-healing action with id {action_id!r}")
        return record

    @bentoml.api
    async def healing_revert(self, action_id: str) -> ActionRecord:
        """Undo an action (e.g. lift a block); 404 if unknown, 409 if it already ended or nothing ran."""
        return await off_inference(self.healing.revert, action_id)

    @bentoml.api
    async def healing_enforcement(self, enabled: bool) -> EnforcementState:
        """The stop switch: `false` stops all enforcement at once (every replica sharing the audit log)."""
        return await off_inference(self._set_enforcement, enabled)

    def _set_enforcement(self, enabled: bool) -> EnforcementState:
        self.healing.set_enforcement(enabled)  # Conflict (409) while NIDS_HEALING_ENFORCEMENT_STOPPED is set
        return EnforcementState(enforcement_enabled=self.healing.enforcement_enabled)


NIDSService.add_asgi_middleware(RequestGuard, registry=REGISTRY)
