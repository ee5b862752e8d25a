"""Retraining end to end on small real slices (issue 21): feedback over HTTP, `python -m training.retrain` as a
process on the server's private store and databases, the challenger in shadow, promotion through the gate, and
the drift trigger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pandas as pd
import pytest
from bentoml.exceptions import NotFound

from loadtest.payloads import load_pool
from nids.core.features import ATTACK_MODEL_NAME, THREAT_FEATURES, THREAT_MODEL_NAME
from training.data import NSL_KDD_TEST, NSL_KDD_TRAIN

from .conftest import REPO, Server, copy_store, logged_predictions, wait_for

pytestmark = [pytest.mark.integration]

ADMIN_TOKEN = "retrain-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SIGNING_KEY = "retrain-signing-key"
MODELS = "/api/v1/models"
SLICES = [
    *(["--attack-max-rows-per-class", "60", "--attack-n-estimators", "5", "--attack-max-depth", "8"]),
    *(
        [
            "--threat-max-train-rows",
            "3000",
            "--threat-max-test-rows",
            "1000",
            "--threat-n-estimators",
            "5",
            "--threat-max-depth",
            "8",
        ]
    ),
    *(["--threat-reports-dir", "none", "--attack-reports-dir", "none"]),
]


@pytest.fixture(scope="module")
def environment(model_store: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = copy_store(model_store.home, tmp_path_factory.mktemp("retrain-store"))
    var = tmp_path_factory.mktemp("retrain-var")
    return {
        "BENTOML_HOME": str(home),
        "NIDS_PREDICTION_LOG_URL": f"sqlite:///{var / 'predictions.sqlite3'}",
        "NIDS_MODEL_STATE_URL": f"sqlite:///{var / 'lifecycle.sqlite3'}",
        "NIDS_THREAT_MODEL_TAG": model_store.threat_tag,
        "NIDS_ATTACK_MODEL_TAG": model_store.attack_tag,
    }


@pytest.fixture(scope="module")
def server(environment: dict[str, str], serve: Callable[..., Server]) -> Server:
    settings = {
        "NIDS_ADMIN_TOKEN": ADMIN_TOKEN,
        "NIDS_MODEL_SIGNING_KEY": SIGNING_KEY,
        "NIDS_PREDICTION_LOG_FLUSH_SECONDS": "0.1",
        "NIDS_DRIFT_WINDOW": "400",
        "NIDS_DRIFT_REFRESH_SECONDS": "1",
    }
    return serve(
        Path(environment["BENTOML_HOME"]), **{k: v for k, v in environment.items() if k != "BENTOML_HOME"}, **settings
    )


def retrain(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **environment, "NIDS_ADMIN_TOKEN": ADMIN_TOKEN, "NIDS_MODEL_SIGNING_KEY": SIGNING_KEY}
    return subprocess.run(
        [sys.executable, "-m", "training.retrain", *args, *SLICES],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def metadata(environment: dict[str, str], tag: str) -> dict[str, Any]:
    """A version's metadata in the server's private store (read by a child: this process uses the session store)."""
    code = "import json, sys, bentoml; print(json.dumps(bentoml.models.get(sys.argv[1]).info.metadata))"
    out = subprocess.run(
        [sys.executable, "-c", code, tag], env={**os.environ, **environment}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_a_challenger_from_feedback_through_shadow_and_the_gate(
    http: httpx.Client, environment: dict[str, str], tmp_path: Path
) -> None:
    flows = [{**flow, "flow_id": f"r-{i}"} for i, flow in enumerate(load_pool("attack")[:40])]
    assert http.post("/classify_attack", json={"flows": flows}).status_code == 200
    logged = logged_predictions(http, {flow["flow_id"] for flow in flows})
    ids = []
    for p in logged[:12]:  # the analyst confirms the verdicts of twelve
        name = p["attack_prediction"]["attack_type_name"]
        verdict = {"verdict": "true_negative"} if name == "BENIGN" else {"verdict": "true_positive"}
        response = http.post(f"/api/v1/predictions/{p['traffic_data_id']}/feedback", json=verdict, headers=ADMIN)
        assert response.status_code == 200, response.text
        ids.append(p["traffic_data_id"])

    # the retraining has a store of its own (a copy): the server gets the challenger through the upload API
    own = {**environment, "BENTOML_HOME": str(copy_store(Path(environment["BENTOML_HOME"]), tmp_path))}
    run = retrain(own, "--model", "attack", "--shadow", "1", "--upload", str(http.base_url))
    assert run.returncode == 0, run.stderr[-3000:]
    tag = run.stdout.strip().splitlines()[-1]
    assert tag.startswith(f"{ATTACK_MODEL_NAME}:")
    lineage = metadata(environment, tag)["lineage"]  # in the server's store, as uploaded
    assert lineage["feedback_rows"] == 12 and sorted(lineage["feedback_prediction_ids"]) == sorted(ids)
    assert lineage["parent"] == environment["NIDS_ATTACK_MODEL_TAG"] and len(lineage["feedback_sha256"]) == 64
    entry = http.get(f"{MODELS}/{tag}").json()
    assert entry["is_active"] is False
    events = http.get(f"{MODELS}/events/audit").json()
    assert any(e["action"] == "register" and e["to_tag"] == tag and e["actor"] == "retrain" for e in events)

    # the server follows the shadow run the retraining started
    def compared() -> int:
        assert http.post("/classify_attack", json={"flows": flows[:10]}).status_code == 200
        body = http.get(f"{MODELS}/shadow/report", params={"model_type": ATTACK_MODEL_NAME}).json()
        return body["shadow_tag"] == tag and body["flows_compared"]

    assert wait_for(compared, 60) > 0
    promote = http.post(f"{MODELS}/shadow/promote", params={"model_type": ATTACK_MODEL_NAME}, headers=ADMIN)
    if promote.status_code == 409:  # the gate refused the small challenger: a person decides, with a reason
        assert "gate" in promote.json()["error"]
        promote = http.post(
            f"{MODELS}/shadow/promote",
            params={"model_type": ATTACK_MODEL_NAME, "force": "true", "reason": "retrain test"},
            headers=ADMIN,
        )
    assert promote.status_code == 200, promote.text
    wait_for(lambda: http.post("/model_info", json={}).json()["attack"]["tag"] == tag, 60)


def test_a_drift_alert_held_long_enough_retrains_the_drifting_model(
    http: httpx.Client, environment: dict[str, str]
) -> None:
    train_labels = set(pd.read_csv(NSL_KDD_TRAIN, usecols=["label"])["label"])
    test = pd.read_csv(NSL_KDD_TEST)
    novel = test[~test["label"].isin(train_labels)].head(400)[list(THREAT_FEATURES)].to_dict("records")
    for start in range(0, len(novel), 100):
        assert http.post("/detect_threat", json={"flows": novel[start : start + 100]}).status_code == 200
    run = retrain(
        environment,
        *(
            [
                "--on-drift",
                "--model",
                "threat",
                "--drift-hold-seconds",
                "2",
                "--poll-seconds",
                "0.5",
                "--max-retrains",
                "1",
            ]
        ),
        "--service-url",
        str(http.base_url),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    tag = run.stdout.strip().splitlines()[-1]
    assert tag.startswith(f"{THREAT_MODEL_NAME}:")
    lineage = metadata(environment, tag)["lineage"]
    assert lineage["trigger"].startswith("drift held")
    assert http.get(f"{MODELS}/{tag}").json()["is_active"] is False  # never activated by itself
    with pytest.raises(NotFound):  # the challengers live in the server's private store, not the session's
        bentoml.models.get(tag)
