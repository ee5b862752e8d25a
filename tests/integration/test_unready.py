"""A corrupted model file: the server starts but is never ready and serves no model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, copy_store

pytestmark = pytest.mark.integration

THREAT_MESSAGE = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "original_threat_message.json").read_text()
)


@pytest.fixture(scope="module")
def corrupted(model_store: Any, serve: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    home = copy_store(model_store.home, tmp_path_factory.mktemp("corrupted-store"))
    name, version = model_store.threat_tag.split(":")
    onnx = home / "models" / name / version / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    onnx.write_bytes(bytes(data))
    return serve(home)


def test_readyz_is_503_with_the_reason(corrupted: Server) -> None:
    assert httpx.get(f"{corrupted.url}/livez").status_code == 200
    response = httpx.get(f"{corrupted.url}/readyz")
    assert response.status_code == 503
    assert "model.onnx does not match its recorded sha256" in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/detect_threat", {"flows": [THREAT_MESSAGE]}),
        ("/classify_attack", {"flows": []}),
        ("/analyze", {"flows": [THREAT_MESSAGE]}),
        ("/model_info", {}),
    ],
)
def test_model_apis_are_503_with_the_reason(corrupted: Server, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(f"{corrupted.url}{path}", json=body)
    assert response.status_code == 503
    assert "sha256" in response.json()["error"]


def test_self_heal_needs_no_model(corrupted: Server) -> None:
    response = httpx.post(f"{corrupted.url}/self_heal", json={"events": [{"attack_type": "PortScan"}]})
    assert response.status_code == 200
    assert response.json()[0]["action_type"] == "alert_admin"


def test_metrics_report_no_model_served(corrupted: Server) -> None:
    metrics = httpx.get(f"{corrupted.url}/metrics").text
    assert "nids_models_ready 0.0" in metrics
    assert "nids_active_model{" not in metrics
