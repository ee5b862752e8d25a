"""The original system's contracts, from its own examples (tests/fixtures/original/, copied from 004_*.txt): its
curl lines run as written (only the host changes, and writes carry the admin token: a difference on purpose), its
JSON messages sent as they are, and every field of its example answers present in ours. One test per row of
docs/compat.md, named in that row.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import websocket

from nids.core.features import ATTACK_CLASSES, THREAT_FEATURES
from tests.models.test_bundles import sign, threat_bundle, write_bundle
from training.data import CIC_ORIGINAL, NSL_KDD_TEST

from .conftest import REPO, Server, copy_store, wait_for

pytestmark = [pytest.mark.integration]

ORIGINAL = Path(__file__).resolve().parents[1] / "fixtures" / "original"
ADMIN_TOKEN = "compat-admin-token"
SIGNING_KEY = "compat-signing-key"
ENV = {
    "NIDS_ADMIN_TOKEN": ADMIN_TOKEN,
    "NIDS_MODEL_SIGNING_KEY": SIGNING_KEY,
    "NIDS_PREDICTION_LOG_FLUSH_SECONDS": "0.1",
    "NIDS_REALTIME_POLL_SECONDS": "0.1",
    "NIDS_REALTIME_PING_SECONDS": "1",
}


# fields whose keys are data (feature names, action parameters, class names), not part of the shape
DATA_FIELDS = frozenset({"features", "action_params", "attack_type_distribution"})


def example(name: str) -> Any:
    return json.loads((ORIGINAL / f"{name}.json").read_text())


def missing_fields(answer: Any, original: Any, where: str = "") -> list[str]:
    """Every field of the original's example that the answer lacks (recursively; extra fields are fine)."""
    if isinstance(original, dict):
        if not isinstance(answer, dict):
            return [f"{where or '.'} is not an object"]
        gaps = [f"{where}.{key}" for key in original if key not in answer]
        for key, value in original.items():
            if key in answer and answer[key] is not None and value and key not in DATA_FIELDS:
                gaps += missing_fields(answer[key], value, f"{where}.{key}")
        return gaps
    if isinstance(original, list) and original:
        if not isinstance(answer, list) or not answer:
            return [f"{where} is not a non-empty list"]
        return missing_fields(answer[0], original[0], f"{where}[0]")
    return []


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    home = copy_store(model_store.home, tmp_path_factory.mktemp("compat-store"))
    return serve(home, **ENV)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def curl(server: Server, line: str, *, token: bool = False, cwd: Path | None = None) -> tuple[int, Any]:
    """Run one of the original's curl lines as written: its host is this server's, and a write carries the admin
    token. Returns (HTTP status, decoded JSON body)."""
    argv = shlex.split(line.replace("http://localhost:8000", server.url))
    assert argv[0] == "curl"
    extra = ["-sS", "-o", "-", "-w", "\n%{http_code}"]
    if token:
        extra += ["-H", f"authorization: Bearer {ADMIN_TOKEN}"]
    done = subprocess.run([*argv[:1], *extra, *argv[1:]], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


def post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


# --- flows: the Kafka/REST messages and the validation rules ----------------------------------------------------
def test_the_original_threat_message_scores_on_the_original_scale(http: httpx.Client) -> None:
    response = post(http, "/detect_threat", {"flows": [example("threat_message")]})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()
    assert prediction["threshold"] == 0.5
    assert (prediction["prediction_score"] >= 0.5) == prediction["is_attack"]
    assert (prediction["attack_probability"] >= prediction["decision_threshold"]) == prediction["is_attack"]


def test_the_original_attack_message_is_analyzed(http: httpx.Client) -> None:
    response = post(http, "/analyze", {"flows": [example("attack_message"), example("threat_message")]})
    assert response.status_code == 200, response.text
    attack, threat = response.json()["results"]
    assert attack["kind"] == "attack" and attack["attack_prediction"]["attack_type_name"] in ATTACK_CLASSES
    assert attack["self_healing_action"]["action_type"] in {"restart_service", "block_ip", "alert_admin", "log_only"}
    for result in (attack, threat):
        verdict = result["threat_prediction"]
        assert verdict["threshold"] == 0.5 and (verdict["prediction_score"] >= 0.5) == verdict["is_attack"]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({" Down/Up Ratio": -0.5}, 200),  # ratios may be negative
        ({"Flow Bytes/s": "Infinity"}, 200),  # Inf read as 0
        ({" Destination Port": 65536}, 400),  # [0, 65535]
        ({" Total Fwd Packets": -1}, 400),  # most features non-negative
        ({" Flow IAT Std": "NaN"}, 400),  # NaN is an error
    ],
)
def test_the_original_validation_rules(http: httpx.Client, change: dict[str, Any], status: int) -> None:
    response = post(http, "/classify_attack", {"flows": [{**example("attack_message"), **change}]})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(("field", "value"), [("same_srv_rate", 1.2), ("src_bytes", -1)])
def test_the_original_threat_rules(http: httpx.Client, field: str, value: float) -> None:
    response = post(http, "/detect_threat", {"flows": [{**example("threat_message"), field: value}]})
    assert response.status_code == 400 and response.json()["detail"][0]["loc"][-1] == field


def test_a_missing_feature_is_an_error_not_imputed(http: httpx.Client) -> None:
    message = {k: v for k, v in example("threat_message").items() if k != "count"}
    assert post(http, "/detect_threat", {"flows": [message]}).status_code == 400


# --- the CSV API, the prediction log and the statistics ----------------------------------------------------------
def test_the_original_csv_upload_answers_in_its_shape_with_ids_that_resolve(
    server: Server, http: httpx.Client, tmp_path: Path
) -> None:
    pd.read_csv(CIC_ORIGINAL, nrows=10).to_csv(tmp_path / "test_traffic.csv", index=False)
    status, body = curl(
        server, 'curl -X POST "http://localhost:8000/api/v1/upload/csv" -F "file=@test_traffic.csv"', cwd=tmp_path
    )
    assert status == 200, body
    assert missing_fields(body, example("upload_csv_response")) == []
    assert body["message"] == "Successfully processed 10 rows" and body["total_rows"] == 10
    for row in body["predictions"]:
        parts = [row["traffic_data"], row["threat_prediction"], row["attack_prediction"], row["self_healing_action"]]
        assert len({part["id"] for part in parts}) == 1 and isinstance(parts[0]["id"], int)
        assert row["traffic_data"]["source"] == "upload" and row["traffic_data"]["batch_id"] == body["batch_id"]
        assert row["self_healing_action"]["status"] == "logged"  # dry run: recorded, nothing run
        code = row["attack_prediction"]["attack_type_encoded"]
        assert ATTACK_CLASSES[code] == row["attack_prediction"]["attack_type_name"]
        logged = http.get(f"/api/v1/predictions/{parts[0]['id']}")
        assert logged.status_code == 200, logged.text
        assert logged.json()["traffic_data_id"] == parts[0]["id"]
        assert logged.json()["attack_prediction"]["attack_type_name"] == row["attack_prediction"]["attack_type_name"]
        assert logged.json()["self_healing_action"]["action_params"] == row["self_healing_action"]["action_params"]
    assert http.get("/api/v1/predictions/999999999").status_code == 404
    beyond = http.get(f"/api/v1/predictions/{2**64}")  # past a database integer: refused, never a 500
    assert beyond.status_code == 400 and beyond.json()["detail"][0]["loc"] == ["path", "prediction_id"]
    assert http.get("/api/v1/predictions", params={"before_id": 2**64}).status_code == 400


def test_a_threat_csv_upload_scores_on_the_original_scale(server: Server, tmp_path: Path) -> None:
    pd.read_csv(NSL_KDD_TEST, nrows=50).to_csv(tmp_path / "test_traffic.csv", index=False)
    status, body = curl(
        server, 'curl -X POST "http://localhost:8000/api/v1/upload/csv" -F "file=@test_traffic.csv"', cwd=tmp_path
    )
    assert status == 200, body
    verdicts = [row["threat_prediction"] for row in body["predictions"]]
    assert all(v["threshold"] == 0.5 and (v["prediction_score"] >= 0.5) == v["is_attack"] for v in verdicts)


def test_the_original_statistics(server: Server) -> None:
    status, body = curl(server, 'curl "http://localhost:8000/api/v1/predictions/stats"')
    assert status == 200 and missing_fields(body, example("prediction_stats")) == []


# --- the live stream ---------------------------------------------------------------------------------------------
def test_the_original_realtime_messages(server: Server, http: httpx.Client) -> None:
    client = websocket.create_connection(server.url.replace("http://", "ws://") + "/ws/realtime", timeout=15)
    try:
        hello = json.loads(client.recv())
        assert missing_fields(hello, example("ws_connection")) == []
        assert hello["message"] == example("ws_connection")["message"]
        flow = {**example("attack_message"), "flow_id": "compat-live"}
        assert post(http, "/analyze", {"flows": [flow]}).status_code == 200
        seen: dict[str, dict[str, Any]] = {}

        def both() -> bool:
            event = json.loads(client.recv())
            seen.setdefault(event["type"], event)
            is_ours = event["type"] == "prediction" and event["flow_id"] == "compat-live"
            if is_ours:
                seen["ours"] = event
            return "ours" in seen and "ping" in seen

        wait_for(both, 20)
    finally:
        client.close()
    assert missing_fields(seen["ping"], example("ws_ping")) == []
    event = seen["ours"]
    assert missing_fields(event, example("ws_prediction")) == []
    ids = {event["traffic_data_id"], *(event[part]["id"] for part in ("threat_prediction", "attack_prediction"))}
    assert ids == {event["self_healing_action"]["id"]}
    assert event["threat_prediction"]["threshold"] == 0.5
    assert event["self_healing_action"]["status"] == "logged" and "action_params" in event["self_healing_action"]
    assert http.get(f"/api/v1/predictions/{event['traffic_data_id']}").json()["flow_id"] == "compat-live"


# --- layout --------------------------------------------------------------------------------------------------------
def test_the_service_is_named_at_the_top_level() -> None:
    assert (REPO / "service.py").is_file() and (REPO / "nids" / "serving" / "service.py").is_file()
    assert 'service: "service:NIDSService"' in (REPO / "bentofile.yaml").read_text()


# --- the model lifecycle: upload, activate, two-step rollback, ids ----------------------------------------------
UPLOAD = (
    'curl -X POST "http://localhost:8000/api/v1/models/upload" -F "file=@threat_detector_ensemble.joblib" '
    '-F "model_type=threat_detector" -F "description=Ensemble ANN+LSTM trained on 2024-11-28" '
    '-F "profile_config=@threat_detector_profile.json"'
)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("original-bundle")
    path = write_bundle(directory, threat_bundle())
    (directory / "threat_detector_profile.json").write_text(json.dumps({"version": "20241201_143022"}))
    (directory / "threat_detector_ensemble.joblib.sig").write_text(sign(path, SIGNING_KEY.encode()))
    return directory


def test_the_original_upload_line_refuses_an_unsigned_pickle_saying_how_to_sign(
    server: Server, bundle_dir: Path
) -> None:
    status, body = curl(server, UPLOAD, token=True, cwd=bundle_dir)
    assert status == 400 and "unsigned" in body["error"] and "sign-bundle" in body["error"], body


def test_an_upload_that_is_no_package_is_a_clear_400(server: Server, tmp_path: Path) -> None:
    (tmp_path / "threat_detector_ensemble.bin").write_bytes(b"not a model at all\n" * 10)
    line = UPLOAD.replace("threat_detector_ensemble.joblib", "threat_detector_ensemble.bin").replace(
        ' -F "profile_config=@threat_detector_profile.json"', ""
    )
    status, body = curl(server, line, token=True, cwd=tmp_path)
    assert status == 400 and "not a model package" in body["error"] and "\n" not in body["error"], body


def test_the_original_upload_activate_and_two_step_rollback(
    server: Server, http: httpx.Client, bundle_dir: Path
) -> None:
    signed = UPLOAD + ' -F "signature=<threat_detector_ensemble.joblib.sig"'
    status, uploaded = curl(server, signed, token=True, cwd=bundle_dir)
    assert status == 201, uploaded
    assert missing_fields(uploaded, example("model_upload_response")) == []
    assert isinstance(uploaded["id"], int) and uploaded["is_active"] is False
    assert uploaded["model_type"] == "threat_detector" and uploaded["tag"].startswith("threat_detector:")
    assert uploaded["expected_features"] == list(THREAT_FEATURES)
    assert uploaded["validation_results"]["test_prediction"]["probabilities_sum_to_1"]
    assert uploaded["description"] == "Ensemble ANN+LSTM trained on 2024-11-28"
    previous = next(e for e in http.get("/api/v1/models/?model_type=threat_detector").json() if e["is_active"])
    new_id, old_id = uploaded["id"], previous["id"]

    status, activated = curl(
        server, f'curl -X POST "http://localhost:8000/api/v1/models/{new_id}/activate"', token=True
    )
    if status == 409:  # the gate: this bundle's KDDTest+ F1 is below the active version's; force, as documented
        status, activated = curl(
            server,
            f'curl -X POST "http://localhost:8000/api/v1/models/{new_id}/activate?force=true&reason=compat"',
            token=True,
        )
    assert status == 200 and activated["is_active"] and activated["id"] == new_id, activated
    verdict = wait_for(
        lambda: (
            (p := post(http, "/detect_threat", {"flows": [example("threat_message")]}).json()[0])["model_version"]
            == uploaded["tag"]
            and p
        )
    )
    assert verdict["threshold"] == 0.5 and (verdict["prediction_score"] >= 0.5) == verdict["is_attack"]

    # rollback, the original's two steps: deactivate the current version, then activate the previous one
    status, rolled = curl(server, f'curl -X POST "http://localhost:8000/api/v1/models/{new_id}/deactivate"', token=True)
    assert status == 200 and rolled["id"] == old_id and rolled["is_active"], rolled
    status, again = curl(server, f'curl -X POST "http://localhost:8000/api/v1/models/{old_id}/activate"', token=True)
    assert status == 200 and again["id"] == old_id and again["is_active"], again

    status, listed = curl(server, 'curl "http://localhost:8000/api/v1/models/?model_type=threat_detector"')
    assert status == 200 and {new_id, old_id} <= {e["id"] for e in listed}
    status, one = curl(server, f'curl "http://localhost:8000/api/v1/models/{new_id}"')
    assert status == 200 and one["tag"] == uploaded["tag"]
    status, profile = curl(server, 'curl "http://localhost:8000/api/v1/models/profile/threat_detector"')
    assert status == 200 and profile["active"]["id"] == old_id
    status, storage = curl(server, 'curl "http://localhost:8000/api/v1/models/stats/storage"')
    assert status == 200 and storage["by_model_type"]["threat_detector"]["versions"] >= 2
    status, deleted = curl(
        server, f'curl -X DELETE "http://localhost:8000/api/v1/models/{new_id}?delete_file=true"', token=True
    )
    assert status == 200 and deleted["deleted"] and deleted["file_deleted"], deleted
    assert (deleted["id"], deleted["tag"]) == (new_id, uploaded["tag"])
    assert http.get(f"/api/v1/models/{new_id}").status_code == 404  # its id is never given to another version


def test_a_write_without_the_admin_token_is_refused(server: Server) -> None:
    status, body = curl(server, 'curl -X POST "http://localhost:8000/api/v1/models/1/activate"')
    assert status == 401 and "token" in body["error"], body
