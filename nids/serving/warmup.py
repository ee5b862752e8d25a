"""Warm before ready: every worker of a `bentoml serve` runs real requests through its own served paths before
/readyz may answer 200 (issue 23).

A fresh worker's first requests pay for what nothing ran yet: BentoML's adaptive batcher trains its latency model
on its first ~11 batches of each batched API (one request at a time, then pairs and triples), the ONNX sessions
allocate on their first run, pydantic and orjson build their serializers, the prediction log's sender pickles its
first batches, the audit store runs its first query. Measured from fresh servers at 200 req/s right after
/readyz turned 200: p99 55-1,136 ms over five runs, against 16-56 ms after a warm-up (BENCHMARKS.md).

`WarmUp.run(app)` sends, once the worker's ASGI lifespan has started (nids.serving.middleware.RequestGuard
starts it), in-process ASGI requests into the service's own app, below the access guard (no token needed: an
in-process caller, `caller` None, whose healing decisions are dry-run) and above everything else of ours and
BentoML's API handling, the batcher included:
1. `detect_threat` and 2. `classify_attack`: NIDS_WARM_UP_REQUESTS single-flow requests each (the models'
   reference cases: real held-out rows), a quarter one at a time, the rest four at once (the batcher's training
   wants batches of 1, 2 and 3);
3. `analyze` with 10-feature flows (the detector's branch; a 42-feature flow would write a healing decision to
   the audit log at every start), 4. `healing_actions` (a read of the audit store), 5. the statistics of the
   prediction log (`GET /api/v1/predictions/stats`).
A step answered with anything but 200 is retried every RETRY_SECONDS (the reason stays on /readyz) until it
passes: a worker that cannot serve a path is never reported ready. The one exception is the prediction log's 503:
inference goes on while its database is down (its outage is listed under degraded, its rows held and counted), so
an unreachable log database at start leaves the worker ready and degraded, as it would be after the start.

Each request's flows carry a `flow_id` made of a per-process random secret (`flow_id`): their predictions pass
through the real prediction-log path (queue, sender, writer process) marked `warm_up` and the writer drops them
before the insert, so the statistics, the prediction list, drift and /ws/realtime never see them; the per-model
Prometheus counters skip them too. A user's request batched together with a warm-up request (sent before /readyz
said 200) is logged whole: the warm-up's rows in it then show their flow id `warm-up-<hex>`.

Every worker writes its progress to a file of the server's private directory (nids.serving.rundir), so the
/readyz of any worker names every worker still warming up: `pending()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml

from nids.core.columns import FlowBatch
from nids.core.model import ReferenceCase
from nids.core.settings import get_settings
from nids.models.artifacts import load_reference_cases
from nids.models.registry import ModelRegistry
from nids.serving.asgi import ASGIApp, Message, Scope
from nids.serving.rundir import open_private, private_dir, server_dir
from nids.serving.workers import worker_pids

logger = logging.getLogger("nids.warmup")
RETRY_SECONDS = 1.0
CONCURRENT = 4  # requests sent at once after the sequential quarter: the batcher merges them
STATE_DIR = "warm-up"
DONE = ""


@dataclass(frozen=True)
class Step:
    name: str
    method: str
    path: str
    bodies: tuple[bytes, ...]
    sequential: int  # how many of `bodies` are sent one at a time before the rest go CONCURRENT at once
    # a store whose outage /readyz lists under degraded while serving goes on without it (the prediction log):
    # its 503 ends the step, so an unreachable log database at start never keeps the models from serving
    unavailable_ok: bool = False


@dataclass
class WarmUp:
    """One worker's warm-up: its steps, its progress (published for every worker's /readyz) and its flow id."""

    worker: int | None = None  # 1..workers inside a `bentoml serve` worker; None: no warm-up (in-process use)
    workers: int = 1
    requests: int = 0  # per batched API; 0: no warm-up
    directory: Path | None = None
    flow_id: str = field(default_factory=lambda: f"warm-up-{secrets.token_hex(8)}")
    running: bool = False
    status: str = "not started"

    @property
    def enabled(self) -> bool:
        return self.worker is not None and self.requests > 0

    def configure(self, worker: int | None, workers: int, requests: int) -> None:
        """Called by the service at startup (this worker's index, the server's workers, NIDS_WARM_UP_REQUESTS)."""
        self.worker, self.workers, self.requests = worker, workers, requests
        self.running = self.enabled
        if self.enabled:
            self.directory = private_dir(server_dir() / STATE_DIR)
            self._publish("waiting for the models")

    # --- readiness ---------------------------------------------------------------------------------------
    def _publish(self, status: str) -> None:
        self.status = status
        if self.directory is None or self.worker is None:
            return
        path = self.directory / str(self.worker)
        temporary = path.with_name(f".{self.worker}.{os.getpid()}")
        fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"{os.getpid()}\n{status}")
        os.replace(temporary, path)

    def pending(self) -> str:
        """For /readyz: '' once every worker of this server has warmed up, else what each one still waits for."""
        if not self.enabled or self.directory is None:
            return ""
        waiting = []
        live = worker_pids(os.getppid())  # a worker restarted since it wrote its file starts over
        for worker in range(1, self.workers + 1):
            try:
                pid, status = (self.directory / str(worker)).read_text(encoding="utf-8").split("\n", 1)
            except (OSError, ValueError):
                pid, status = "", "not started"
            if live and live.get(worker) != int(pid or 0):
                status = "starting"
            if status != DONE:
                waiting.append(f"worker {worker}: {status}")
        if not waiting:
            return ""
        return f"warming up (NIDS_WARM_UP_REQUESTS={self.requests}): " + "; ".join(waiting)

    # --- marking ----------------------------------------------------------------------------------------
    def owns(self, flow_ids: Iterable[str | None]) -> bool:
        """True while warming up, for flows that are all this worker's warm-up flows (not a user's)."""
        return self.running and all(flow_id == self.flow_id for flow_id in flow_ids)

    def owns_batch(self, flows: FlowBatch | Sequence[Any]) -> bool:
        """`owns` for a batched API's argument (a FlowBatch; a list of flow models when called in-process)."""
        if not self.running:
            return False
        if isinstance(flows, FlowBatch):
            return self.owns(flows.context.get("flow_id", [None]))
        return self.owns(flow.flow_id for flow in flows)

    # --- the requests -----------------------------------------------------------------------------------
    def steps(self, registry: ModelRegistry) -> list[Step]:
        models = registry.active()
        threat = self._flows(load_reference_cases(bentoml.models.get(models.threat.tag)))
        attack = self._flows(load_reference_cases(bentoml.models.get(models.attack.tag)))
        n, quarter = self.requests, max(1, self.requests // 4)
        steps = [
            Step("detect_threat", "POST", "/detect_threat", _single_flow_bodies(threat, n), quarter),
            Step("classify_attack", "POST", "/classify_attack", _single_flow_bodies(attack, n), quarter),
            Step("analyze", "POST", "/analyze", _single_flow_bodies(threat, CONCURRENT), CONCURRENT),
            Step("the audit store", "POST", "/healing_actions", (b'{"limit": 1}',), 1),
        ]
        if get_settings().prediction_log_enabled:  # disabled, its routes answer 503 for good: nothing to warm
            steps.append(Step("the prediction log", "GET", "/api/v1/predictions/stats", (b"",), 1, True))
        return steps

    def _flows(self, cases: Sequence[ReferenceCase]) -> list[dict[str, Any]]:
        return [{**case.features, "flow_id": self.flow_id} for case in cases]

    async def run(self, app: ASGIApp, registry: ModelRegistry, lifespan: Scope) -> None:
        """Wait for the models, run every step through `app`, then publish this worker as warm."""
        try:
            while not registry.ready:
                await asyncio.sleep(RETRY_SECONDS)
            steps = self.steps(registry)
            for step in steps:
                await self._step(app, lifespan, step)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug here must not leave the worker silently unready
            logger.exception("warm-up failed")
            self._publish(f"the warm-up failed ({type(error).__name__}: {error}): see the worker's log")
            return
        self.running = False
        self._publish(DONE)
        logger.info("worker %s warmed up: %s", self.worker, ", ".join(step.name for step in steps))

    async def _step(self, app: ASGIApp, lifespan: Scope, step: Step) -> None:
        self._publish(f"{step.name} pending ({len(step.bodies)} requests)")
        while True:
            try:
                for body in step.bodies[: step.sequential]:
                    await _call(app, lifespan, step, body)
                rest = step.bodies[step.sequential :]
                for start in range(0, len(rest), CONCURRENT):
                    await asyncio.gather(*(_call(app, lifespan, step, b) for b in rest[start : start + CONCURRENT]))
                return
            except WarmUpRefused as refused:
                status = f"{step.name} pending: {refused}; retried every {RETRY_SECONDS:g} s"
                if status != self.status:  # once per distinct refusal
                    logger.warning("warm-up of worker %s: %s", self.worker, status)
                self._publish(status)
                await asyncio.sleep(RETRY_SECONDS)


def _single_flow_bodies(flows: Sequence[dict[str, Any]], n: int) -> tuple[bytes, ...]:
    return tuple(json.dumps({"flows": [flows[i % len(flows)]]}).encode() for i in range(n))


class WarmUpRefused(Exception):
    """A warm-up request answered with anything but 200."""


async def _call(app: ASGIApp, lifespan: Scope, step: Step, body: bytes) -> None:
    """One in-process HTTP request to `app`, as uvicorn would send it; WarmUpRefused unless answered 200."""
    headers = [(b"host", b"warm-up"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": step.method,
        "scheme": "http",
        "path": step.path,
        "raw_path": step.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {**lifespan.get("state", {}), "caller": None},  # an in-process caller (nids.serving.auth)
    }
    if "app" in lifespan:
        scope["app"] = lifespan["app"]
    answered = asyncio.Event()
    sent = False
    status, parts = 0, []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    try:
        await app(scope, receive, send)
    finally:
        answered.set()
    if status != 200 and not (status == 503 and step.unavailable_ok):
        text = b"".join(parts).decode(errors="replace")[:300]
        raise WarmUpRefused(f"{step.method} {step.path} answered {status}: {text}")


WARM_UP = WarmUp()
