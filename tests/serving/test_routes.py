"""The lifecycle routes in-process (FastAPI's TestClient) for configurations the integration server lacks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # BentoML's pydantic use, starlette's httpx notice: not ours
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

    from nids.models.artifacts import load_model
    from nids.models.lifecycle import Lifecycle
    from nids.models.registry import ModelRegistry
    from nids.models.state import open_lifecycle_store
    from nids.serving.routes import models as model_routes


@pytest.fixture
def client(model_store: Any, tmp_path: Path) -> Iterator[TestClient]:
    store = open_lifecycle_store(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    lifecycle = Lifecycle(store, ModelRegistry(), load_model)
    lifecycle.bootstrap({"threat_detector": model_store.threat_tag, "attack_classifier": model_store.attack_tag})
    model_routes.app.state.lifecycle = lifecycle
    with TestClient(model_routes.app) as client:
        yield client
    store.close()


def test_without_an_admin_token_configured_writes_are_refused_saying_how(client: TestClient, model_store) -> None:
    response = client.post(f"/{model_store.threat_tag}/activate", headers={"authorization": "Bearer x"})
    assert response.status_code == 403
    assert "no admin token is configured; set NIDS_ADMIN_TOKEN" in response.json()["error"]


def test_without_a_signing_key_uploads_are_refused_saying_how(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nids.core.settings import get_settings

    monkeypatch.setenv("NIDS_ADMIN_TOKEN", "admin-secret")
    get_settings.cache_clear()
    response = client.post(
        "/upload",
        files={"file": ("p.bentomodel", b"anything")},
        data={"model_type": "threat_detector"},
        headers={"authorization": "Bearer admin-secret"},
    )
    assert response.status_code == 403
    assert "no model signing key is configured; set NIDS_MODEL_SIGNING_KEY" in response.json()["error"]


def test_reads_need_no_token(client: TestClient, model_store) -> None:
    listed = client.get("/")
    assert listed.status_code == 200
    assert {e["tag"] for e in listed.json() if e["is_active"]} == {model_store.threat_tag, model_store.attack_tag}


def test_a_name_without_versions_lists_empty(model_store) -> None:
    from nids.models.lifecycle import _store_versions

    assert _store_versions("never_stored_model") == []
    assert [str(m.tag) for m in _store_versions("threat_detector")] == [model_store.threat_tag]


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/a/b/c/d", 404), ("PUT", "/", 405)])
def test_unknown_paths_and_methods_answer_in_the_error_shape(client: TestClient, method: str, path: str, status: int):
    response = client.request(method, path)
    assert response.status_code == status and set(response.json()) == {"error"}


def test_export_is_bounded_in_size_and_rate(client: TestClient, model_store, monkeypatch: pytest.MonkeyPatch) -> None:
    from nids.core.settings import get_settings

    admin = {"authorization": "Bearer admin-secret"}
    monkeypatch.setenv("NIDS_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("NIDS_MODEL_MAX_PACKAGE_BYTES", "1000")
    get_settings.cache_clear()
    too_large = client.get(f"/{model_store.threat_tag}/export", headers=admin)
    assert too_large.status_code == 413 and "NIDS_MODEL_MAX_PACKAGE_BYTES" in too_large.json()["error"]
    monkeypatch.setenv("NIDS_MODEL_MAX_PACKAGE_BYTES", str(256 * 1024 * 1024))
    monkeypatch.setenv("NIDS_MODEL_MAX_EXPORTS_PER_MINUTE", "2")
    get_settings.cache_clear()
    answers = [client.get(f"/{model_store.threat_tag}/export", headers=admin) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert "NIDS_MODEL_MAX_EXPORTS_PER_MINUTE" in answers[2].json()["error"]
    assert client.get(f"/{model_store.threat_tag}/export").status_code == 401
