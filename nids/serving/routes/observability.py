"""Observability routes (docs/api.md, "Observability"): statistics, the prediction list, drift, the live stream
and the dashboard. Three small FastAPI apps, each mounted on the Bento under its own path:

- `api` at /api/v1: GET /api/v1/predictions, GET /api/v1/predictions/stats, GET /api/v1/predictions/timeline,
  GET /api/v1/drift, and
  GET /api/v1/realtime/ticket (a single-use ticket for the live stream, nids.serving.tickets)
- `realtime` at /ws: the WebSocket /ws/realtime (its caller, ticket and Origin checked by
  nids.serving.middleware.AccessGuard; at most NIDS_REALTIME_MAX_CLIENTS per worker, past it 503)
- `dashboard` at /: GET /dashboard (claims that one path only; BentoML's mounts fall through to others)

The service binds its `Observability` with `bind()` at startup (in the worker). Errors answer
`{"error", "detail"}` like every other API; a refused query parameter is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError

from nids.core.errors import InvalidInput, NIDSError, NotFound, Unavailable
from nids.observability.schemas import (
    AttackTimeline,
    DriftReport,
    LoggedPrediction,
    PredictionQuery,
    PredictionStats,
    TimelineQuery,
    TimeWindow,
)
from nids.observability.stream import EventFilter, Subscriber
from nids.serving import tickets
from nids.serving.auth import Caller, Unauthenticated, access_policy
from nids.serving.errors import error_response
from nids.serving.middleware import refuse, ticket_key
from nids.serving.observability import Observability

DASHBOARD = Path(__file__).resolve().parents[1] / "static" / "dashboard.html"
_bound: dict[str, Observability] = {}


def bind(observability: Observability) -> None:
    _bound["observability"] = observability


def _observability() -> Observability:
    if "observability" not in _bound:
        raise Unavailable("the service is still starting")
    return _bound["observability"]


def _refused(detail: list[Any]) -> InvalidInput:
    return InvalidInput(f"{len(detail)} invalid query parameter(s)", detail=detail)


def _app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(NIDSError)
    async def _nids_error(request: Request, error: NIDSError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in error.errors()]
        return error_response(_refused(detail))

    return app


api = _app()
realtime = _app()
dashboard = _app()


@api.get("/predictions")
def list_predictions(query: Annotated[PredictionQuery, Query()]) -> list[LoggedPrediction]:
    """Logged predictions, newest first; filter by time, verdict, attack type, source address and source."""
    observability = _observability()
    return observability.require(observability.reader).list(query, time.time())


@api.get("/predictions/stats")
def prediction_stats(window: Annotated[TimeWindow, Query()]) -> PredictionStats:
    """Totals, attack rate, attack-type distribution, the last 100 predictions and the analysts' verdicts per model
    version (optionally in a window)."""
    observability = _observability()
    now = time.time()
    stats = observability.require(observability.reader).stats(window, now)
    feedback = observability.require(observability.feedback).stats(window, now)
    return stats.model_copy(update={"log": observability.health(), "feedback": feedback})


@api.get("/predictions/timeline")
def prediction_timeline(query: Annotated[TimelineQuery, Query()]) -> AttackTimeline:
    """Predictions and attacks per bucket over the last seconds (default: 60 s in 5 s buckets), from the log every
    worker and replica shares: the dashboard's attack rate of the last 60 s, right from the page's opening."""
    observability = _observability()
    return observability.require(observability.reader).timeline(query, time.time())


@api.get("/predictions/{prediction_id}")
def get_prediction(prediction_id: Annotated[int, PathParam(ge=1, le=2**63 - 1)]) -> LoggedPrediction:
    """One logged prediction with its features: the id of any part of an original-shape answer (traffic_data,
    threat_prediction, attack_prediction, self_healing_action) or a live event's traffic_data_id."""
    observability = _observability()
    prediction = observability.require(observability.reader).get(prediction_id)
    if prediction is None:
        raise NotFound(f"no prediction with id {prediction_id} in the log (never made, or past its retention)")
    return prediction


@api.get("/drift")
def drift_report() -> DriftReport:
    """PSI per feature of each model's recent traffic against its training data (refreshed every
    NIDS_DRIFT_REFRESH_SECONDS)."""
    return _observability().drift_report()


@api.get("/realtime/ticket")
def realtime_ticket(request: Request) -> dict[str, Any]:
    """A ticket that opens /ws/realtime once, within TICKET_SECONDS, as the caller of this request (viewer)."""
    caller: Caller | None = request.scope.get("state", {}).get("caller")
    if caller is None:  # only reachable past AccessGuard, which names a viewer
        raise Unauthenticated("a ticket needs a token of scope viewer: send 'Authorization: Bearer <token>'")
    policy = access_policy()
    return {"ticket": tickets.issue(ticket_key(policy), caller), "expires_in_seconds": tickets.TICKET_SECONDS}


@dashboard.get("/dashboard", response_class=HTMLResponse)
def dashboard_page() -> HTMLResponse:
    return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))


# --- the live stream ---------------------------------------------------------------------------------------
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _event_filter(params: dict[str, str]) -> EventFilter:
    """The stream's query parameters: attacks_only (true/false) and source (api, csv, stream)."""
    try:
        return EventFilter.model_validate(params)
    except ValidationError as error:
        detail = error.errors(include_url=False, include_context=False, include_input=False)
        raise _refused([{**e, "loc": ["query", *e["loc"]]} for e in detail]) from error


@realtime.websocket("/realtime")
async def realtime_stream(websocket: WebSocket) -> None:
    """`connection` on connect, `prediction` per logged prediction (every worker's), `ping` every N seconds."""
    try:
        observability = _observability()
        hub = observability.require(observability.hub)
        settings = observability.settings
        if len(hub.subscribers) >= settings.realtime_max_clients:
            observability.metrics.refused.inc()
            raise Unavailable(
                f"this worker already streams to {settings.realtime_max_clients} clients "
                "(NIDS_REALTIME_MAX_CLIENTS); try again later"
            )
    except NIDSError as error:  # refused before the handshake completes
        await refuse(websocket.scope, websocket.receive, websocket.send, error)
        return
    await websocket.accept()
    params = {key: value for key, value in websocket.query_params.items() if key != "ticket"}
    try:
        event_filter = _event_filter(params)
    except NIDSError as error:
        await websocket.send_json({"type": "error", **error.body()})
        await websocket.close(code=1008, reason=error.message[:120])
        return
    subscriber = hub.subscribe(event_filter)
    observability.metrics.clients.inc()
    try:
        await websocket.send_json(
            {
                "type": "connection",
                "status": "connected",
                "message": "Connected to real-time threat detection stream",  # the original words
                "filters": event_filter.model_dump(),
                "timestamp": _now(),
            }
        )
        receiver = asyncio.create_task(_receive(websocket))
        sender = asyncio.create_task(_send(websocket, subscriber, settings))
        done, pending = await asyncio.wait(
            [receiver, sender, asyncio.create_task(subscriber.stalled.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if subscriber.stalled.is_set():
            observability.metrics.cut_off.inc()
            await _close(websocket, 1008, "client too slow: events were dropped")
        elif sender in done and isinstance(sender.exception(), TimeoutError):
            observability.metrics.cut_off.inc()
            await _close(websocket, 1008, "client too slow: a send timed out")
    finally:
        hub.unsubscribe(subscriber)
        observability.metrics.clients.dec()


async def _send(websocket: WebSocket, subscriber: Subscriber, settings: Any) -> None:
    """Events as they come, a ping when none came for realtime_ping_seconds; a stuck send raises TimeoutError."""
    while True:
        try:
            async with asyncio.timeout(settings.realtime_ping_seconds):
                message = await subscriber.queue.get()
        except TimeoutError:
            message = {"type": "ping", "timestamp": _now()}
        async with asyncio.timeout(settings.realtime_send_timeout_seconds):
            await websocket.send_json(message)


async def _receive(websocket: WebSocket) -> None:
    """Clients may send {"type": "ping"} (answered with pong) or {"type": "pong"}; anything else gets an error."""
    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            return
        try:
            message = json.loads(received.get("text") or "")
        except ValueError:  # not JSON, or a binary frame
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            await websocket.send_json({"type": "pong", "timestamp": _now()})
        elif kind != "pong":
            await websocket.send_json(
                {
                    "type": "error",
                    "error": 'unexpected message: this stream only accepts {"type": "ping"} or '
                    '{"type": "pong"}; filters go in the query string (?attacks_only=true&source=api)',
                    "detail": [],
                }
            )


CLOSE_SECONDS = 1.0


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Send the close frame if the client takes it; a client that reads nothing cannot, and the handler returns
    anyway (the server then closes the transport)."""
    with contextlib.suppress(Exception):  # gone already, or stuck (TimeoutError)
        async with asyncio.timeout(CLOSE_SECONDS):
            await websocket.close(code=code, reason=reason)
