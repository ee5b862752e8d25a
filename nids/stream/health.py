"""The stream worker's HTTP port (NIDS_STREAM_METRICS_PORT): Prometheus metrics, `/readyz` and `/livez`.

`/readyz` answers like the service's: 200 `{"status": "ready"}` (or `{"status": "degraded", "degraded": [...]}`)
while the worker scores, 503 `{"error": reason, "degraded": [...]}` while it waits for what it needs to start (the
lifecycle state, verified models, the audit log). Every other path is the metrics.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client

from nids.core.health import Check, readiness

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes are not logged."""


def serve(port: int, unready: list[Check], degraded: list[Check]) -> WSGIServer:
    """Serve the port on a daemon thread (`shutdown()` stops it); the checks are read at every /readyz."""
    metrics = prometheus_client.make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/readyz", "/livez"):
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        status, body = readiness(unready, degraded) if path == "/readyz" else (200, {"status": "alive"})
        data = json.dumps(body).encode()
        phrase = "OK" if status == 200 else "Service Unavailable"
        start_response(f"{status} {phrase}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    server = make_server("0.0.0.0", port, app, server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="stream-health", daemon=True).start()
    return server
