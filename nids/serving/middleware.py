"""The service's ASGI middleware: readiness and body limits before BentoML reads a request."""

from __future__ import annotations

import json
from typing import Any

from nids.core.errors import RequestTooLarge
from nids.core.settings import get_settings
from nids.models.registry import ModelRegistry
from nids.serving.asgi import ASGIApp, Message, Receive, Scope, Send

MODEL_PATHS = frozenset({"/detect_threat", "/classify_attack", "/analyze", "/analyze_csv", "/model_info"})
CSV_PATH = "/analyze_csv"
# model lifecycle (nids.serving.routes.models): a package upload has its own size limit
PACKAGE_UPLOAD_PATH = "/api/v1/models/upload"
CSV_UPLOAD_PATH = "/api/v1/upload/csv"
MULTIPART_OVERHEAD = 64 * 1024


class RequestGuard:
    """ASGI middleware: 503 with the reason while no models are served, 413 for oversized bodies.

    It also unwraps BentoML's 4xx error bodies for exceptions (`[{"error": ...}]`) into `{"error": ...}`, the
    shape of every other error this service returns.
    """

    def __init__(self, app: ASGIApp, registry: ModelRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not self.registry.ready and (path in MODEL_PATHS or path == "/readyz"):
            await send_json(send, 503, {"error": f"no verified models are being served: {self.registry.reason}"})
            return
        if path == "/readyz" and self.registry.mismatch:  # serving a verified pair, but not the recorded one
            await send_json(send, 200, {"status": "ready", "detail": self.registry.mismatch})
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
        await self.app(scope, _bounded(receive, limit, setting), _unwrap_errors(send))


def _bounded(receive: Receive, limit: int, setting: str) -> Receive:
    """Stop reading a body without Content-Length (chunked) once it passes the limit."""
    seen = 0

    async def inner() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise RequestTooLarge(f"request body over the limit of {limit} bytes ({setting})")
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


async def send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
