"""A challenger in the shadow of the active version over real HTTP (issue 21), on a private copy of the store.

The challenger is a real attack classifier trained on another slice (other seed, small forest) into the session
store, copied into the server's private store and removed from the session store again (no other module sees it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest

from loadtest.payloads import load_pool
from nids.core.columns import validate_flows
from nids.core.features import ATTACK_MODEL_NAME
from nids.core.model import LoadedModel
from nids.models.artifacts import load_model
from nids.models.shadow import predicted
from training.attack import AttackConfig, train_attack

from .conftest import Server, copy_store, logged_predictions, wait_for

pytestmark = [pytest.mark.integration]

ADMIN_TOKEN = "shadow-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MODELS = "/api/v1/models"


@dataclass(frozen=True)
class Challenger:
    home: Path
    tag: str
    active: LoadedModel
    model: LoadedModel


@pytest.fixture(scope="module")
def challenger(model_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Challenger:
    trained = train_attack(AttackConfig(reports_dir=None, max_rows_per_class=60, n_estimators=3, max_depth=4, seed=7))
    tag = str(trained.model.tag)
    try:
        home = copy_store(model_store.home, tmp_path_factory.mktemp("shadow-store"))
        return Challenger(home, tag, load_model(model_store.attack_tag), load_model(tag))
    finally:
        bentoml.models.delete(tag)


@pytest.fixture(scope="module")
def server(model_store: Any, challenger: Challenger, serve: Callable[..., Server]) -> Server:
    return serve(
        challenger.home,
        NIDS_ADMIN_TOKEN=ADMIN_TOKEN,
        NIDS_THREAT_MODEL_TAG=model_store.threat_tag,
        NIDS_ATTACK_MODEL_TAG=model_store.attack_tag,
        NIDS_SHADOW_QUEUE_BATCHES="1",  # one batch waits at most: bulk load must shed
        NIDS_PREDICTION_LOG_FLUSH_SECONDS="0.1",
        NIDS_DRIFT_REFRESH_SECONDS="1",
    )


def report(http: httpx.Client) -> dict[str, Any]:
    response = http.get(f"{MODELS}/shadow/report", params={"model_type": ATTACK_MODEL_NAME})
    assert response.status_code == 200, response.text
    return response.json()


def compared_reaches(http: httpx.Client, n: int) -> dict[str, Any]:
    return wait_for(lambda: (body := report(http))["flows_compared"] >= n and body, 60)


def shed(http: httpx.Client) -> float:
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("nids_shadow_flows_total{") and 'outcome="shed"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_shadow_report_matches_a_direct_comparison_and_sheds_under_bulk_load(
    http: httpx.Client, challenger: Challenger
) -> None:
    path = f"{MODELS}/{challenger.tag}/shadow"
    assert http.post(path, params={"share": 1}).status_code == 401
    assert http.post(path, params={"share": 0}, headers=ADMIN).status_code == 400
    assert http.post(f"{MODELS}/{challenger.active.tag}/shadow", headers=ADMIN).status_code == 409
    started = http.post(path, params={"share": 1}, headers=ADMIN)
    assert started.status_code == 200, started.text
    assert started.json()["tag"] == challenger.tag

    flows = [{**flow, "flow_id": f"s-{i}"} for i, flow in enumerate(load_pool("attack")[:300])]
    for start in range(0, len(flows), 50):  # one request at a time, each compared before the next (queue of 1)
        assert http.post("/classify_attack", json={"flows": flows[start : start + 50]}).status_code == 200
        body = compared_reaches(http, start + 50)
    assert body["flows_compared"] == len(flows)

    batch = validate_flows("attack", flows)
    active, _ = predicted(challenger.active, batch)
    shadow, _ = predicted(challenger.model, batch)
    assert body["agreement_rate"] == round(float(np.mean(active == shadow)), 6)
    assert body["agreement_rate"] < 1.0, "the challenger should disagree somewhere"
    names = challenger.active.class_names
    direct: dict[tuple[str, str], int] = {}
    for a, s in zip(active.tolist(), shadow.tolist(), strict=True):
        direct[(names[a], names[s])] = direct.get((names[a], names[s]), 0) + 1
    assert {(p["active_class"], p["shadow_class"]): p["flows"] for p in body["confusion"]} == direct
    assert sum(body["score_distribution"]["active"]) == sum(body["score_distribution"]["shadow"]) == len(flows)
    assert body["disagreements"] and all(d["active_class"] != d["shadow_class"] for d in body["disagreements"])
    assert body["disagreements"][0]["features"]
    assert body["active_tags"] == [challenger.active.tag] and body["running"]

    # saturating bulk load: the shadow sheds (counted), every request is answered as without it
    before = shed(http)
    bulk = load_pool("attack")[:500]
    expected = [names[c] for c in predicted(challenger.active, validate_flows("attack", bulk))[0].tolist()]

    def send(_: int) -> list[str]:
        response = http.post("/classify_attack", json={"flows": bulk})
        assert response.status_code == 200, response.text
        return [p["attack_type_name"] for p in response.json()]

    with ThreadPoolExecutor(4) as pool:  # 4 connections of 500-flow requests: batches faster than the shadow
        answers = list(pool.map(send, range(16)))
    assert all(answer == expected for answer in answers)
    assert shed(http) > before

    # stop: one call; the report stays readable
    stopped = http.post(f"{MODELS}/shadow/stop", params={"model_type": ATTACK_MODEL_NAME}, headers=ADMIN)
    assert stopped.status_code == 200 and stopped.json()["outcome"] == "stopped"
    assert (
        http.post(f"{MODELS}/shadow/stop", params={"model_type": ATTACK_MODEL_NAME}, headers=ADMIN).status_code == 404
    )
    assert report(http)["running"] is False
    events = [e["action"] for e in http.get(f"{MODELS}/events/audit").json()]
    assert "shadow_start" in events and "shadow_stopped" in events


def test_feedback_accuracy_in_the_report_and_promotion_through_the_gate(
    http: httpx.Client, challenger: Challenger
) -> None:
    flows = [{**flow, "flow_id": f"fa-{i}"} for i, flow in enumerate(load_pool("attack")[300:320])]
    assert http.post("/classify_attack", json={"flows": flows}).status_code == 200
    truth = {}
    for p in logged_predictions(http, {flow["flow_id"] for flow in flows}):
        name = p["attack_prediction"]["attack_type_name"]
        verdict = "true_negative" if name == "BENIGN" else "true_positive"
        given = http.post(
            f"/api/v1/predictions/{p['traffic_data_id']}/feedback", json={"verdict": verdict}, headers=ADMIN
        )
        assert given.status_code == 200, given.text
        truth[p["flow_id"]] = name  # the analyst confirms the active version's class
    started = http.post(f"{MODELS}/{challenger.tag}/shadow", params={"share": 0.5}, headers=ADMIN)
    assert started.status_code == 200, started.text
    body = report(http)
    assert (body["running"], body["share"], body["flows_compared"]) == (True, 0.5, 0)
    batch = validate_flows("attack", flows)
    labels = np.array([truth[flow["flow_id"]] for flow in flows])
    names = np.array(challenger.active.class_names)
    shadow_accuracy = round(float(np.mean(names[predicted(challenger.model, batch)[0]] == labels)), 6)
    assert body["feedback"] == {"flows": len(flows), "active_accuracy": 1.0, "shadow_accuracy": shadow_accuracy}

    promote = f"{MODELS}/shadow/promote"
    refused = http.post(promote, params={"model_type": ATTACK_MODEL_NAME}, headers=ADMIN)
    assert refused.status_code == 409, refused.text  # the small challenger scores below the active version
    assert report(http)["running"] is True
    forced = http.post(
        promote, params={"model_type": ATTACK_MODEL_NAME, "force": "true", "reason": "test"}, headers=ADMIN
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["is_active"] is True
    assert report(http)["outcome"] == "promoted"
    wait_for(lambda: http.post("/model_info", json={}).json()["attack"]["tag"] == challenger.tag, 30)


GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
# PromQL words that are not metric names
PROMQL = {"sum", "max", "min", "by", "rate", "increase", "histogram_quantile", "le"}


def queried_metrics() -> set[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "nids.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 15
    names = set()
    for expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^]]*\]", "", expr))
        without_groups = re.sub(r"by \([^)]*\)", "", without_labels)
        names |= {word for word in re.findall(r"[a-z_][a-z0-9_]*", without_groups) if word not in PROMQL}
    return names


def test_every_metric_the_grafana_dashboard_queries_is_exported(http: httpx.Client) -> None:
    """Every series the dashboard queries is made to exist here, by the events that export it, each exported on
    the request that made it (no reliance on the tests above, on their order, or on a refresh timer)."""
    names = queried_metrics()
    assert {"nids_shadow_flows_total", "nids_feedback_precision", "nids_drift_psi"} <= names
    # predictions (request, prediction and log series), enough for drift (NIDS_DRIFT_MIN_ROWS, 100)
    flows = [{**flow, "flow_id": f"g-{i}"} for i, flow in enumerate(load_pool("attack")[320:440])]
    assert http.post("/classify_attack", json={"flows": flows}).status_code == 200
    logged = logged_predictions(http, {flow["flow_id"] for flow in flows})
    # a verdict of each side: precision, false-positive and false-negative rates all have a denominator
    attack = next(p for p in logged if p["attack_prediction"]["attack_type_name"] != "BENIGN")
    benign = next(p for p in logged if p["attack_prediction"]["attack_type_name"] == "BENIGN")
    for prediction, verdict in ((attack, "true_positive"), (benign, "true_negative")):
        given = http.post(
            f"/api/v1/predictions/{prediction['traffic_data_id']}/feedback", json={"verdict": verdict}, headers=ADMIN
        )
        assert given.status_code == 200, given.text
    event = {"attack_type": "SSH-Patator", "confidence": 0.97, "src_ip": "203.0.113.9"}
    assert http.post("/self_heal", json={"events": [event]}).status_code == 200  # an action
    # the drift report once the log has the rows (the report that says so has put its PSI on /metrics)
    wait_for(lambda: any(m["overall_psi"] is not None for m in http.get("/api/v1/drift").json()["models"]), 60)
    exported = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in http.get("/metrics").text.splitlines()}
    assert names - exported == set()
    provisioning = (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    assert "uid: nids-prometheus" in provisioning
