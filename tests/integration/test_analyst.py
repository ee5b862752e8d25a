"""The analyst's loop over real HTTP (issue 21): explanations, feedback, the shadow model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from loadtest.payloads import load_pool

from .conftest import Server, logged_predictions

pytestmark = [pytest.mark.integration]

ADMIN_TOKEN = "analyst-admin-token"
SETTINGS = {"NIDS_PREDICTION_LOG_FLUSH_SECONDS": "0.1", "NIDS_ADMIN_TOKEN": ADMIN_TOKEN}
ANALYST = {"authorization": f"Bearer {ADMIN_TOKEN}"}


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


def metric(http: httpx.Client, line_start: str) -> float | None:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_feedback_round_trip_into_statistics_audit_and_metrics(http: httpx.Client) -> None:
    flows = [{**flow, "flow_id": f"fb-{i}"} for i, flow in enumerate(load_pool("threat")[:30])]
    answered = http.post("/detect_threat", json={"flows": flows})
    assert answered.status_code == 200
    probability = {p["flow_id"]: p["attack_probability"] for p in answered.json()}
    predictions = logged_predictions(http, {flow["flow_id"] for flow in flows})
    attack = next(p for p in predictions if p["threat_prediction"]["is_attack"])
    benign = next(p for p in predictions if not p["threat_prediction"]["is_attack"])
    version = attack["threat_prediction"]["model_version"]
    path = f"/api/v1/predictions/{attack['traffic_data_id']}/feedback"

    assert http.post(path, json={"verdict": "false_positive"}).status_code == 401
    assert http.post(path, json={"verdict": "false_positive"}, headers={"authorization": "Bearer x"}).status_code == 403
    assert (
        http.post(
            "/api/v1/predictions/999999999/feedback", json={"verdict": "true_positive"}, headers=ANALYST
        ).status_code
        == 404
    )
    refused = http.post(path, json={"verdict": "true_negative"}, headers=ANALYST)
    assert refused.status_code == 400 and refused.json()["detail"][0]["loc"] == ["body", "verdict"]
    unknown = http.post(path, json={"verdict": "maybe"}, headers=ANALYST)
    assert unknown.status_code == 400 and "verdict" in unknown.text

    given = http.post(path, json={"verdict": "false_positive", "note": "a scanner we run"}, headers=ANALYST)
    assert given.status_code == 200, given.text
    assert (given.json()["analyst"], given.json()["revisions"], given.json()["label"]) == ("admin", 1, "normal")
    benign_path = f"/api/v1/predictions/{benign['traffic_data_id']}/feedback"
    assert http.post(benign_path, json={"verdict": "false_negative"}, headers=ANALYST).status_code == 200
    stats = {c["model_version"]: c for c in http.get("/api/v1/predictions/stats").json()["feedback"]}
    assert (stats[version]["false_positive"], stats[version]["false_negative"], stats[version]["precision"]) == (
        1,
        1,
        0.0,
    )

    again = http.post(path, json={"verdict": "true_positive"}, headers=ANALYST).json()
    assert (again["verdict"], again["revisions"]) == ("true_positive", 2)
    assert http.get(path).json()["verdict"] == "true_positive"
    counts = {c["model_version"]: c for c in http.get("/api/v1/predictions/stats").json()["feedback"]}[version]
    assert (counts["total"], counts["true_positive"], counts["false_positive"], counts["precision"]) == (2, 1, 0, 1.0)
    assert counts["false_negative_rate"] == 0.5
    assert metric(http, f'nids_feedback_precision{{model_version="{version}"}}') == 1.0
    assert metric(http, f'nids_feedback_false_negative_rate{{model_version="{version}"}}') == 0.5
    events = http.get("/api/v1/models/events/audit").json()
    audited = [e for e in events if e["action"] == "prediction_feedback"]
    assert len(audited) == 3 and audited[0]["actor"] == "admin"

    explanation = http.get(f"/api/v1/predictions/{attack['traffic_data_id']}/explanation", params={"top": 3}).json()
    assert explanation["explained_class"] == "attack" and len(explanation["top_features"]) == 3
    assert abs(explanation["score"] - probability[attack["flow_id"]]) < 1e-5
    assert http.get("/api/v1/predictions/999999999/explanation").status_code == 404
