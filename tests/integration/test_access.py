"""Access control over the live app (issue 19), in the `required` mode: every route of the served app is in the
scope table, and every route answers no token, a wrong token, the scope below and the right scope as the table
says; a large upload without a token is refused before its body is read; the live stream needs a ticket (or a
token), an allowed Origin and room under the client cap; no process of the server shows a password.

The routes are enumerated from the app BentoML builds for the service (every API, mounted FastAPI route,
WebSocket and static route) and from the live server's OpenAPI spec; a route missing from
nids.serving.auth.ROUTES fails the first test, a table entry without a route fails it too.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import websocket

from nids.serving.auth import ROUTES, WEBSOCKET, Access, Role
from tests.healing.conftest import PG_URL, postgres_reachable

from .conftest import Server

TOKENS = {Role.VIEWER: "access-viewer-token", Role.SENSOR: "access-sensor-token", Role.ADMIN: "access-admin-token"}
BELOW = {Role.VIEWER: None, Role.SENSOR: Role.VIEWER, Role.ADMIN: Role.SENSOR}
ENV = {f"NIDS_{role.upper()}_TOKEN": token for role, token in TOKENS.items()}
# a concrete path per template parameter: nothing a call with it does changes the server (unknown model ids)
PARAMETERS = {
    "{model_id}": "threat_detector:doesnotexist",
    "{model_type}": "threat_detector",
    "{prediction_id}": "999999",
    "{file:path}": "swagger-ui.css",
}


def app_routes() -> set[tuple[str, str]]:
    """(method, path template) of every route of the app BentoML serves for NIDSService."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from _bentoml_impl.server.app import ServiceAppFactory

        from nids.serving.service import NIDSService

    NIDSService.inject_config()
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            inner = getattr(getattr(route, "app", None), "routes", None)
            if type(route).__name__ in ("Mount", "PassiveMount"):
                if inner is None:  # static files: one route for everything under the mount
                    found.add(("GET", f"{prefix}{route.path}/{{file:path}}"))
                else:
                    walk(inner, prefix + route.path)
            elif type(route).__name__.endswith("WebSocketRoute"):
                found.add((WEBSOCKET, prefix + route.path))
            else:
                path = prefix + route.path
                found.update((method, path.rstrip("/") or "/") for method in route.methods - {"HEAD"})

    walk(ServiceAppFactory(NIDSService, is_main=True)().routes, "")
    return found


PASSWORD = "never-in-argv-9f2c"  # PostgreSQL here trusts local connections: any password is accepted
MAX_CLIENTS = 3
PACKAGE_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's TMPDIR: where an upload would be spooled."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """The prediction log and the audit log in PostgreSQL, by URLs that carry a password."""
    if reason := postgres_reachable():
        pytest.skip(reason)
    prefix = f"acc{uuid.uuid4().hex[:8]}_"
    url = PG_URL.replace("postgres@", f"postgres:{PASSWORD}@")
    yield {
        "NIDS_PREDICTION_LOG_URL": url,
        "NIDS_PREDICTION_LOG_TABLE_PREFIX": prefix,
        "NIDS_HEALING_AUDIT_URL": url,
        "NIDS_HEALING_AUDIT_TABLE_PREFIX": f"{prefix}h_",
        "NIDS_MODEL_STATE_TABLE_PREFIX": f"{prefix}l_",
    }
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{prefix}%",)).fetchall()
        for (table,) in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


@pytest.fixture(scope="module")
def server(serve, model_store, tmpdir: Path, databases: dict[str, str]) -> Server:
    return serve(
        model_store.home,
        NIDS_AUTH_MODE="required",
        NIDS_REALTIME_MAX_CLIENTS=str(MAX_CLIENTS),
        NIDS_MODEL_MAX_PACKAGE_BYTES=str(PACKAGE_LIMIT),
        NIDS_MODEL_SIGNING_KEY="access-signing-key",
        TMPDIR=str(tmpdir),
        **databases,
        **ENV,
    )


def test_every_route_of_the_app_has_a_scope_and_every_scope_a_route(server: Server) -> None:
    routes = app_routes()
    spec = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    routes_in_spec = {(method.upper(), path.rstrip("/")) for path, item in spec["paths"].items() for method in item}
    assert routes_in_spec <= routes, "the live OpenAPI spec lists routes the app walk missed"
    assert sorted(routes - set(ROUTES)) == [], "routes without a scope in nids.serving.auth.ROUTES"
    assert sorted(set(ROUTES) - routes) == [], "scopes of routes the app does not have"


def concrete(template: str) -> str:
    for parameter, value in PARAMETERS.items():
        template = template.replace(parameter, value)
    return template


def headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"authorization": f"Bearer {token}"}


def call(server: Server, method: str, path: str, token: str | None) -> int:
    """The status of one call (a WebSocket handshake's: 101 when accepted)."""
    if method == WEBSOCKET:
        ws = websocket.WebSocket()
        try:
            ws.connect(f"ws://{server.url.removeprefix('http://')}{path}", header=headers(token), timeout=30)
        except websocket.WebSocketBadStatusException as refused:
            return refused.status_code
        ws.close()
        return 101
    body = {"json": {}} if method == "POST" else {}
    response = httpx.request(method, server.url + path, headers=headers(token), timeout=60, **body)
    if response.status_code in (404, 405):  # the app's own answer (an unknown model), never the guard's
        assert not response.json()["error"].startswith(("no route", f"{method} is not allowed")), response.text
    return response.status_code


def expectations(access: Access) -> list[tuple[str, str | None, bool]]:
    """(what, token, answered) for no token, a wrong token, the scope below the lowest answered, and that scope."""
    if access.minimum == Role.PUBLIC:
        return [("no token", None, True), ("wrong token", "not-a-token", True)]
    below = BELOW[access.minimum]
    return [
        ("no token", None, False),
        ("wrong token", "not-a-token", False),
        (f"scope below ({below or 'none'})", TOKENS[below] if below else None, False),
        (f"scope {access.minimum}", TOKENS[access.minimum], True),
        ("admin", TOKENS[Role.ADMIN], True),
    ]


@pytest.mark.parametrize(("method", "template"), sorted(ROUTES), ids=lambda v: str(v))
def test_each_route_answers_only_its_scope(server: Server, method: str, template: str) -> None:
    access = ROUTES[(method, template)]
    for what, token, answered in expectations(access):
        status = call(server, method, concrete(template), token)
        refused = status in (401, 403)
        assert refused != answered, f"{method} {template} with {what}: {status}"
        if not answered:
            assert status == (403 if token else 401), f"{method} {template} with {what}: {status}"


# --- nothing large is read before the caller is known --------------------------------------------------------
UPLOAD_BYTES = 200 * 1024 * 1024
BOUNDARY = "nids-access-boundary"


def in_tmp(tmpdir: Path) -> set[Path]:
    """What the server holds in its temporary directory (BentoML's sockets, nids.serving.rundir, any upload)."""
    return set(tmpdir.rglob("*"))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mib_upload_without_a_token_is_refused_before_its_body_is_read(
    server: Server, tmpdir: Path, chunked: bool
) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {UPLOAD_BYTES}"
    head = (
        f"POST /api/v1/models/upload HTTP/1.1\r\nHost: {host}:{port}\r\n{framing}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    )
    chunk = b"\0" * (1024 * 1024)
    sent, answer, before = 0, b"", in_tmp(tmpdir)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.05)
        while sent < UPLOAD_BYTES and not answer:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: nothing more is read
            sent += len(chunk)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
        sock.settimeout(30)
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert sent < UPLOAD_BYTES // 4, f"the server answered only after {sent} of {UPLOAD_BYTES} bytes"
    assert in_tmp(tmpdir) == before, "nothing of the upload was spooled"


def test_a_chunked_upload_over_the_limit_is_a_413_naming_it(server: Server) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the size is only known while reading
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model_type"\r\n\r\nthreat_detector\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="p.bentomodel"\r\n\r\n'
        ).encode()
        for _ in range(PACKAGE_LIMIT // 65536 + 4):
            yield b"\0" * 65536

    response = httpx.post(
        f"{server.url}/api/v1/models/upload",
        content=body(),
        headers={**headers(TOKENS[Role.ADMIN]), "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert "NIDS_MODEL_MAX_PACKAGE_BYTES" in response.json()["error"]


# --- the live stream -------------------------------------------------------------------------------------------
def ws_url(server: Server, query: str = "") -> str:
    return f"ws://{server.url.removeprefix('http://')}/ws/realtime{query}"


def ticket(server: Server) -> str:
    response = httpx.get(f"{server.url}/api/v1/realtime/ticket", headers=headers(TOKENS[Role.VIEWER]), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["ticket"]


def refusal(url: str, **options: Any) -> int:
    ws = websocket.WebSocket()
    try:
        ws.connect(url, timeout=30, **options)
    except websocket.WebSocketBadStatusException as refused:
        return refused.status_code
    ws.close()
    return 101


def test_the_stream_opens_with_a_single_use_ticket_and_never_without(server: Server) -> None:
    assert refusal(ws_url(server)) == 401
    assert refusal(ws_url(server, "?ticket=forged.0000")) == 403
    first = ticket(server)
    ws = websocket.create_connection(ws_url(server, f"?ticket={first}&attacks_only=true"), timeout=30)
    try:
        hello = json.loads(ws.recv())
        assert hello["type"] == "connection" and hello["filters"]["attacks_only"] is True
    finally:
        ws.close()
    assert refusal(ws_url(server, f"?ticket={first}")) == 403, "a ticket opens one connection"
    assert httpx.get(f"{server.url}/api/v1/realtime/ticket", timeout=30).status_code == 401


def test_the_stream_refuses_a_foreign_origin(server: Server) -> None:
    assert refusal(ws_url(server, f"?ticket={ticket(server)}"), origin="https://evil.example") == 403
    own = server.url  # the dashboard's own page
    assert refusal(ws_url(server, f"?ticket={ticket(server)}"), origin=own) == 101


def test_the_stream_refuses_clients_past_the_cap(server: Server) -> None:
    clients: list[websocket.WebSocket] = []
    deadline = time.monotonic() + 60  # connections of earlier tests are let go asynchronously
    try:
        while len(clients) < MAX_CLIENTS and time.monotonic() < deadline:
            try:
                clients.append(websocket.create_connection(ws_url(server), header=headers(TOKENS[Role.VIEWER])))
            except websocket.WebSocketBadStatusException:
                time.sleep(0.2)
        assert len(clients) == MAX_CLIENTS
        assert refusal(ws_url(server), header=headers(TOKENS[Role.VIEWER])) == 503
    finally:
        for client in clients:
            client.close()
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert "nids_realtime_clients_refused_total" in metrics
    assert "nids_auth_refusals_total" in metrics


# --- secrets ---------------------------------------------------------------------------------------------------
def server_processes(server: Server) -> list[psutil.Process]:
    """The `bentoml serve` process whose worker listens on the server's port, and every process under it."""
    port = int(server.url.rsplit(":", 1)[1])
    (listening, *_) = [c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid]
    root = psutil.Process(listening)
    while (parent := root.parent()) is not None and "bentoml" in " ".join(parent.cmdline()):
        root = parent
    return [root, *root.children(recursive=True)]


def test_no_process_of_the_server_shows_a_password(server: Server) -> None:
    processes = server_processes(server)
    names = " ".join(" ".join(process.cmdline()) for process in processes)
    assert "nids.observability.process" in names, "the prediction log's writer process is among them"
    assert len(processes) >= 3
    for process in processes:
        assert PASSWORD not in " ".join(process.cmdline()), process.cmdline()
    assert httpx.get(f"{server.url}/api/v1/predictions", headers=headers("not-a-token"), timeout=30).status_code == 403
    deadline = time.monotonic() + 30
    while "access refused: GET /api/v1/predictions" not in (log := server.log.read_text(errors="replace")):
        assert time.monotonic() < deadline, "refusals are logged (at INFO)"
        time.sleep(0.2)
    assert PASSWORD not in log
    assert not [token for token in [*TOKENS.values(), "not-a-token"] if token in log], "never with the token"
