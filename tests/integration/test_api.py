"""Every API over real HTTP against one `bentoml serve` process on the session's models."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pandas as pd
import pytest

from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURE_BY_SNAKE, THREAT_FEATURES
from nids.models.artifacts import load_reference_cases
from training.data import CIC_ORIGINAL, NSL_KDD_TEST

from .conftest import Server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*__get_pydantic_core_schema__:DeprecationWarning"),  # BentoML's client
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
THREAT_MESSAGE: dict[str, Any] = json.loads((FIXTURES / "original_threat_message.json").read_text())
ATTACK_FLOW: dict[str, Any] = json.loads((FIXTURES / "original_attack_flow.json").read_text())
RULE_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "validation_cases.json").read_text())
# small limits, so the 413 paths are cheap to reach
LIMITS = {
    "NIDS_MAX_ROWS_PER_REQUEST": "40",
    "NIDS_MAX_ROWS_PER_BATCHED_REQUEST": "20",
    "NIDS_MAX_REQUEST_BYTES": "200000",
    "NIDS_MAX_CSV_BYTES": "100000",
}
ADMIN_TOKEN = "integration-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    server = serve(model_store.home, **LIMITS, NIDS_ADMIN_TOKEN=ADMIN_TOKEN)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    return server


def post(http: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    # json.dumps writes NaN / Infinity tokens, as Python and JavaScript clients do
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json", **(headers or {})})


def predictions_total(http: httpx.Client, **labels: str) -> float:
    pattern = re.compile(r"^nids_predictions_total\{(.*)\} (\S+)$")
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        match = pattern.match(line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


@pytest.mark.parametrize("api", ["detect_threat", "classify_attack", "self_heal", "analyze", "model_info"])
def test_documented_request_bodies_succeed(http: httpx.Client, api: str) -> None:
    """docs/api.md sends these stored bodies with curl -d @tests/fixtures/<api>.json."""
    response = post(http, f"/{api}", json.loads((FIXTURES / f"{api}.json").read_text()))
    assert response.status_code == 200, response.text


def test_original_threat_message_succeeds_unchanged(http: httpx.Client, model_store: Any) -> None:
    response = post(http, "/detect_threat", {"flows": [THREAT_MESSAGE]})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()
    assert 0 <= prediction["prediction_score"] <= 1
    # the original's meaning: 0.5 and above is an attack; the model's own probability and operating point beside it
    assert prediction["threshold"] == 0.5
    assert prediction["is_attack"] == (prediction["prediction_score"] >= 0.5)
    assert prediction["is_attack"] == (prediction["attack_probability"] >= prediction["decision_threshold"])
    assert prediction["model_version"] == model_store.threat_tag


def test_original_attack_flow_under_spaced_names(http: httpx.Client, model_store: Any) -> None:
    response = post(http, "/classify_attack", {"flows": [{**ATTACK_FLOW, "flow_id": "f-1", "src_ip": "10.0.0.7"}]})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()
    assert prediction["attack_type_name"] == "SSH-Patator"
    assert ATTACK_CLASSES[prediction["attack_type_encoded"]] == prediction["attack_type_name"]
    assert len(prediction["top_classes"]) == 3
    assert (prediction["flow_id"], prediction["src_ip"]) == ("f-1", "10.0.0.7")
    assert prediction["model_version"] == model_store.attack_tag


def test_snake_case_names_give_the_same_prediction(http: httpx.Client) -> None:
    snake = {alias: ATTACK_FLOW[name] for alias, name in ATTACK_FEATURE_BY_SNAKE.items()}
    spaced, snaked = post(http, "/classify_attack", {"flows": [ATTACK_FLOW, snake]}).json()
    assert spaced == snaked


def test_reference_cases_over_http(http: httpx.Client, model_store: Any) -> None:
    for path, tag in (("/detect_threat", model_store.threat_tag), ("/classify_attack", model_store.attack_tag)):
        cases = load_reference_cases(bentoml.models.get(tag))
        response = post(http, path, {"flows": [case.features for case in cases]})
        assert response.status_code == 200, response.text
        for case, prediction in zip(cases, response.json(), strict=True):
            if path == "/detect_threat":
                got_class, got_score = int(prediction["is_attack"]), prediction["attack_probability"]
            else:
                got_class, got_score = prediction["attack_type_encoded"], prediction["confidence"]
            assert got_class == case.expected_class, case.description
            assert got_score == pytest.approx(case.expected_score, abs=case.tolerance), case.description


def test_infinity_in_flow_features_is_accepted(http: httpx.Client) -> None:
    response = post(http, "/classify_attack", {"flows": [{**ATTACK_FLOW, "Flow Bytes/s": math.inf}]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda case: f"{case['field'].strip()}-{case['type']}")
def test_every_rule_is_a_400_naming_row_field_and_rule(http: httpx.Client, case: dict[str, Any]) -> None:
    base = THREAT_MESSAGE if case["api"] == "detect_threat" else ATTACK_FLOW
    before = predictions_total(http)
    response = post(http, f"/{case['api']}", {"flows": [base, base, {**base, **case["change"]}]})
    assert response.status_code == 400, response.text
    body = response.json()
    assert [(error["loc"], error["type"]) for error in body["detail"]] == [(["flows", 2, case["field"]], case["type"])]
    assert body["detail"][0]["msg"]
    assert predictions_total(http) == before  # the whole request is refused: nothing was scored


def test_missing_feature_is_a_400(http: httpx.Client) -> None:
    flow = {name: value for name, value in THREAT_MESSAGE.items() if name != "flag"}
    response = post(http, "/detect_threat", {"flows": [flow]})
    assert response.status_code == 400
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["flows", 0, "flag"], "missing")]


def test_batch_with_bad_rows_lists_every_bad_row(http: httpx.Client) -> None:
    flows = [THREAT_MESSAGE] * 6
    flows[1] = {**THREAT_MESSAGE, "diff_srv_rate": -0.5}
    flows[4] = {**THREAT_MESSAGE, "count": "ten"}
    response = post(http, "/detect_threat", {"flows": flows})
    assert response.status_code == 400
    assert [e["loc"] for e in response.json()["detail"]] == [["flows", 1, "diff_srv_rate"], ["flows", 4, "count"]]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("not json", 400),
        ('{"flows": 3}', 400),
        ("{}", 400),
    ],
)
def test_malformed_bodies_are_400(http: httpx.Client, body: str, status: int) -> None:
    response = http.post("/detect_threat", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]


def test_too_many_rows_is_413(http: httpx.Client) -> None:
    response = post(http, "/detect_threat", {"flows": [THREAT_MESSAGE] * 21})
    assert response.status_code == 413
    assert "21 rows" in response.json()["error"] and "NIDS_MAX_ROWS_PER_BATCHED_REQUEST" in response.json()["error"]
    for path, body in (
        ("/analyze", {"flows": [THREAT_MESSAGE] * 41}),
        ("/self_heal", {"events": [{"attack_type": "BENIGN"}] * 41}),
    ):
        response = post(http, path, body)
        assert response.status_code == 413, path
        assert "NIDS_MAX_ROWS_PER_REQUEST" in response.json()["error"]


def test_too_large_body_is_413(http: httpx.Client) -> None:
    response = post(http, "/detect_threat", {"flows": [{**THREAT_MESSAGE, "flow_id": "x" * 250_000}]})
    assert response.status_code == 413
    assert "limit is 200000" in response.json()["error"]


def test_too_large_chunked_body_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known while reading
        yield b'{"flows": [{"flow_id": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}]}'

    response = http.post("/detect_threat", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "over the limit of 200000 bytes (NIDS_MAX_REQUEST_BYTES)" in response.json()["error"]


def test_too_large_body_names_the_setting(http: httpx.Client) -> None:
    body = b'{"flows": [{"flow_id": "' + b"x" * 250_000 + b'"}]}'
    response = http.post("/detect_threat", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"].endswith("the limit is 200000 (NIDS_MAX_REQUEST_BYTES)")


def test_too_large_csv_file_is_413(http: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    pd.read_csv(NSL_KDD_TEST, nrows=900).to_csv(path, index=False)  # ~127 kB: over the file limit, under the body limit
    with path.open("rb") as handle:
        response = http.post("/analyze_csv", files={"file": ("big.csv", handle, "text/csv")})
    assert response.status_code == 413
    assert "limit is 100000 (NIDS_MAX_CSV_BYTES)" in response.json()["error"]


def test_self_heal(http: httpx.Client) -> None:
    events = [
        {"attack_type": "FTP-Patator", "confidence": 0.97, "src_ip": "198.51.100.77"},
        {"attack_type": "DoS Hulk", "confidence": 0.95, "target_service": "nginx"},
        {"attack_type": 10, "confidence": 0.9},
        {"attack_type": "BENIGN"},
    ]
    response = post(http, "/self_heal", {"events": events})
    assert response.status_code == 200, response.text
    block, restart, alert, log = response.json()
    assert (block["action_type"], alert["action_type"], log["action_type"]) == ("block_ip", "alert_admin", "log_only")
    # restart_service is rate limited (1 per 300 s): the documented request may have used it already
    assert restart["action_type"] == "restart_service" or "rate limit" in restart["reason"]
    assert all(a["status"] == "dry_run" and a["action_id"] for a in (block, restart, alert, log))
    bad = post(http, "/self_heal", {"events": [{"attack_type": "Teardrop"}]})
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["events", 0, "attack_type"]


def test_audit_log_show_revert_and_stop_switch(http: httpx.Client) -> None:
    event = {"attack_type": "SSH-Patator", "confidence": 0.99, "src_ip": "203.0.113.9", "flow_id": "audit-1"}
    (action,) = post(http, "/self_heal", {"events": [event]}).json()
    listed = post(http, "/healing_actions", {"address": "203.0.113.9", "action_type": "block_ip"})
    assert listed.status_code == 200, listed.text
    assert [record["action_id"] for record in listed.json()] == [action["action_id"]]
    shown = post(http, "/healing_action", {"action_id": action["action_id"]}).json()
    assert (shown["flow_id"], shown["confidence"], shown["mode"]) == ("audit-1", 0.99, "dry_run")

    assert post(http, "/healing_revert", {"action_id": action["action_id"]}).status_code == 401  # admin only
    reverted = post(http, "/healing_revert", {"action_id": action["action_id"]}, ADMIN)
    assert reverted.status_code == 200, reverted.text
    assert reverted.json()["ended_at"] is not None
    again = post(http, "/healing_revert", {"action_id": action["action_id"]}, ADMIN)
    assert again.status_code == 409, again.text
    missing = post(http, "/healing_action", {"action_id": "no-such-id"})
    assert missing.status_code == 404 and "no-such-id" in missing.text
    bad_filter = post(http, "/healing_actions", {"address": "not-an-ip"})
    assert bad_filter.status_code == 400 and "address" in bad_filter.text

    wrong = post(http, "/healing_enforcement", {"enabled": False}, {"authorization": "Bearer wrong"})
    assert wrong.status_code == 403, wrong.text
    stopped = post(http, "/healing_enforcement", {"enabled": False}, ADMIN)
    assert stopped.status_code == 200 and stopped.json() == {"enforcement_enabled": False}
    assert post(http, "/healing_enforcement", {"enabled": True}, ADMIN).json() == {"enforcement_enabled": True}


def test_analyze(http: httpx.Client) -> None:
    flows = [THREAT_MESSAGE, {**ATTACK_FLOW, "src_ip": "192.0.2.44", "flow_id": "f-9"}]
    response = post(http, "/analyze", {"flows": flows})
    assert response.status_code == 200, response.text
    body = response.json()
    threat, attack = body["results"]
    assert threat["kind"] == "threat" and threat["attack_prediction"] is None
    assert attack["kind"] == "attack" and attack["attack_prediction"]["attack_type_name"] == "SSH-Patator"
    assert attack["self_healing_action"]["action_type"] == "block_ip"
    assert attack["flow_id"] == "f-9"
    assert body["summary"]["total"] == 2 and body["summary"]["by_attack_type"] == {"SSH-Patator": 1}
    unknown = post(http, "/analyze", {"flows": [{"src_ip": "192.0.2.1"}]})
    assert unknown.status_code == 400 and unknown.json()["detail"][0]["type"] == "unknown_flow"


def test_analyze_csv_upload(http: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "kdd.csv"
    pd.read_csv(NSL_KDD_TEST, nrows=30).to_csv(path, index=False)  # all 43 NSL-KDD columns
    with path.open("rb") as handle:
        response = http.post("/analyze_csv", files={"file": ("kdd.csv", handle, "text/csv")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["summary"]["total"] == 30
    assert {r["kind"] for r in body["results"]} == {"threat"}
    assert "label" in body["ignored_columns"] and not set(THREAT_FEATURES) & set(body["ignored_columns"])


def test_analyze_csv_limits(http: httpx.Client, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    pd.read_csv(CIC_ORIGINAL, nrows=41).to_csv(rows, index=False)
    with rows.open("rb") as handle:
        response = http.post("/analyze_csv", files={"file": ("rows.csv", handle, "text/csv")})
    assert response.status_code == 413 and "more than 40 rows" in response.json()["error"]


def test_model_info_with_the_python_client(server: Server, model_store: Any) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        info = client.model_info()
    assert info["threat"]["tag"] == model_store.threat_tag
    assert info["attack"]["tag"] == model_store.attack_tag
    assert all(case["passed"] for case in info["attack"]["reference_cases"])


def test_metrics_count_predictions(http: httpx.Client) -> None:
    before = predictions_total(http, model="threat_detector")
    assert post(http, "/detect_threat", {"flows": [THREAT_MESSAGE] * 3}).status_code == 200
    assert predictions_total(http, model="threat_detector") == before + 3
    metrics = http.get("/metrics").text
    assert "nids_models_ready 1.0" in metrics
    assert 'nids_active_model{inference_form="onnx",name="threat_detector"' in metrics
    assert "nids_reference_checks_passed" in metrics
    assert "nids_healing_actions_total" in metrics


def test_concurrent_requests_batched_together_get_their_own_rows(server: Server) -> None:
    """Adaptive batching merges the column batches of concurrent requests and splits the scores back (a request
    past max_batch_size, split by the dispatcher and merged again: test_observability's 2,000-flow requests)."""
    sizes = [1, 7, 20, 2, 13, 1, 19, 5]  # this module's server allows 20 rows per batched request

    def call(size: int, tag: str) -> tuple[int, list[dict[str, Any]]]:
        flows = [{**THREAT_MESSAGE, "flow_id": f"{tag}-{i}", "src_port": i} for i in range(size)]
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = post(client, "/detect_threat", {"flows": flows})
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=len(sizes)) as pool:
        answers = list(pool.map(call, sizes, [f"r{n}" for n in range(len(sizes))]))
    for n, (size, (status, body)) in enumerate(zip(sizes, answers, strict=True)):
        assert status == 200
        assert [p["flow_id"] for p in body] == [f"r{n}-{i}" for i in range(size)]
        assert [p["src_port"] for p in body] == list(range(size))
        assert len({p["prediction_score"] for p in body}) == 1  # the same flow everywhere: the same score


def test_batched_apis_with_the_python_client(server: Server, model_store: Any) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        threat = client.detect_threat(flows=[THREAT_MESSAGE])
        attack = client.classify_attack(flows=[ATTACK_FLOW])
    assert threat[0]["model_version"] == model_store.threat_tag and 0 <= threat[0]["prediction_score"] <= 1
    assert attack[0]["attack_type_name"] in ATTACK_CLASSES and len(attack[0]["top_classes"]) == 3


def test_the_batched_apis_document_the_flow_and_prediction_lists(http: httpx.Client) -> None:
    spec = http.get("/docs.json").json()
    for path, flow, prediction in (
        ("/detect_threat", "ThreatFlow", "ThreatPrediction"),
        ("/classify_attack", "AttackFlow", "AttackPrediction"),
    ):
        operation = spec["paths"][path]["post"]
        request = operation["requestBody"]["content"]["application/json"]["schema"]
        flows = request["properties"]["flows"]
        assert flows["type"] == "array" and flows["items"]["$ref"].endswith(f"/{flow}")
        response = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert response["type"] == "array" and response["items"]["$ref"].endswith(f"/{prediction}")
        assert flow in spec["components"]["schemas"] and prediction in spec["components"]["schemas"]


def test_a_category_code_past_any_integer_width_is_a_400(http: httpx.Client) -> None:
    response = post(http, "/detect_threat", {"flows": [THREAT_MESSAGE, {**THREAT_MESSAGE, "service": 10**30}]})
    assert response.status_code == 400, response.text
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["flows", 1, "service"], "category_code")]


def test_a_bad_category_code_never_fails_the_requests_batched_with_it(server: Server) -> None:
    """Codes are checked per request before adaptive batching merges requests: the bad request alone is a 400."""
    bad = {"flows": [{**THREAT_MESSAGE, "service": 10_000}]}
    good = {"flows": [THREAT_MESSAGE] * 5}

    def call(body: dict[str, Any]) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return post(client, "/detect_threat", body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, [bad, good] * 40))
    assert statuses[0::2] == [400] * 40
    assert statuses[1::2] == [200] * 40
