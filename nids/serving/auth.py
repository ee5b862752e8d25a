"""Access control: one table, route -> scope, enforced before any request body is read; deny by default.

Scopes, each including the ones before it: `public` < `viewer` < `sensor` < `admin`.

- `public`: /livez, /readyz, /healthz, the dashboard page and the API docs (no data); /metrics unless
  NIDS_METRICS_PUBLIC=false (then viewer).
- `viewer`: every read (statistics, predictions, drift, the live stream, the audit logs, the model list and
  profile) and the scoring APIs that enforce nothing (detect_threat, classify_attack, model_info, ping).
- `sensor`: the calls whose events may be enforced (self_heal, analyze, analyze_csv, POST /api/v1/upload/csv).
  A viewer is answered too, but nothing it decides is enforced (dry-run, "caller not authorised to enforce"),
  and its events count against a budget of their own (nids.healing.budget), never the sensors' rate limits.
- `admin`: lifecycle writes, export, healing_revert and the stop switch.

nids.serving.middleware.AccessGuard applies the table to every request. A route missing from ROUTES is
refused (404, or 405 naming the methods the path has), whatever the app behind would do: a new API is unreachable
until it is given a scope (tests/integration/test_access.py walks every route of the live app against this
table).

Auth modes (NIDS_AUTH_MODE): `open` (a caller without a token counts as a viewer: local development) or
`required` (without a token only `public` routes answer). `auto`, the default, is `open` only when the server is
bound to a loopback address outside a container, else `required`; a bind address that cannot be read counts as
non-loopback. `open` on a non-loopback address refuses to start. The mode is logged at startup.

Tokens come from settings: NIDS_ADMIN_TOKEN, NIDS_SENSOR_TOKEN, NIDS_VIEWER_TOKEN (labels `admin`, `sensor`,
`viewer`) and NIDS_TOKENS_FILE, a YAML list of `{label, scope, sha256}` (the token's sha256, never the token:
`python -m nids.serving.auth` prints it). Only sha256 digests are kept in memory; a presented token is hashed and
compared with every known digest in constant time (hmac.compare_digest); no token is ever logged. Refusals:
no token 401, a wrong token or a scope too low 403, no token of the scope configured 403 saying how; each is
counted (`nids_auth_refusals_total`) and logged at INFO without the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import yaml
from fastapi import Depends, Header, Request

from nids.core.errors import NIDSError, NotFound
from nids.core.settings import Settings, get_settings
from nids.serving.compat.listen import bound_address

logger = logging.getLogger("nids.auth")
AuthMode = Literal["open", "required"]
ANONYMOUS = "anonymous"  # the label of a caller without a token in open mode


class Role(StrEnum):
    PUBLIC = "public"
    VIEWER = "viewer"
    SENSOR = "sensor"
    ADMIN = "admin"


RANK = {Role.PUBLIC: 0, Role.VIEWER: 1, Role.SENSOR: 2, Role.ADMIN: 3}
TOKEN_HOWTO = {
    Role.ADMIN: "set NIDS_ADMIN_TOKEN (e.g. `openssl rand -hex 32`) or add a token of scope admin to NIDS_TOKENS_FILE",
    Role.SENSOR: "set NIDS_SENSOR_TOKEN or add a token of scope sensor to NIDS_TOKENS_FILE",
    Role.VIEWER: "set NIDS_VIEWER_TOKEN or add a token of scope viewer to NIDS_TOKENS_FILE",
}


class Unauthenticated(NIDSError):
    status_code = HTTPStatus.UNAUTHORIZED


class Forbidden(NIDSError):
    status_code = HTTPStatus.FORBIDDEN


class MethodNotAllowed(NIDSError):
    status_code = HTTPStatus.METHOD_NOT_ALLOWED


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the label of its token (recorded in the audit trail) and the token's scope."""

    label: str
    scope: Role

    def can(self, scope: Role) -> bool:
        return RANK[self.scope] >= RANK[scope]

    @property
    def enforces(self) -> bool:
        """Whether what this caller's events decide may be enforced (sensor scope or above)."""
        return self.can(Role.SENSOR)


# --- the table -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Access:
    """What a route needs: `scope`; `answered_from`: the lowest scope answered at all (dry-run below `scope`)."""

    scope: Role
    answered_from: Role | None = None

    @property
    def minimum(self) -> Role:
        return self.answered_from or self.scope


PUBLIC, VIEWER, ADMIN = Access(Role.PUBLIC), Access(Role.VIEWER), Access(Role.ADMIN)
ENFORCING = Access(Role.SENSOR, answered_from=Role.VIEWER)
WEBSOCKET = "WEBSOCKET"  # the "method" of a WebSocket route
MODELS = "/api/v1/models"
# (method, path template): `{name}` is one path segment, `{name:path}` the rest of the path. HEAD counts as GET.
ROUTES: dict[tuple[str, str], Access] = {
    # BentoML's own routes
    ("GET", "/livez"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,  # viewer when NIDS_METRICS_PUBLIC=false
    ("GET", "/"): PUBLIC,  # the API docs page, the OpenAPI spec and its assets: no data
    ("GET", "/docs.json"): PUBLIC,
    ("GET", "/schema.json"): PUBLIC,
    ("GET", "/static_content/{file:path}"): PUBLIC,
    ("GET", "/api/v1/upload/openapi.json"): PUBLIC,
    ("GET", MODELS + "/openapi.json"): PUBLIC,
    # the BentoML APIs (nids.serving.service)
    ("POST", "/detect_threat"): VIEWER,
    ("POST", "/classify_attack"): VIEWER,
    ("POST", "/detect_threat_explained"): VIEWER,  # ?explain=N on the batched APIs (docs/analyst.md)
    ("POST", "/classify_attack_explained"): VIEWER,
    ("POST", "/model_info"): VIEWER,
    ("POST", "/ping"): VIEWER,
    ("POST", "/healing_actions"): VIEWER,
    ("POST", "/healing_action"): VIEWER,
    ("POST", "/self_heal"): ENFORCING,
    ("POST", "/analyze"): ENFORCING,
    ("POST", "/analyze_csv"): ENFORCING,
    ("POST", "/healing_revert"): ADMIN,
    ("POST", "/healing_enforcement"): ADMIN,
    # observability (nids.serving.routes.observability)
    ("GET", "/dashboard"): PUBLIC,  # the page only: its data comes from the viewer routes below
    ("GET", "/api/v1/predictions"): VIEWER,
    ("GET", "/api/v1/predictions/stats"): VIEWER,
    ("GET", "/api/v1/predictions/timeline"): VIEWER,
    ("GET", "/api/v1/predictions/{prediction_id}"): VIEWER,
    # the analyst's loop (nids.serving.routes.feedback): a verdict needs a token of its giver (viewer or above)
    ("POST", "/api/v1/predictions/{prediction_id}/feedback"): VIEWER,
    ("GET", "/api/v1/predictions/{prediction_id}/feedback"): VIEWER,
    ("GET", "/api/v1/predictions/{prediction_id}/explanation"): VIEWER,
    ("GET", "/api/v1/drift"): VIEWER,
    ("GET", "/api/v1/realtime/ticket"): VIEWER,
    (WEBSOCKET, "/ws/realtime"): VIEWER,
    # the original CSV API (nids.serving.routes.upload)
    ("POST", "/api/v1/upload/csv"): ENFORCING,
    # model lifecycle (nids.serving.routes.models)
    ("GET", MODELS): VIEWER,
    ("GET", MODELS + "/stats/storage"): VIEWER,
    ("GET", MODELS + "/profile/{model_type}"): VIEWER,
    ("GET", MODELS + "/status/replica"): VIEWER,
    ("GET", MODELS + "/status/fleet"): VIEWER,
    ("GET", MODELS + "/events/audit"): VIEWER,
    ("GET", MODELS + "/{model_id}"): VIEWER,
    ("POST", MODELS + "/upload"): ADMIN,
    ("POST", MODELS + "/{model_id}/activate"): ADMIN,
    ("POST", MODELS + "/{model_id}/deactivate"): ADMIN,
    ("DELETE", MODELS + "/{model_id}"): ADMIN,
    ("GET", MODELS + "/{model_id}/export"): ADMIN,
    # shadow A/B (nids.serving.routes.shadow)
    ("GET", MODELS + "/shadow/report"): VIEWER,
    ("POST", MODELS + "/{model_id}/shadow"): ADMIN,
    ("POST", MODELS + "/shadow/stop"): ADMIN,
    ("POST", MODELS + "/shadow/promote"): ADMIN,
}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z_]+(?::path)?\})", template)
    regex = "".join(
        (".+" if part.endswith(":path}") else "[^/]+") if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.compile(regex)


class RouteTable:
    """ROUTES compiled: exact paths by dict lookup, templated ones by pattern (literal segments win)."""

    def __init__(self, routes: dict[tuple[str, str], Access]) -> None:
        self.exact: dict[str, dict[str, Access]] = {}
        self.templated: list[tuple[re.Pattern[str], str, Access]] = []
        for (method, template), access in routes.items():
            if "{" in template:
                self.templated.append((_pattern(template), method, access))
            else:
                self.exact.setdefault(template, {})[method] = access

    def methods(self, path: str) -> dict[str, Access]:
        """The methods of a path and what each needs (empty: no such route)."""
        if path != "/":
            path = path.rstrip("/")  # FastAPI answers /api/v1/models/ and redirects /api/v1/models to it
        if path in self.exact:
            return self.exact[path]
        found: dict[str, Access] = {}
        for pattern, method, access in self.templated:
            if method not in found and pattern.fullmatch(path):
                found[method] = access
        return found

    def access(self, method: str, path: str) -> Access:
        """What `method path` needs; NotFound / MethodNotAllowed when the table has no such route."""
        methods = self.methods(path)
        if not methods:
            raise NotFound(f"no route {path}")
        access = methods.get("GET" if method == "HEAD" else method)
        if access is None:
            allowed = ", ".join(sorted(methods))
            raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {allowed}")
        return access


def route_table(settings: Settings) -> RouteTable:
    routes = dict(ROUTES)
    if not settings.metrics_public:
        routes[("GET", "/metrics")] = VIEWER
    return RouteTable(routes)


# --- tokens ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenDigest:
    label: str
    scope: Role
    sha256: str


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBook:
    def __init__(self, tokens: list[TokenDigest]) -> None:
        self.tokens = tuple(tokens)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenBook:
        tokens = []
        configured = (
            (settings.admin_token, Role.ADMIN),
            (settings.sensor_token, Role.SENSOR),
            (settings.viewer_token, Role.VIEWER),
        )
        for secret, role in configured:
            if secret is not None and secret.get_secret_value():
                tokens.append(TokenDigest(role.value, role, digest(secret.get_secret_value())))
        if settings.tokens_file is not None:
            tokens.extend(read_tokens_file(settings.tokens_file))
        return cls(tokens)

    def configured(self, scope: Role) -> bool:
        return any(RANK[token.scope] >= RANK[scope] for token in self.tokens)

    def identify(self, token: str) -> Caller | None:
        """The caller of a presented token (compared with every digest, in constant time), or None."""
        presented = digest(token)
        found = None
        for known in self.tokens:
            if hmac.compare_digest(presented, known.sha256) and found is None:
                found = Caller(known.label, known.scope)
        return found


def read_tokens_file(path: Path) -> list[TokenDigest]:
    """The tokens file: a YAML list of {label, scope: admin|sensor|viewer, sha256: <64 hex digits>}."""
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        tokens = [
            TokenDigest(str(entry["label"]), Role(entry["scope"]), str(entry["sha256"]).lower()) for entry in entries
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"NIDS_TOKENS_FILE {path}: {type(exc).__name__}: {exc}") from exc
    for token in tokens:
        if token.scope == Role.PUBLIC:
            raise ValueError(f"NIDS_TOKENS_FILE {path}: token {token.label!r}: scope must be admin, sensor or viewer")
        if len(token.sha256) != 64 or any(c not in "0123456789abcdef" for c in token.sha256):
            raise ValueError(f"NIDS_TOKENS_FILE {path}: token {token.label!r} needs sha256 as 64 hex digits")
    return tokens


@dataclass(frozen=True, eq=False)  # hashed by identity: one per settings object
class AccessPolicy:
    """The process's access control: its tokens, its route table and its mode (with the reason for it)."""

    book: TokenBook
    table: RouteTable
    mode: AuthMode
    why: str


_POLICY: list[tuple[Settings, AccessPolicy]] = []  # the policy of the settings object it was read from


def access_policy() -> AccessPolicy:
    """The access policy of the process's settings (read once per settings object, like the settings)."""
    settings = get_settings()
    if not _POLICY or _POLICY[0][0] is not settings:
        mode, why = auth_mode(settings.auth_mode, bound_address(), _containerized())
        _POLICY[:] = [(settings, AccessPolicy(TokenBook.from_settings(settings), route_table(settings), mode, why))]
    return _POLICY[0][1]


def token_book() -> TokenBook:
    return access_policy().book


# --- the auth mode -------------------------------------------------------------------------------------------
def _containerized() -> bool:
    return os.environ.get("BENTOML_CONTAINERIZED", "").lower() == "true"


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def auth_mode(setting: str, address: str | None, containerized: bool) -> tuple[AuthMode, str]:
    """The mode and why; ValueError for `open` anywhere but a loopback address outside a container."""
    where = "an unknown address" if address is None else address
    local = _loopback(address) and not containerized
    if setting == "open" and not local:
        raise ValueError(
            f"NIDS_AUTH_MODE=open is for loopback development only; this server is bound to {where}"
            + (" in a container" if containerized else "")
            + ": unset NIDS_AUTH_MODE (required) and give callers tokens"
        )
    if setting in ("open", "required"):
        return setting, "NIDS_AUTH_MODE"  # type: ignore[return-value]
    if containerized:
        return "required", "in a container"
    if local:
        return "open", f"bound to loopback {where}"
    return "required", f"bound to {where}"


# --- checking a caller -----------------------------------------------------------------------------------------
def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one, or for `Bearer` and nothing (what
    `-H "authorization: Bearer $UNSET_VARIABLE"` sends: a caller without a token); 401 for another scheme."""
    if authorization is None or not authorization.strip():
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip() or None


def require(book: TokenBook, scope: Role, token: str | None) -> Caller:
    """The caller, if the token has `scope`: 403 with none configured, 401 without a token, 403 for a wrong one."""
    if not book.configured(scope):
        raise Forbidden(f"refused: no {scope} token is configured; {TOKEN_HOWTO[scope]}")
    if token is None:
        raise Unauthenticated(f"this route needs a token of scope {scope}: send 'Authorization: Bearer <token>'")
    caller = book.identify(token)
    if caller is None:
        raise Forbidden("the bearer token is not valid")
    if not caller.can(scope):
        raise Forbidden(f"token {caller.label!r} lacks scope {scope}")
    return caller


def admit(policy: AccessPolicy, access: Access, token: str | None) -> Caller | None:
    """The caller of a request to a route needing `access` (None: public route, no token), or the refusal."""
    if access.minimum == Role.PUBLIC:
        return None  # a public route answers whatever is sent (a probe's or a scraper's header is not checked)
    if token is None and policy.mode == "open" and access.minimum == Role.VIEWER:
        return Caller(ANONYMOUS, Role.VIEWER)  # open mode: no token reads as a viewer, and nothing more
    return require(policy.book, access.minimum, token)


def optional(book: TokenBook, scope: Role, token: str | None) -> Caller | None:
    """The caller when a valid token of `scope` is sent, None without a token; 403 for a wrong one."""
    if token is None:
        return None
    return require(book, scope, token)


# --- FastAPI dependencies (the guard has already admitted the request; these name the caller to the route) ------
def admin_caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
    return require(token_book(), Role.ADMIN, bearer(authorization))


def request_caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller | None:
    """The caller AccessGuard admitted (whether it may enforce is `Caller.enforces`); for an app used without the
    guard, the bearer token's caller (None without a token; 403 for a wrong one)."""
    state: dict[str, Any] = request.scope.get("state", {})
    if "caller" in state:
        return state["caller"]
    return optional(token_book(), Role.VIEWER, bearer(authorization))


AdminCaller = Annotated[Caller, Depends(admin_caller)]
RequestCaller = Annotated[Caller | None, Depends(request_caller)]


def caller_of(ctx: bentoml.Context | None) -> Caller | None:
    """The caller AccessGuard admitted for this request (None: an in-process call)."""
    if ctx is None:
        return None
    state: dict[str, Any] = ctx.request.scope.get("state", {})
    return state.get("caller")


if __name__ == "__main__":  # python -m nids.serving.auth < token: the sha256 line of NIDS_TOKENS_FILE
    print(digest(sys.stdin.readline().strip()))
