"""The analyst's loop over real HTTP (issue 21): explanations, feedback, the shadow model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from loadtest.payloads import load_pool

from .conftest import Server

pytestmark = [pytest.mark.integration]

SETTINGS = {"NIDS_PREDICTION_LOG_FLUSH_SECONDS": "0.1"}


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    return serve(model_store.home, **SETTINGS)


def test_explain_on_the_batched_apis_and_analyze(http: httpx.Client) -> None:
    threat, attack = load_pool("threat")[:3], load_pool("attack")[:3]
    plain = http.post("/detect_threat", json={"flows": threat})
    explained = http.post("/detect_threat", params={"explain": 3}, json={"flows": threat})
    assert plain.status_code == explained.status_code == 200, explained.text
    assert all("explanation" not in p for p in plain.json())
    for before, after in zip(plain.json(), explained.json(), strict=True):
        explanation = after.pop("explanation")
        assert after == before  # the same prediction, explained
        assert len(explanation["top_features"]) == 3
        shown = sum(c["contribution"] for c in explanation["top_features"])
        assert abs(explanation["base_value"] + shown + explanation["other_features"] - explanation["score"]) < 1e-9
        assert explanation["explained_class"] == ("attack" if before["is_attack"] else "normal")
    # the body field on the twin, the query parameter on classify_attack
    body = http.post("/detect_threat_explained", json={"flows": threat, "explain": 2}).json()
    assert [len(p["explanation"]["top_features"]) for p in body] == [2, 2, 2]
    attacks = http.post("/classify_attack?explain=4", json={"flows": attack})
    assert attacks.status_code == 200, attacks.text
    assert [p["explanation"]["explained_class"] for p in attacks.json()] == [
        p["attack_type_name"] for p in attacks.json()
    ]
    analysis = http.post("/analyze", params={"explain": 2}, json={"flows": [*threat, *attack]}).json()
    assert [len(r["explanation"]["top_features"]) for r in analysis["results"]] == [2] * 6
    assert all(r["explanation"] is None for r in http.post("/analyze", json={"flows": threat}).json()["results"])


@pytest.mark.parametrize("value", ["0", "43", "many", "-1"])
def test_a_bad_explain_count_is_a_400_naming_it(http: httpx.Client, value: str) -> None:
    response = http.post("/detect_threat", params={"explain": value}, json={"flows": load_pool("threat")[:1]})
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "explain"]
    if value != "0":  # analyze takes 0 (no explanation)
        assert http.post("/analyze", params={"explain": value}, json={"flows": []}).status_code == 400
    body = http.post("/analyze", json={"flows": [], "explain": 99})
    assert body.status_code == 400 and "explain" in body.text
