"""The service's ASGI middleware: access control, then readiness and body limits, before BentoML reads a request.

- `AccessGuard` (outermost): the route table of nids.serving.auth, the caller's token (or, on /ws/realtime, a
  ticket of nids.serving.tickets) and the Origin of a WebSocket, before anything reads the body.
- `RequestGuard`: 503 while no models are served, 413 for bodies over their limit (Content-Length, or counted
  as a chunked body arrives).
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nids.core.errors import NIDSError, RequestTooLarge
from nids.core.health import Check, readiness
from nids.core.settings import Settings, get_settings
from nids.models.registry import ModelRegistry
from nids.serving import tickets
from nids.serving.asgi import ASGIApp, Message, Receive, Scope, Send
from nids.serving.auth import WEBSOCKET, AccessPolicy, Caller, Forbidden, Role, access_policy, admit, bearer
from nids.serving.errors import error_response
from nids.serving.rundir import private_dir, server_dir
from nids.serving.warmup import WARM_UP, WarmUp

logger = logging.getLogger("nids.auth")

# `POST /detect_threat?explain=N` is served by the API's non-batched twin (nids.serving.service)
EXPLAINED_PATHS = {"/detect_threat": "/detect_threat_explained", "/classify_attack": "/classify_attack_explained"}
MODEL_PATHS = frozenset(
    {"/detect_threat", "/classify_attack", "/analyze", "/analyze_csv", "/model_info", *EXPLAINED_PATHS.values()}
)
CSV_PATH = "/analyze_csv"
# model lifecycle (nids.serving.routes.models): a package upload has its own size limit
PACKAGE_UPLOAD_PATH = "/api/v1/models/upload"
CSV_UPLOAD_PATH = "/api/v1/upload/csv"
MULTIPART_OVERHEAD = 64 * 1024


class AccessGuard:
    """ASGI middleware, outermost of the service's own: every HTTP request and WebSocket is looked up in the route
    table and its caller checked before anything reads the body; a route not in the table is refused.

    The caller (None: a public route) is left in the request's state (nids.serving.auth.caller_of).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = WEBSOCKET if scope["type"] == "websocket" else scope["method"]
        path = scope.get("path", "")
        policy = access_policy()
        try:
            access = policy.table.access(method, path)
            if access.minimum == Role.PUBLIC:
                caller = None  # a public route answers whatever is sent (a probe's header is not checked)
            elif method == WEBSOCKET:
                caller = _websocket_caller(policy, scope)
            else:
                caller = admit(policy, access, _presented_token(scope))
        except NIDSError as error:
            _count_refusal(error, method, path, scope)
            await refuse(scope, receive, send, error)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    raw = dict(scope["headers"]).get(name)
    return raw.decode("latin-1") if raw is not None else None


def _presented_token(scope: Scope) -> str | None:
    return bearer(_header(scope, b"authorization"))


def _websocket_caller(policy: AccessPolicy, scope: Scope) -> Caller | None:
    """A WebSocket's caller: its Origin must be allowed; then a bearer header, or a single-use ticket."""
    settings = get_settings()
    origin = _header(scope, b"origin")
    if origin is not None and not _origin_allowed(origin, _header(scope, b"host"), settings):
        raise Forbidden(f"Origin {origin} may not open this stream (allowed: this server and NIDS_REALTIME_ORIGINS)")
    token = _presented_token(scope)
    ticket = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("ticket")
    if token is None and ticket:
        return tickets.redeem(ticket_key(policy), ticket[0], policy, used_tickets())
    access = policy.table.access(WEBSOCKET, scope["path"])
    return admit(policy, access, token)


def _origin_allowed(origin: str, host: str | None, settings: Settings) -> bool:
    """Same origin as the server (the page it serves), or listed in NIDS_REALTIME_ORIGINS."""
    return origin in settings.realtime_origins or (host is not None and urlsplit(origin).netloc == host)


@cache
def ticket_key(policy: AccessPolicy) -> bytes:
    """The key of the tickets of this process's access policy (derived from its tokens)."""
    return tickets.ticket_key(get_settings(), policy)


@cache
def used_tickets() -> Path:
    """The directory of the used tickets' nonces, shared by the server's workers."""
    return private_dir(server_dir() / tickets.USED_DIR)


def _count_refusal(error: NIDSError, method: str, path: str, scope: Scope) -> None:
    reason = {HTTPStatus.UNAUTHORIZED: "no_token", HTTPStatus.FORBIDDEN: "forbidden"}.get(error.status_code)
    if reason is None:  # no such route or method: not an authentication failure
        return
    from nids.serving.metrics import service_metrics  # the worker's metrics (created in the service's __init__)

    service_metrics().auth_refusals.labels(reason).inc()
    client = (scope.get("client") or ("?",))[0]
    logger.info("access refused: %s %s from %s: %d %s", method, path, client, error.status_code, error.message)


async def refuse(scope: Scope, receive: Receive, send: Send, error: NIDSError) -> None:
    """Answer `error` on HTTP, or refuse a WebSocket handshake with the error's status and body (close code 1008
    where the server lacks the denial-response extension)."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
            return
    await error_response(error)(scope, receive, send)  # starlette sends a WebSocket's as a denial response


class Health:
    """What /readyz says besides the models. `unready` checks return why the process must be drained (503);
    `degraded` checks return what it serves without (a store losing rows, an unavailable audit log: 200, listed
    under `degraded`). '' means fine. The service registers its checks at startup."""

    def __init__(self) -> None:
        self.unready: list[Check] = []
        self.degraded: list[Check] = []

    def report(self, registry: ModelRegistry) -> tuple[int, dict[str, Any]] | None:
        """(status, body) for /readyz, or None when all is well (BentoML's own /readyz answers then)."""
        status, body = readiness((registry.unready_reason, *self.unready), self.degraded)
        return None if body == {"status": "ready"} else (status, body)


HEALTH = Health()


class RequestGuard:
    """ASGI middleware: 503 with the reason while no models are served, 413 for oversized bodies; /readyz
    answered from the registry and HEALTH (503 with every reason to drain this process).

    A batched API's request with an `explain` query parameter goes to its non-batched twin (EXPLAINED_PATHS).

    It also unwraps BentoML's 4xx error bodies for exceptions (`[{"error": ...}]`) into `{"error": ...}`, the
    shape of every other error this service returns.

    Once the worker's lifespan has started (the service created), it starts the worker's warm-up
    (nids.serving.warmup), whose requests enter here.
    """

    def __init__(
        self, app: ASGIApp, registry: ModelRegistry, health: Health = HEALTH, warm_up: WarmUp = WARM_UP
    ) -> None:
        self.app = app
        self.registry = registry
        self.health = health
        self.warm_up = warm_up
        self._warming: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._stop_warming_at_shutdown(receive), self._warm_up_once_started(scope, send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if (
            scope.get("query_string")
            and path in EXPLAINED_PATHS
            and "explain" in parse_qs(scope["query_string"].decode())
        ):
            path = EXPLAINED_PATHS[path]
            scope = {**scope, "path": path, "raw_path": path.encode()}
        if not self.registry.ready and path in MODEL_PATHS:
            await send_json(send, 503, {"error": f"no verified models are being served: {self.registry.reason}"})
            return
        if path == "/readyz" and (report := self.health.report(self.registry)) is not None:
            await send_json(send, *report)
            return
        settings = get_settings()
        if path in (CSV_PATH, CSV_UPLOAD_PATH):
            limit, setting = settings.max_csv_bytes + MULTIPART_OVERHEAD, "NIDS_MAX_CSV_BYTES + 64 KiB of multipart"
        elif path == PACKAGE_UPLOAD_PATH:
            limit = settings.model_max_package_bytes + MULTIPART_OVERHEAD
            setting = "NIDS_MODEL_MAX_PACKAGE_BYTES + 64 KiB of multipart"
        else:
            limit, setting = settings.max_request_bytes, "NIDS_MAX_REQUEST_BYTES"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            message = f"request body of {int(length)} bytes; the limit is {limit} ({setting})"
            await send_json(send, 413, {"error": message})
            return
        over: list[RequestTooLarge] = []  # set once a chunked body passed the limit
        try:
            await self.app(scope, _bounded(receive, limit, setting, over), _unwrap_errors(send, over))
        except RequestTooLarge as error:  # raised by the body's reader, reached us unanswered
            await send_json(send, 413, error.body())

    def _warm_up_once_started(self, lifespan: Scope, send: Send) -> Send:
        async def inner(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete" and self.warm_up.enabled and self._warming is None:
                self._warming = asyncio.create_task(self.warm_up.run(self, self.registry, lifespan), name="warm-up")

        return inner

    def _stop_warming_at_shutdown(self, receive: Receive) -> Receive:
        async def inner() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._warming is not None:
                self._warming.cancel()
            return message

        return inner


def _bounded(receive: Receive, limit: int, setting: str, over: list[RequestTooLarge]) -> Receive:
    """Stop reading a body without Content-Length (chunked) once it passes the limit (and note it in `over`:
    a form parser answers any failure of its reader with its own 400, which `_unwrap_errors` turns into this 413)."""
    seen = 0

    async def inner() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            over[:] = [RequestTooLarge(f"request body over the limit of {limit} bytes ({setting})")]
            raise over[0]
        return message

    return inner


def _unwrap_errors(send: Send, over: list[RequestTooLarge]) -> Send:
    start: Message | None = None

    async def inner(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message  # hold it: the body (and so its length) may change
            return
        if start is not None and message["type"] == "http.response.body":
            body = message.get("body", b"")
            if over:  # the body passed its limit while being read: whatever the parser answered, it is a 413
                start["status"], body, message = (
                    413,
                    json.dumps(over[0].body()).encode(),
                    {**message, "more_body": False},
                )
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


async def send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
