"""nids-bento: the BentoML service (`bentoml serve service:NIDSService`).

Each API is a typed method; the work is done in nids.pipeline. Flows are validated by their pydantic
models per request (before adaptive batching merges requests). Models are loaded, hash-checked and
reference-tested at startup into nids.registry.REGISTRY; when that fails the service still starts but
/readyz and every model API answer 503 with the reason, and no model is served.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import NotFound, ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from nids import bentoml_fixes, pipeline
from nids.artifacts import load_model
from nids.healing.audit import AuditUnavailable
from nids.healing.engine import ActionNotFound, HealingEngine, NotRevertible
from nids.healing.schemas import ActionQuery, ActionRecord, EnforcementState, HealingAction
from nids.metrics import service_metrics
from nids.registry import REGISTRY, ModelRegistry
from nids.schemas import (
    AnalyzeFlows,
    AnalyzeResponse,
    AttackEvents,
    AttackFlows,
    AttackPrediction,
    ModelInfo,
    ThreatFlows,
    ThreatPrediction,
)
from nids.settings import Settings
from nids.validation import Conflict, RequestTooLarge, limits

logger = logging.getLogger("nids.service")
bentoml_fixes.install()

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

MODEL_PATHS = frozenset({"/detect_threat", "/classify_attack", "/analyze", "/analyze_csv", "/model_info"})
CSV_PATH = "/analyze_csv"
MULTIPART_OVERHEAD = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestGuard:
    """ASGI middleware: 503 with the reason while no models are served, 413 for oversized bodies.

    It also unwraps BentoML's 4xx error bodies for exceptions (`[{"error": ...}]`) into `{"error": ...}`, the
    shape of every other error this service returns.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], registry: ModelRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not self.registry.ready and (path in MODEL_PATHS or path == "/readyz"):
            await _send_json(send, 503, {"error": f"no verified models are being served: {self.registry.reason}"})
            return
        settings = limits()
        limit = settings.max_csv_bytes + MULTIPART_OVERHEAD if path == CSV_PATH else settings.max_request_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(send, 413, {"error": f"request body of {int(length)} bytes; the limit is {limit}"})
            return
        await self.app(scope, _bounded(receive, limit), _unwrap_errors(send))


def _bounded(receive: Receive, limit: int) -> Receive:
    """Stop reading a body without Content-Length (chunked) once it passes the limit."""
    seen = 0

    async def inner() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise RequestTooLarge(f"request body over the limit of {limit} bytes")
        return message

    return inner


def _unwrap_errors(send: Send) -> Send:
    start: Message | None = None

    async def inner(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message  # hold it: the body (and so its length) may change
            return
        if start is not None and message["type"] == "http.response.body":
            body = message.get("body", b"")
            if not message.get("more_body", False):
                body = _unwrapped(body)
                start["headers"] = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                start["headers"].append((b"content-length", str(len(body)).encode()))
                message = {**message, "body": body}
            await send(start)
            start = None
        await send(message)

    return inner


def _unwrapped(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) and "error" in data[0]:
        return json.dumps(data[0]).encode()
    return body


async def _send_json(send: Send, status: int, payload: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PingReply(BaseModel):
    flows: int = Field(description="how many flows the request carried")


@contextmanager
def healing_errors() -> Iterator[None]:
    """Self-healing failures as HTTP errors: unknown id 404, wrong state 409, audit log down 503."""
    try:
        yield
    except ActionNotFound as error:
        raise NotFound(str(error)) from error
    except NotRevertible as error:
        raise Conflict(str(error)) from error
    except AuditUnavailable as error:
        raise ServiceUnavailable(str(error)) from error


@bentoml.service(name="nids", traffic={"timeout": 30})
class NIDSService:
    def __init__(self) -> None:
        settings = Settings()
        self.models = REGISTRY
        try:
            REGISTRY.load(settings.threat_model_tag, settings.attack_model_tag, load_model)
        except Exception:  # any load failure leaves the service up, unready, reporting the reason
            logger.exception("serving no models: %s", REGISTRY.reason)
        service_metrics().observe_models(REGISTRY.current)
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
        return pipeline.detect_threats(self.models.active(), flows)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_ROWS, max_latency_ms=MAX_LATENCY_MS)
    def classify_attack(self, flows: AttackFlows) -> Annotated[list[AttackPrediction], JSON]:
        """Attack type of CICFlowMeter flows (42 features)."""
        return pipeline.classify_attacks(self.models.active(), flows)

    @bentoml.api
    def self_heal(self, events: AttackEvents) -> Annotated[list[HealingAction], JSON]:
        """Self-healing decision for each attack event (recorded in the audit log; dry-run by default)."""
        with healing_errors():
            return pipeline.self_heal(self.healing, events)

    @bentoml.api
    def analyze(self, flows: AnalyzeFlows) -> AnalyzeResponse:
        """The whole pipeline per flow: threat verdict, attack type and action, plus a summary."""
        with healing_errors():
            return pipeline.analyze(self.models.active(), self.healing, flows)

    @bentoml.api
    def analyze_csv(self, file: Path) -> AnalyzeResponse:
        """`analyze` for an uploaded CSV (CICFlowMeter or NSL-KDD columns)."""
        settings = limits()
        flows, ignored = pipeline.read_csv(
            file, max_rows=settings.max_rows_per_request, max_bytes=settings.max_csv_bytes
        )
        with healing_errors():
            response = pipeline.analyze(self.models.active(), self.healing, flows)
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
    def healing_actions(self, **filters: Any) -> Annotated[list[ActionRecord], JSON]:
        """Audit log of self-healing decisions, newest first, filtered by type, status, address and time."""
        with healing_errors():
            return self.healing.list_actions(**filters)

    @bentoml.api
    def healing_action(self, action_id: str) -> ActionRecord:
        """One audit record: the decision, its context and what became of it (404 if unknown)."""
        with healing_errors():
            record = self.healing.get_action(action_id)
        if record is None:
            raise NotFound(f"no self-healing action with id {action_id!r}")
        return record

    @bentoml.api
    def healing_revert(self, action_id: str) -> ActionRecord:
        """Undo an action (e.g. lift a block); 404 if unknown, 409 if it already ended or nothing ran."""
        with healing_errors():
            return self.healing.revert(action_id)

    @bentoml.api
    def healing_enforcement(self, enabled: bool) -> EnforcementState:
        """The stop switch: `false` stops all enforcement at once (every replica sharing the audit log)."""
        with healing_errors():
            try:
                self.healing.set_enforcement(enabled)
            except ValueError as error:  # stopped by NIDS_HEALING_ENFORCEMENT_STOPPED: only a restart resumes
                raise Conflict(str(error)) from error
            return EnforcementState(enforcement_enabled=self.healing.enforcement_enabled)


NIDSService.add_asgi_middleware(RequestGuard, registry=REGISTRY)
