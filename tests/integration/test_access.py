"""Access control over the live app (issue 19): every route of the served app is in the scope table, and every
route answers no token, a wrong token, the scope below and the right scope as the table says.

The routes are enumerated from the app BentoML builds for the service (every API, mounted FastAPI route,
WebSocket and static route) and from the live server's OpenAPI spec; a route missing from
nids.serving.auth.ROUTES fails the first test, a table entry without a route fails it too.
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import pytest
import websocket

from nids.serving.auth import ROUTES, WEBSOCKET, Access, Role

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


@pytest.fixture(scope="module")
def server(serve, model_store) -> Server:
    return serve(model_store.home, NIDS_AUTH_MODE="required", **ENV)


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
