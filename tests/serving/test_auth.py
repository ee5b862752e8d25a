"""Tokens and scopes (nids.serving.auth): settings and tokens file, hashed at rest, the refusals and their words."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from nids.core.settings import Settings

with warnings.catch_warnings():  # importing BentoML warns about its own pydantic use
    warnings.simplefilter("ignore", DeprecationWarning)
    from nids.core.errors import NotFound
    from nids.serving.auth import (
        AccessPolicy,
        Caller,
        Forbidden,
        MethodNotAllowed,
        Role,
        TokenBook,
        Unauthenticated,
        admit,
        auth_mode,
        bearer,
        digest,
        optional,
        require,
        route_table,
    )


def book(**settings: str) -> TokenBook:
    return TokenBook.from_settings(Settings(**settings))


def test_admin_and_sensor_tokens_from_settings_are_kept_as_digests() -> None:
    tokens = book(admin_token="a" * 32, sensor_token="s" * 32)
    assert {(t.label, t.scope) for t in tokens.tokens} == {("admin", Role.ADMIN), ("sensor", Role.SENSOR)}
    assert all("a" * 32 not in repr(t) and len(t.sha256) == 64 for t in tokens.tokens)
    assert tokens.identify("a" * 32) == Caller("admin", Role.ADMIN)
    assert tokens.identify("s" * 32) == Caller("sensor", Role.SENSOR)
    assert tokens.identify("nope") is None


def test_tokens_file_adds_labelled_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    entries = [
        {"label": "ci-deployer", "scope": "admin", "sha256": digest("deploy-secret")},
        {"label": "sensor-dc1", "scope": "sensor", "sha256": digest("dc1-secret").upper()},
    ]
    path.write_text(yaml.safe_dump(entries))
    tokens = book(tokens_file=str(path))
    assert tokens.identify("deploy-secret") == Caller("ci-deployer", Role.ADMIN)
    assert tokens.identify("dc1-secret") == Caller("sensor-dc1", Role.SENSOR)
    assert "deploy-secret" not in path.read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [("- {label: x, scope: root, sha256: abc}", "root"), ("- {label: x, scope: admin, sha256: abc}", "64 hex")],
)
def test_a_bad_tokens_file_names_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        book(tokens_file=str(path))


def test_refusals() -> None:
    tokens = book(admin_token="admin-secret", sensor_token="sensor-secret")
    with pytest.raises(Unauthenticated, match="Authorization: Bearer"):
        require(tokens, Role.ADMIN, None)
    with pytest.raises(Forbidden, match="not valid"):
        require(tokens, Role.ADMIN, "guess")
    with pytest.raises(Forbidden, match="lacks scope admin"):
        require(tokens, Role.ADMIN, "sensor-secret")
    assert require(tokens, Role.SENSOR, "admin-secret").label == "admin"  # admin includes sensor
    assert optional(tokens, Role.SENSOR, None) is None
    with pytest.raises(Forbidden):
        optional(tokens, Role.SENSOR, "guess")


def test_without_an_admin_token_writes_are_refused_saying_how() -> None:
    with pytest.raises(Forbidden, match="no admin token is configured; set NIDS_ADMIN_TOKEN"):
        require(book(sensor_token="s"), Role.ADMIN, "anything")


@pytest.mark.parametrize(
    ("header", "token"), [(None, None), ("", None), ("Bearer ", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc")]
)
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_another_scheme_is_401() -> None:
    with pytest.raises(Unauthenticated):
        bearer("Basic dXNlcjpwYXNz")


def test_viewer_tokens_and_the_scope_order() -> None:
    tokens = book(viewer_token="v" * 32, sensor_token="s" * 32)
    viewer = tokens.identify("v" * 32)
    assert viewer == Caller("viewer", Role.VIEWER) and viewer.can(Role.VIEWER) and not viewer.can(Role.SENSOR)
    assert require(tokens, Role.VIEWER, "s" * 32).label == "sensor"  # a sensor reads too
    with pytest.raises(Forbidden, match="lacks scope sensor"):
        require(tokens, Role.SENSOR, "v" * 32)
    with pytest.raises(Forbidden, match="no viewer token is configured; set NIDS_VIEWER_TOKEN"):
        require(book(), Role.VIEWER, "anything")


@pytest.mark.parametrize(
    ("setting", "address", "containerized", "mode"),
    [
        ("auto", "127.0.0.1", False, "open"),
        ("auto", "::1", False, "open"),
        ("auto", "0.0.0.0", False, "required"),
        ("auto", None, False, "required"),  # unknown: fail closed
        ("auto", "127.0.0.1", True, "required"),
        ("required", "127.0.0.1", False, "required"),
        ("open", "127.0.0.1", False, "open"),
    ],
)
def test_auth_mode(setting: str, address: str | None, containerized: bool, mode: str) -> None:
    assert auth_mode(setting, address, containerized)[0] == mode


@pytest.mark.parametrize(("address", "containerized"), [("0.0.0.0", False), (None, False), ("127.0.0.1", True)])
def test_open_mode_off_loopback_refuses_to_start(address: str | None, containerized: bool) -> None:
    with pytest.raises(ValueError, match="NIDS_AUTH_MODE=open is for loopback development only"):
        auth_mode("open", address, containerized)


def test_the_route_table_denies_what_it_does_not_list() -> None:
    table = route_table(Settings())
    assert table.access("GET", "/api/v1/models/threat_detector:abc").scope == Role.VIEWER
    assert table.access("GET", "/api/v1/models/threat_detector:abc/export").scope == Role.ADMIN
    assert table.access("HEAD", "/livez").scope == Role.PUBLIC
    assert table.access("GET", "/api/v1/models/").scope == Role.VIEWER
    with pytest.raises(NotFound, match="no route /debug"):
        table.access("GET", "/debug")
    with pytest.raises(MethodNotAllowed, match="allowed: POST"):
        table.access("GET", "/self_heal")
    assert route_table(Settings(metrics_public=False)).access("GET", "/metrics").scope == Role.VIEWER


def test_open_mode_reads_as_a_viewer_and_required_mode_needs_a_token() -> None:
    tokens = book(viewer_token="v" * 32)
    table = route_table(Settings())
    reads, heal = table.access("GET", "/api/v1/predictions"), table.access("POST", "/self_heal")
    open_policy = AccessPolicy(tokens, table, "open", "test")
    assert admit(open_policy, reads, None) == Caller("anonymous", Role.VIEWER)
    assert not admit(open_policy, heal, None).enforces  # answered as dry-run
    with pytest.raises(Forbidden):
        admit(open_policy, reads, "wrong")
    with pytest.raises(Forbidden, match="no admin token"):  # open mode opens reads, never writes
        admit(open_policy, table.access("POST", "/healing_enforcement"), None)
    required = AccessPolicy(tokens, table, "required", "test")
    with pytest.raises(Unauthenticated):
        admit(required, reads, None)
    assert admit(required, table.access("GET", "/livez"), None) is None
