"""Short-lived single-use tickets for /ws/realtime: browsers cannot set an Authorization header on a WebSocket, and
a token in a URL ends up in logs and history. A caller with a viewer token asks `GET /api/v1/realtime/ticket`
and opens `/ws/realtime?ticket=...` within TICKET_SECONDS.

A ticket is `<payload>.<mac>`: the payload names the caller (label, scope), the expiry and a random nonce; the
mac is HMAC-SHA256 under a key derived from the deployment's configured tokens (their values where set in the
environment, the digests of the tokens file), so every worker of a server checks it without shared state. Used
nonces are recorded as files (O_CREAT | O_EXCL) in the server's private directory (nids.serving.rundir): a ticket
opens one connection on one server, ever. A ticket whose label no longer has a token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from nids.core.settings import Settings
from nids.serving.auth import ANONYMOUS, AccessPolicy, Caller, Forbidden, Role
from nids.serving.rundir import open_private

TICKET_SECONDS = 30.0
USED_DIR = "tickets"


def ticket_key(settings: Settings, policy: AccessPolicy) -> bytes:
    material = hashlib.sha256(b"nids-realtime-ticket\0")
    for secret in (settings.admin_token, settings.sensor_token, settings.viewer_token):
        material.update((secret.get_secret_value() if secret is not None else "").encode() + b"\0")
    for token in policy.book.tokens:
        material.update(f"{token.label}\0{token.scope}\0{token.sha256}\0".encode())
    return material.digest()


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def issue(key: bytes, caller: Caller, now: float | None = None) -> str:
    expires = (now if now is not None else time.time()) + TICKET_SECONDS
    body = {"label": caller.label, "scope": caller.scope.value, "exp": expires, "nonce": secrets.token_hex(16)}
    payload = base64.urlsafe_b64encode(json.dumps(body, sort_keys=True).encode()).decode().rstrip("=")
    return f"{payload}.{_mac(key, payload)}"


def redeem(key: bytes, ticket: str, policy: AccessPolicy, used: Path, now: float | None = None) -> Caller:
    """The caller a ticket was issued to, once; Forbidden for a forged, expired, reused or revoked ticket."""
    now = now if now is not None else time.time()
    payload, _, mac = ticket.partition(".")
    if not payload or not hmac.compare_digest(_mac(key, payload), mac):
        raise Forbidden("the WebSocket ticket is not valid: ask GET /api/v1/realtime/ticket for one")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if body["exp"] < now:
        raise Forbidden(f"the WebSocket ticket expired (tickets last {TICKET_SECONDS:g} s): ask for a new one")
    caller = Caller(str(body["label"]), Role(body["scope"]))
    known = {(token.label, token.scope) for token in policy.book.tokens}
    if (caller.label, caller.scope) not in known and not (caller.label == ANONYMOUS and policy.mode == "open"):
        raise Forbidden("the WebSocket ticket's token is no longer configured")
    _forget_expired(used, now)
    try:
        os.close(open_private(used / str(body["nonce"]), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        raise Forbidden("the WebSocket ticket was already used: a ticket opens one connection") from None
    return caller


def _forget_expired(used: Path, now: float) -> None:
    """Nonces of tickets that expired can be forgotten: an expired ticket is refused anyway."""
    for entry in used.iterdir():
        try:
            if entry.stat(follow_symlinks=False).st_mtime < now - 2 * TICKET_SECONDS:
                entry.unlink()
        except FileNotFoundError:  # another worker forgot it first
            continue
