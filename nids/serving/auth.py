"""Access control: bearer tokens with scopes, for the lifecycle routes and the BentoML APIs alike.

Tokens come from settings: NIDS_ADMIN_TOKEN (label `admin`, scope admin), NIDS_SENSOR_TOKEN (label `sensor`,
scope sensor) and NIDS_TOKENS_FILE, a YAML list of `{label, scope, sha256}` (the token's sha256, never the token:
`python -m nids.serving.auth` prints it). Only sha256 digests are kept in memory; a presented token is hashed and
compared with every known digest in constant time (hmac.compare_digest); no token is ever logged.

- `admin`: every lifecycle write, healing_revert and healing_enforcement. No token: 401; a wrong or
  insufficient one: 403; no admin token configured: 403 saying how to configure one.
- `sensor` (admin includes it): callers whose events may trigger enforced actions (self_heal, analyze,
  analyze_csv, POST /api/v1/upload/csv). Without a token the call is answered but nothing it decides is
  enforced (dry-run, reason "caller not authorised to enforce"); a wrong token is 403.

FastAPI routes use the typed dependencies `AdminCaller` and `SensorCaller`; the BentoML APIs are guarded by the
`AccessGuard` ASGI middleware, which leaves the caller in `request.state.caller` (`caller_of(ctx)`).
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import yaml
from fastapi import Depends, Header

from nids.core.errors import NIDSError
from nids.core.settings import Settings, get_settings
from nids.serving.asgi import ASGIApp, Receive, Scope, Send
from nids.serving.errors import error_response

# the BentoML APIs that need a scope (the mounted FastAPI routes declare theirs as dependencies)
ADMIN_PATHS = frozenset({"/healing_revert", "/healing_enforcement"})
SENSOR_PATHS = frozenset({"/self_heal", "/analyze", "/analyze_csv"})
TOKEN_HOWTO = {
    "admin": "set NIDS_ADMIN_TOKEN (e.g. `openssl rand -hex 32`) or add a token of scope admin to NIDS_TOKENS_FILE",
    "sensor": "set NIDS_SENSOR_TOKEN or add a token of scope sensor to NIDS_TOKENS_FILE",
}


class Role(StrEnum):
    ADMIN = "admin"
    SENSOR = "sensor"


class Unauthenticated(NIDSError):
    status_code = HTTPStatus.UNAUTHORIZED


class Forbidden(NIDSError):
    status_code = HTTPStatus.FORBIDDEN


@dataclass(frozen=True)
class Caller:
    """Who a valid token belongs to: its label (recorded in the audit trail) and its scope."""

    label: str
    scope: Role

    def can(self, scope: Role) -> bool:
        return self.scope == Role.ADMIN or self.scope == scope


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
        for secret, label in ((settings.admin_token, Role.ADMIN), (settings.sensor_token, Role.SENSOR)):
            if secret is not None and secret.get_secret_value():
                tokens.append(TokenDigest(label.value, label, digest(secret.get_secret_value())))
        if settings.tokens_file is not None:
            tokens.extend(read_tokens_file(settings.tokens_file))
        return cls(tokens)

    def configured(self, scope: Role) -> bool:
        return any(token.scope in (scope, Role.ADMIN) for token in self.tokens)

    def identify(self, token: str) -> Caller | None:
        """The caller of a presented token (compared with every digest, in constant time), or None."""
        presented = digest(token)
        found = None
        for known in self.tokens:
            if hmac.compare_digest(presented, known.sha256) and found is None:
                found = Caller(known.label, known.scope)
        return found


def read_tokens_file(path: Path) -> list[TokenDigest]:
    """The tokens file: a YAML list of {label, scope: admin|sensor, sha256: <64 hex digits>}."""
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        tokens = [
            TokenDigest(str(entry["label"]), Role(entry["scope"]), str(entry["sha256"]).lower()) for entry in entries
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"NIDS_TOKENS_FILE {path}: {type(exc).__name__}: {exc}") from exc
    for token in tokens:
        if len(token.sha256) != 64 or any(c not in "0123456789abcdef" for c in token.sha256):
            raise ValueError(f"NIDS_TOKENS_FILE {path}: token {token.label!r} needs sha256 as 64 hex digits")
    return tokens


_BOOK: list[tuple[Settings, TokenBook]] = []  # the book of the settings object it was read from


def token_book() -> TokenBook:
    """The tokens of the process's settings (read once per settings object, like the settings)."""
    settings = get_settings()
    if not _BOOK or _BOOK[0][0] is not settings:
        _BOOK[:] = [(settings, TokenBook.from_settings(settings))]
    return _BOOK[0][1]


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (None without one); 401 for another scheme."""
    if authorization is None or not authorization.strip():
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def require(book: TokenBook, scope: Role, token: str | None) -> Caller:
    """The caller, if the token has `scope`: 403 with none configured, 401 without a token, 403 for a wrong one."""
    if not book.configured(scope):
        raise Forbidden(f"this write is refused: no {scope} token is configured; {TOKEN_HOWTO[scope]}")
    if token is None:
        raise Unauthenticated(f"this API needs a token of scope {scope}: send 'Authorization: Bearer <token>'")
    caller = book.identify(token)
    if caller is None:
        raise Forbidden("the bearer token is not valid")
    if not caller.can(scope):
        raise Forbidden(f"token {caller.label!r} lacks scope {scope}")
    return caller


def optional(book: TokenBook, scope: Role, token: str | None) -> Caller | None:
    """The caller when a valid token of `scope` is sent, None without a token; 403 for a wrong one."""
    if token is None:
        return None
    return require(book, scope, token)


# --- FastAPI dependencies ------------------------------------------------------------------------------------
def admin_caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
    return require(token_book(), Role.ADMIN, bearer(authorization))


def sensor_caller(authorization: Annotated[str | None, Header()] = None) -> Caller | None:
    return optional(token_book(), Role.SENSOR, bearer(authorization))


AdminCaller = Annotated[Caller, Depends(admin_caller)]
SensorCaller = Annotated[Caller | None, Depends(sensor_caller)]


# --- the BentoML APIs ------------------------------------------------------------------------------------------
class AccessGuard:
    """ASGI middleware: admin scope on ADMIN_PATHS, an optional sensor token on SENSOR_PATHS.

    The caller (None: unauthenticated) is left in the request's state for the API to read with `caller_of`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or (path not in ADMIN_PATHS and path not in SENSOR_PATHS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw = headers.get(b"authorization")
        try:
            token = bearer(raw.decode("latin-1") if raw is not None else None)
            book = token_book()
            if path in ADMIN_PATHS:
                caller: Caller | None = require(book, Role.ADMIN, token)
            else:
                caller = optional(book, Role.SENSOR, token)
        except NIDSError as error:
            await error_response(error)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def caller_of(ctx: bentoml.Context | None) -> Caller | None:
    """The caller AccessGuard identified for this request (None: no token, or an in-process call)."""
    if ctx is None:
        return None
    state: dict[str, Any] = ctx.request.scope.get("state", {})
    return state.get("caller")


if __name__ == "__main__":  # python -m nids.serving.auth < token: the sha256 line of NIDS_TOKENS_FILE
    print(digest(sys.stdin.readline().strip()))
