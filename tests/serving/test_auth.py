"""Tokens and scopes (nids.serving.auth): settings and tokens file, hashed at rest, the refusals and their words."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from nids.core.settings import Settings

with warnings.catch_warnings():  # importing BentoML warns about its own pydantic use
    warnings.simplefilter("ignore", DeprecationWarning)
    from nids.serving.auth import Caller, Forbidden, Role, TokenBook, Unauthenticated, bearer, digest, optional, require


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
    ("header", "token"), [(None, None), ("", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc")]
)
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_another_scheme_is_401() -> None:
    with pytest.raises(Unauthenticated):
        bearer("Basic dXNlcjpwYXNz")
