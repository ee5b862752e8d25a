"""nids-bento: the BentoML service (`bentoml serve service:NIDSService`: the top-level service.py names it).

Thin: each API is one typed method over nids.core.pipeline; errors are mapped to HTTP in nids.serving.errors,
readiness and body limits in nids.serving.middleware. Flows are validated per request, before adaptive batching
merges requests: the batched APIs column by column into a FlowBatch (nids.core.columns, the same rules and
messages as the pydantic flow models, which analyze uses). Models are loaded, hash-checked and reference-tested at
startup into nids.models.registry.REGISTRY; when that fails the service still starts but /readyz and every model
API answer 503 with the reason, and no model is served.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml import server_context
from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from nids.core import pipeline
from nids.core.actions import HealingAction
from nids.core.columns import AttackPredictions, Columns, FlowBatch, ThreatPredictions
from nids.core.database import cause_of, open_database, open_errors, redacted
from nids.core.errors import InvalidInput, NotFound, Unavailable
from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
from nids.core.schemas import (
    MAX_EXPLAINED_FEATURES,
    AnalyzeFlow,
    AnalyzeFlows,
    AnalyzeResponse,
    AttackEvents,
    ExplainedAttackPrediction,
    ExplainedThreatPrediction,
    ModelInfo,
)
from nids.core.settings import Settings, get_settings
from nids.healing.engine import HealingEngine
from nids.healing.schemas import ActionQuery, ActionRecord, EnforcementState
from nids.models.artifacts import load_model
from nids.models.lifecycle import Lifecycle
from nids.models.registry import REGISTRY
from nids.models.shadow import Offered, ShadowRunner, Shadows, ShadowStore
from nids.models.state import open_lifecycle_store
from nids.observability.records import PredictionBatch, Source
from nids.serving.auth import Caller, access_policy, caller_of
from nids.serving.compat import accept, batching, endpoint, respawn, serde, timeout
from nids.serving.metrics import service_metrics
from nids.serving.middleware import HEALTH, AccessGuard, RequestGuard
from nids.serving.observability import Observability
from nids.serving.offload import off_inference
from nids.serving.routes import feedback as feedback_routes
from nids.serving.routes import models as model_routes
from nids.serving.routes import observability as observability_routes
from nids.serving.routes import shadow as shadow_routes
from nids.serving.routes import upload as upload_routes
from nids.serving.warmup import WARM_UP
from nids.serving.workers import missing_workers

logger = logging.getLogger("nids.service")
# every patch of a BentoML or asyncio internal, each version- and source-checked (nids.serving.compat)
timeout.install()  # BentoML's per-request timer cancelled when the request ends
# a dead worker is restarted, in a container too (else /readyz answers 503 while one is missing)
WORKERS_RESTARTED = respawn.restart_dead_workers()
endpoint.install()  # errors answered with their own status and body
serde.install()  # JSON without duplicate keys; a file field only as an upload, never fetched (issue 12)
batching.install()  # the batched APIs' column batches merge and split
serde.install_columnar()  # Arrow IPC and Parquet bodies for the batched APIs (nids.serving.columnar)

# Declaring the media type of list outputs spares BentoML 1.4.39 from generating their whole JSON schema on every
# response just to learn it is JSON (~1.5 ms of CPU per response, 40% of a single-flow request).
JSON = ContentType("application/json")
# The request context (its headers carry the caller's token, checked by nids.serving.auth.AccessGuard). An API
# called in-process gets none: no caller, so nothing it decides is enforced.
Context = bentoml.Context

# Adaptive batching (docs/api.md, "Batching and latency"). max_batch_size counts rows: 1000 rows bound one model
# call to ~10 ms (threat) / ~35 ms (attack). max_latency_ms is the queueing budget past which BentoML sheds a
# request with 503. Single flows meet the 100 ms SLA by batching, not by shedding (p99 5-7 ms at 200 req/s,
# BENCHMARKS.md); a budget of 100 ms made a second concurrent 1,000-flow request fail whenever it queued behind
# the first, so the budget is 1 s: beyond that, shedding with 503 beats waiting. The batched APIs refuse more
# than settings.max_rows_per_batched_request rows (413) rather than split a request past the budget.
MAX_BATCH_ROWS = 1000
MAX_LATENCY_MS = 1000
AUDIT_RETRY_SECONDS = 2.0


def _codes_of_the_serving_model(flows: FlowBatch) -> None:
    pipeline.check_codes(REGISTRY.active().threat, flows)


# The batched APIs' bodies, validated as columns per request. Category codes are checked against the serving
# model here as well, before adaptive batching merges requests: a code past the model's categories in one
# request would otherwise fail every request batched with it (the pipeline checks again, for a version switch
# in between).
ThreatFlows = Annotated[FlowBatch, Columns("threat", check=_codes_of_the_serving_model)]
AttackFlows = Annotated[FlowBatch, Columns("attack")]


# explanations (nids.models.explain): a twin of each batched API, not batched, so the batched APIs keep exactly one
# argument and pay nothing for them. `POST /detect_threat?explain=N` reaches the twin (nids.serving.middleware);
# the body field `explain` or the query parameter names how many features to list per flow.
DEFAULT_EXPLAINED = 5
ExplainCount = Annotated[int, Field(ge=1, le=MAX_EXPLAINED_FEATURES, description="features listed per flow")]
AnalyzeExplainCount = Annotated[
    int, Field(ge=0, le=MAX_EXPLAINED_FEATURES, description="features listed per flow; 0: no explanation")
]


def _explain_count(body: int, ctx: Context | None, low: int) -> int:
    """The query parameter `explain` when sent (it wins over the body field), else the body's value."""
    raw = ctx.request.query_params.get("explain") if ctx is not None else None
    if raw is None:
        return body
    if not raw.strip().isdigit() or not low <= int(raw) <= MAX_EXPLAINED_FEATURES:
        message = f"Input should be an integer within [{low}, {MAX_EXPLAINED_FEATURES}]"
        raise InvalidInput(message, detail=[{"loc": ["query", "explain"], "msg": message, "type": "explain"}])
    return int(raw)


class PingReply(BaseModel):
    flows: int = Field(description="how many flows the request carried")


# --- observability routes (docs/api.md, "Observability") -------------------------------------------------


@bentoml.asgi_app(observability_routes.api, path="/api/v1")
@bentoml.asgi_app(observability_routes.realtime, path="/ws")
@bentoml.asgi_app(observability_routes.dashboard, path="/")
# several workers where the machine has the cores (NIDS_WORKERS): every worker shares the audit log, its rate
# limits and stop switch, and exactly one worker lifts each expired block (nids/healing/engine.py). Read with
# Settings() at import, for the decorator, so get_settings() is still first read where the service starts.
@bentoml.service(name="nids", traffic={"timeout": 30}, workers=Settings().workers)
@bentoml.asgi_app(model_routes.app, path="/api/v1/models")  # model lifecycle (docs/models.md)
@bentoml.asgi_app(upload_routes.app, path="/api/v1/upload")  # the original CSV API
class NIDSService:
    def __init__(self) -> None:
        settings = get_settings()
        logging.getLogger("nids").setLevel(settings.log_level)  # BentoML leaves other loggers at WARNING
        # several workers: new connections go to the least loaded one (nids.serving.balance), before serving starts
        accept.install(settings.workers)
        access = access_policy()  # a bad NIDS_TOKENS_FILE, or NIDS_AUTH_MODE=open off loopback, stops startup
        logger.info("access control: mode %s (%s)", access.mode, access.why)
        self.models = REGISTRY
        self.metrics = service_metrics()
        # model lifecycle: serve the versions recorded as active (shared by workers and replicas), follow switches
        REGISTRY.sync_deadline = settings.model_sync_deadline_seconds
        self.lifecycle = Lifecycle(
            partial(
                open_lifecycle_store, settings.state_url, settings.model_state_table_prefix, settings.state_setting
            ),
            REGISTRY,
            load_model,
            gate_margin=settings.model_gate_margin,
            on_switch=self.metrics.switch_models,
            signing_key=settings.signing_key,
            max_package_bytes=settings.model_max_package_bytes,
            member=(settings.replica_id or f"{socket.gethostname()}:{os.getppid()}", server_context.worker_index or 0),
            sync_seconds=settings.model_sync_seconds,
        )
        # any failure (state unreadable, a model that does not load) leaves the service up, unready, with the reason
        self.lifecycle.bootstrap(
            {THREAT_MODEL_NAME: settings.threat_model_tag, ATTACK_MODEL_NAME: settings.attack_model_tag}
        )
        self.metrics.observe_models(REGISTRY.current)
        self.lifecycle.start(settings.model_sync_seconds)
        # a challenger in the shadow of the active versions (nids.models.shadow): shared runs, scored off the path
        metrics = shadow_routes.shadow_metrics()
        self.shadow = ShadowRunner(  # loads through the lifecycle: a version only another replica holds is fetched
            None, self.lifecycle.load, queue_batches=settings.shadow_queue_batches, on_shed=metrics.shed,
            on_compared=metrics.compared,
        )  # fmt: skip
        try:
            shadow_store = ShadowStore(open_database(settings.state_url), settings.model_state_table_prefix)
        except Exception as error:  # serving goes on without shadow runs; the shadow routes answer 503
            logger.error("shadow runs unavailable: the lifecycle database: %s: %s", type(error).__name__, error)
            model_routes.app.state.shadows = None
        else:
            self.shadow.store = shadow_store
            self.shadow.start(settings.model_sync_seconds)
            model_routes.app.state.shadows = Shadows(shadow_store, self.shadow, self.lifecycle)
        self._healing: HealingEngine | None = None
        self.healing_reason = ""
        self._open_healing(settings)
        model_routes.app.state.lifecycle = self.lifecycle
        upload_routes.app.state.registry, upload_routes.app.state.metrics = REGISTRY, self.metrics
        upload_routes.app.state.healer = self.healer
        # every prediction is logged off the request path (statistics, /ws/realtime, drift)
        self.observability = Observability(settings, REGISTRY)
        observability_routes.bind(self.observability)
        # what /readyz says besides the models: this instance's checks (replacing any earlier instance's)
        # a dead worker (killed, out of memory): drained until it is back (nids.serving.workers)
        workers_missing = partial(missing_workers, settings.workers, WORKERS_RESTARTED)
        # every worker runs its served paths before readiness (nids.serving.warmup; started by RequestGuard)
        self.warm_up = WARM_UP
        self.warm_up.configure(server_context.worker_index, settings.workers, settings.warm_up_requests)
        HEALTH.unready[:] = [lambda: self.healing_reason, lambda: workers_missing() or "", self.warm_up.pending]
        HEALTH.degraded[:] = [self._audit_degradation, self.observability.degradation, self.lifecycle.degradation]
        feedback_routes.bind(self.observability, self.lifecycle)
        upload_routes.app.state.observability = self.observability
        # what is loaded by now lives as long as the process: keep it out of every later full collection
        gc.collect()
        gc.freeze()

    def _open_healing(self, settings: Settings) -> None:
        """Open the audit log; while it cannot be opened (unreachable, a data directory it cannot write), the
        service is unready naming it, and a thread retries until it opens. A bad policy file still stops startup."""
        try:
            self._healing = HealingEngine.from_settings(settings)
        except (*open_errors(), Unavailable) as error:
            setting = "NIDS_HEALING_AUDIT_URL" if settings.healing_audit_url else "NIDS_DATA_DIR"
            where = f"the self-healing audit log cannot be opened at {redacted(settings.audit_url)} (set by {setting})"
            # the cause's class for callers; the driver's own text in the log, once per distinct cause
            reason = f"{where}: {error}" if isinstance(error, Unavailable) else f"{where}: {cause_of(error)}"
            if reason != self.healing_reason:
                logger.error("%s (%s: %s); retrying", reason, type(error).__name__, error)
            self.healing_reason = reason
            timer = threading.Timer(AUDIT_RETRY_SECONDS, self._open_healing, args=(settings,))
            timer.daemon = True
            timer.start()
        else:
            if self.healing_reason:
                logger.info("the self-healing audit log is open again")
            self.healing_reason = ""

    def _audit_degradation(self) -> str:
        return self._healing.store.outage.describe("self-healing audit log") if self._healing is not None else ""

    @property
    def healing(self) -> HealingEngine:
        """The self-healing engine; 503 naming why while the audit log could not be opened yet."""
        if self._healing is None:
            raise Unavailable(self.healing_reason)
        return self._healing

    def __is_ready__(self) -> bool:
        return not self.models.unready_reason() and self._healing is not None

    @bentoml.on_shutdown
    def close(self) -> None:
        self.shadow.close()
        feedback_routes.close()
        self.lifecycle.stop()
        if self._healing is not None:
            self._healing.close()
        self.observability.close()

    def healer(self, caller: Caller | None) -> pipeline.Healer:
        """The engine's `handle` for this caller: a sensor's (or admin's) label authorises enforcement; a viewer's
        events, or an in-process call's, are answered as dry-run."""
        if caller is None:  # an in-process call
            return partial(self.healing.handle, caller=None)
        return partial(self.healing.handle, caller=caller.label if caller.enforces else None, requester=caller.label)

    def _healer_of(self, ctx: Context | None) -> pipeline.Healer:
        return self.healer(caller_of(ctx))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_ROWS, max_latency_ms=MAX_LATENCY_MS)
    def detect_threat(self, flows: ThreatFlows) -> Annotated[ThreatPredictions, JSON]:
        """Threat score of NSL-KDD flows (10 features)."""
        models = self.models.active()
        warm_up = self.warm_up.owns_batch(flows)
        predictions = pipeline.detect_threats(models, flows, None if warm_up else self.metrics)
        self._record(PredictionBatch.of_threats(models, flows, predictions, "api"), warm_up)
        if self.shadow.wants("threat") and not warm_up:
            classes = predictions.is_attack.astype(np.int64)
            self.shadow.offer(Offered("threat", models.threat.tag, flows, classes, predictions.probability))
        return predictions

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_ROWS, max_latency_ms=MAX_LATENCY_MS)
    def classify_attack(self, flows: AttackFlows) -> Annotated[AttackPredictions, JSON]:
        """Attack type of CICFlowMeter flows (42 features)."""
        models = self.models.active()
        warm_up = self.warm_up.owns_batch(flows)
        predictions = pipeline.classify_attacks(models, flows, None if warm_up else self.metrics)
        self._record(PredictionBatch.of_attacks(models, flows, predictions, "api"), warm_up)
        if self.shadow.wants("attack") and not warm_up:
            confidence = predictions.top_proba[:, 0]
            self.shadow.offer(Offered("attack", models.attack.tag, flows, predictions.codes, confidence))
        return predictions

    def _record(self, batch: PredictionBatch, warm_up: bool) -> None:
        """To the prediction log; a worker's own warm-up predictions marked, for the writer to drop them."""
        self.observability.record(replace(batch, warm_up=True) if warm_up else batch)

    # Explanations load each version's scikit-learn estimator on first use: async, on the side threads, so neither
    # that load nor the explaining delays the batched APIs on BentoML's inference thread.
    @bentoml.api
    async def detect_threat_explained(
        self, flows: ThreatFlows, explain: ExplainCount = DEFAULT_EXPLAINED, ctx: Context = None
    ) -> Annotated[list[ExplainedThreatPrediction], JSON]:
        """detect_threat with, per flow, the features that moved its score most (`POST /detect_threat?explain=N`)."""
        return await off_inference(self._explain_threats, flows, _explain_count(explain, ctx, 1))

    def _explain_threats(self, flows: FlowBatch, top: int) -> list[ExplainedThreatPrediction]:
        models = self.models.active()
        scores, explained = pipeline.explain_threats(models, flows, top, self.metrics)
        self.observability.record(PredictionBatch.of_threats(models, flows, scores, "api"))
        return explained

    @bentoml.api
    async def classify_attack_explained(
        self, flows: AttackFlows, explain: ExplainCount = DEFAULT_EXPLAINED, ctx: Context = None
    ) -> Annotated[list[ExplainedAttackPrediction], JSON]:
        """classify_attack with, per flow, the features that moved its class's probability most (also
        `POST /classify_attack?explain=N`)."""
        return await off_inference(self._explain_attacks, flows, _explain_count(explain, ctx, 1))

    def _explain_attacks(self, flows: FlowBatch, top: int) -> list[ExplainedAttackPrediction]:
        models = self.models.active()
        scores, explained = pipeline.explain_attacks(models, flows, top, self.metrics)
        self.observability.record(PredictionBatch.of_attacks(models, flows, scores, "api"))
        return explained

    # The APIs below touch the audit store or parse uploads: async, their work on threads of their own
    # (nids.serving.offload), so a locked or slow audit database never delays detect_threat/classify_attack.
    @bentoml.api
    async def self_heal(self, events: AttackEvents, ctx: Context = None) -> Annotated[list[HealingAction], JSON]:
        """Self-healing decision for each attack event (recorded in the audit log; dry-run by default)."""
        return await off_inference(pipeline.self_heal, self._healer_of(ctx), events, self.metrics)

    @bentoml.api
    async def analyze(
        self, flows: AnalyzeFlows, explain: AnalyzeExplainCount = 0, ctx: Context = None
    ) -> AnalyzeResponse:
        """The whole pipeline per flow: threat verdict, attack type and action, plus a summary; with `explain`
        (body field or query parameter) each result's explanation lists that many features."""
        top = _explain_count(explain, ctx, 0)
        return await off_inference(self._analyze, flows, self._healer_of(ctx), "api", top)

    def _analyze(
        self, flows: Sequence[AnalyzeFlow], heal: pipeline.Healer, source: Source, explain: int = 0
    ) -> AnalyzeResponse:
        models = self.models.active()
        warm_up = self.warm_up.owns(flow.root.flow_id for flow in flows)
        response = pipeline.analyze(models, heal, flows, None if warm_up else self.metrics, explain)
        self._record(PredictionBatch.of_analysis(models, flows, response, source), warm_up)
        if (self.shadow.wants("threat") or self.shadow.wants("attack")) and not warm_up:
            for offer in shadow_routes.analysis_offers(models, flows, response):
                self.shadow.offer(offer)
        return response

    @bentoml.api
    async def analyze_csv(self, file: Path, ctx: Context = None) -> AnalyzeResponse:
        """`analyze` for an uploaded CSV (CICFlowMeter or NSL-KDD columns)."""
        return await off_inference(self._analyze_csv, file, self._healer_of(ctx))

    def _analyze_csv(self, file: Path, heal: pipeline.Healer) -> AnalyzeResponse:
        settings = get_settings()
        flows, ignored = pipeline.read_csv(
            file, max_rows=settings.max_rows_per_request, max_bytes=settings.max_csv_bytes
        )
        response = self._analyze(flows, heal, "csv")
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
    async def healing_revert(self, action_id: str, ctx: Context = None) -> ActionRecord:
        """Undo an action (e.g. lift a block); 404 if unknown, 409 if it already ended or nothing ran. Admin token."""
        return await off_inference(self._revert, action_id, _label(ctx))

    def _revert(self, action_id: str, label: str) -> ActionRecord:
        record = self.healing.revert(action_id)
        self.lifecycle.audit(label, "healing_revert", detail={"action_id": action_id, "status": record.status})
        return record

    @bentoml.api
    async def healing_enforcement(self, enabled: bool, ctx: Context = None) -> EnforcementState:
        """The stop switch: `false` stops all enforcement at once (every replica sharing the audit log). Admin token."""
        return await off_inference(self._set_enforcement, enabled, _label(ctx))

    def _set_enforcement(self, enabled: bool, label: str) -> EnforcementState:
        self.healing.set_enforcement(enabled)  # Conflict (409) while NIDS_HEALING_ENFORCEMENT_STOPPED is set
        self.lifecycle.audit(label, "healing_enforcement", detail={"enabled": enabled})
        return EnforcementState(enforcement_enabled=self.healing.enforcement_enabled)


def _label(ctx: Context | None) -> str:
    """The label of the admin token AccessGuard checked (over HTTP these APIs are unreachable without one)."""
    caller = caller_of(ctx)
    return caller.label if caller is not None else "in-process"


# the first added is the outermost: the caller is known before the readiness and size checks, and before any body
NIDSService.add_asgi_middleware(AccessGuard)
NIDSService.add_asgi_middleware(RequestGuard, registry=REGISTRY)
