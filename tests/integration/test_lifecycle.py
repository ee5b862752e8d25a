"""Model lifecycle over real HTTP: one `bentoml serve` with two workers on a private copy of the session's store.

New versions (clones of the session's models, one with worse stored metrics, one with a tampered file) are saved
into the session store, copied into the private store and removed from the session store again, so no other
test module sees them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pytest
import yaml

from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
from nids.models.artifacts import ESTIMATOR_FILE, get_store_model, load_reference_cases
from nids.models.packages import verify_package, write_package
from nids.models.state import open_lifecycle_store
from tests.conftest import clone_model_version
from tests.models.test_packages import _drop_signature, _extra, _tamper, rewrite
from training.data import CIC_ORIGINAL

from .conftest import BENTOML, REPO, Server, copy_store

pytestmark = [pytest.mark.integration, pytest.mark.long_running]

ADMIN_TOKEN = "lifecycle-admin-token"
SENSOR_TOKEN = "lifecycle-sensor-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SENSOR = {"authorization": f"Bearer {SENSOR_TOKEN}"}
SIGNING_KEY = "lifecycle-signing-key"
# a worker follows a switch at its next sync (every second): a deadline to wait within on a loaded machine, not a figure
SWITCH_DEADLINE = 60.0
MODELS = "/api/v1/models"


@dataclass(frozen=True)
class Versions:
    home: Path
    threat: str  # the session's versions, active at start
    attack: str
    threat_new: str  # same estimator, same metrics: passes the gate
    threat_worse: str  # stored KDDTest+ F1 0.3 lower
    threat_tampered: str  # estimator file altered after saving
    threat_flipped: str  # a reference case expecting the other class
    threat_contract: str  # the attack classifier saved as a threat_detector version
    package: Path  # signed package of a version that is in no store
    package_tag: str


def session_tags() -> set[str]:
    return {str(model.tag) for model in bentoml.models.list()}


def make_versions(model_store: Any, home: Path, package_dir: Path) -> Versions:
    """Save the new versions into the session store, copy the store to `home`, remove them from the session."""
    before = session_tags()
    f1 = get_store_model(model_store.threat_tag).info.metadata["metrics"]
    worse_metrics = {**f1, "kddtest": {**f1["kddtest"], "f1": f1["kddtest"]["f1"] - 0.3}}
    new = clone_model_version(model_store.threat_tag, THREAT_MODEL_NAME)
    worse = clone_model_version(model_store.threat_tag, THREAT_MODEL_NAME, metadata={"metrics": worse_metrics})
    tampered = clone_model_version(model_store.threat_tag, THREAT_MODEL_NAME)
    estimator = Path(get_store_model(tampered).path_of(ESTIMATOR_FILE))
    data = bytearray(estimator.read_bytes())
    data[-1] ^= 1
    estimator.write_bytes(bytes(data))
    cases = load_reference_cases(get_store_model(model_store.threat_tag))
    flip = dataclasses.replace(cases[0], expected_class=1 - cases[0].expected_class, description="flipped")
    flipped = clone_model_version(model_store.threat_tag, THREAT_MODEL_NAME, reference_cases=[flip, *cases[1:]])
    contract = clone_model_version(model_store.attack_tag, THREAT_MODEL_NAME)
    uploaded = clone_model_version(model_store.attack_tag, ATTACK_MODEL_NAME)
    package = package_dir / "attack.bentomodel"
    with package.open("wb") as out:
        write_package(bentoml.models.get(uploaded), out, SIGNING_KEY.encode())
    bentoml.models.delete(uploaded)
    copy_store(model_store.home, home)
    for tag in (new, worse, tampered, flipped, contract):
        bentoml.models.delete(tag)
    assert session_tags() == before
    return Versions(
        home, model_store.threat_tag, model_store.attack_tag, new, worse, tampered, flipped, contract, package, uploaded
    )


def server_env(versions: Versions, workdir: Path, **extra: str) -> dict[str, str]:
    policy = yaml.safe_load((REPO / "config" / "healing.yaml").read_text()) | {"enforce": ["log_only"]}
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    return {
        "NIDS_THREAT_MODEL_TAG": versions.threat,
        "NIDS_ATTACK_MODEL_TAG": versions.attack,
        "NIDS_ADMIN_TOKEN": ADMIN_TOKEN,
        "NIDS_SENSOR_TOKEN": SENSOR_TOKEN,
        "NIDS_MODEL_SIGNING_KEY": SIGNING_KEY,
        "NIDS_HEALING_POLICY_FILE": str(policy_file),
        "BENTOML_CONFIG_OPTIONS": "services.nids.workers=2",
        **extra,
    }


@pytest.fixture(scope="module")
def versions(model_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Versions:
    return make_versions(model_store, tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("packages"))


@pytest.fixture(scope="module")
def state_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('state') / 'lifecycle.sqlite3'}"


@pytest.fixture(scope="module")
def server(
    versions: Versions, serve: Callable[..., Server], state_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    env = server_env(versions, tmp_path_factory.mktemp("env"), NIDS_MODEL_STATE_URL=state_url)
    server = serve(versions.home, **env)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    return server


def store_listing(home: Path) -> set[str]:
    """What `bentoml models list` shows for the two served model types."""
    result = subprocess.run(
        [str(BENTOML), "models", "list", "-o", "json"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        m["tag"] for m in json.loads(result.stdout) if m["tag"].split(":")[0] in (THREAT_MODEL_NAME, ATTACK_MODEL_NAME)
    }


def served_version(url: str) -> tuple[int, str | None]:
    """One /detect_threat call on a fresh connection (so both workers answer over a run of calls)."""
    body = json.loads((REPO / "tests" / "fixtures" / "detect_threat.json").read_text())
    response = httpx.post(f"{url}/detect_threat", json=body, timeout=10)
    version = response.json()[0]["model_version"] if response.status_code == 200 else None
    return response.status_code, version


class Prober:
    """Calls /detect_threat continuously in the background, recording (status, version) of each call."""

    def __init__(self, *urls: str) -> None:
        self.urls = urls
        self.calls: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            try:
                status, version = served_version(url)
            except httpx.TransportError:
                status, version = 0, None
            self.calls.append((status, version))
            i += 1

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def wait_calls(self, count: int) -> None:
        """Wait until `count` more calls have been answered."""
        target = len(self.calls) + count
        deadline = time.monotonic() + SWITCH_DEADLINE
        while len(self.calls) < target:
            assert time.monotonic() < deadline, f"fewer than {count} calls in {SWITCH_DEADLINE} s"
            time.sleep(0.05)

    def wait_for(self, version: str, calls: int = 10) -> None:
        """Wait until the last `calls` calls (fresh connections, so every worker answers some) all answered
        `version`."""
        deadline = time.monotonic() + SWITCH_DEADLINE
        while [answer for _, answer in self.calls[-calls:]] != [version] * calls:
            assert time.monotonic() < deadline, f"{version} is not served by every worker after {SWITCH_DEADLINE} s"
            time.sleep(0.1)


def workers_that_answered(server: Server, path: str) -> set[str]:
    """Worker numbers in BentoML's access log lines of `path` (`[entry_service:nids:<n>] ... path=<path>,`)."""
    pattern = re.compile(rf"\[entry_service:nids:(\d+)\].*path={re.escape(path)},")
    return {match.group(1) for match in map(pattern.search, server.log.read_text().splitlines()) if match}


def switch(prober: Prober, do: Callable[[], httpx.Response], version: str) -> httpx.Response:
    """Switch with calls going on before, during and after, until every worker serves `version`."""
    prober.wait_calls(5)  # calls before the switch
    response = do()
    assert response.status_code == 200, response.text
    prober.wait_for(version)
    return response


def test_list_get_profile_and_storage_agree_with_the_store(http: httpx.Client, versions: Versions) -> None:
    listed = http.get(f"{MODELS}/")
    assert listed.status_code == 200, listed.text
    entries = {entry["tag"]: entry for entry in listed.json()}
    assert set(entries) == store_listing(versions.home)
    assert {tag for tag, entry in entries.items() if entry["is_active"]} == {versions.threat, versions.attack}
    new = entries[versions.threat_new]
    assert (new["is_active"], new["served_here"], new["model_type"]) == (False, False, THREAT_MODEL_NAME)
    assert new["expected_features"] and new["class_labels"] == ["normal", "attack"] and new["threshold"] is not None
    assert new["metrics"]["kddtest"]["f1"] == new["gate_metric"]["value"]
    assert all(len(f["sha256"]) == 64 and f["size"] for f in new["files"]) and new["size_bytes"] > 0
    assert new["reference_cases"]["count"] > 0 and new["reference_cases"]["status"] == "not checked"
    active = entries[versions.threat]
    assert active["activated_by"] == "startup" and active["reference_cases"]["status"] == "passed"

    only_attack = http.get(f"{MODELS}/", params={"model_type": ATTACK_MODEL_NAME}).json()
    assert {entry["tag"] for entry in only_attack} == {t for t in entries if t.startswith(ATTACK_MODEL_NAME)}
    one = http.get(f"{MODELS}/{versions.threat_new}")
    assert one.status_code == 200 and one.json()["tag"] == versions.threat_new
    assert http.get(f"{MODELS}/{versions.threat_new.replace(':', '%3A')}").json()["tag"] == versions.threat_new

    profile = http.get(f"{MODELS}/profile/{THREAT_MODEL_NAME}").json()
    assert profile["active"]["tag"] == versions.threat and profile["replica"]["in_sync"] is True
    storage = http.get(f"{MODELS}/stats/storage").json()
    assert storage["total_versions"] == len(entries)
    assert storage["total_bytes"] == sum(entry["size_bytes"] for entry in entries.values())


@pytest.mark.parametrize(
    ("path", "status", "loc"),
    [
        ("/?model_type=tcp_sniffer", 400, ["query", "model_type"]),
        ("/profile/tcp_sniffer", 400, ["path", "model_type"]),
        ("/threat_detector", 400, ["path", "model_id"]),
        ("/threat_detector:latest", 400, ["path", "model_id"]),
        ("/tcp_sniffer:abc", 400, ["path", "model_id"]),
        ("/threat_detector:nosuchversion", 404, None),
    ],
)
def test_bad_reads_name_field_and_rule(http: httpx.Client, path: str, status: int, loc: list[str] | None) -> None:
    response = http.get(f"{MODELS}{path}")
    assert response.status_code == status, response.text
    assert response.json()["error"]
    if loc is not None:
        assert response.json()["detail"][0]["loc"] == loc


def test_writes_need_an_admin_token(http: httpx.Client, versions: Versions) -> None:
    path = f"{MODELS}/{versions.threat_new}/activate"
    missing = http.post(path)
    assert missing.status_code == 401 and "Bearer" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert http.post(path, headers={"authorization": "Bearer not-the-token"}).status_code == 403
    sensor = http.post(path, headers=SENSOR)
    assert sensor.status_code == 403 and "lacks scope admin" in sensor.json()["error"]
    assert http.post(path, headers={"authorization": "Basic abc"}).status_code == 401
    assert http.delete(f"{MODELS}/{versions.threat_new}").status_code == 401
    assert http.post(f"{MODELS}/upload", files={"file": ("p", b"x")}, data={"model_type": "x"}).status_code == 401
    assert http.post("/healing_enforcement", json={"enabled": True}).status_code == 401
    assert http.get(f"{MODELS}/{versions.threat_new}").json()["is_active"] is False  # nothing changed


def test_activation_switches_both_workers_without_a_failed_request(
    http: httpx.Client, server: Server, versions: Versions
) -> None:
    with Prober(server.url) as prober:
        response = switch(
            prober, lambda: http.post(f"{MODELS}/{versions.threat_new}/activate", headers=ADMIN), versions.threat_new
        )
        assert response.json()["is_active"] and response.json()["activated_by"] == "admin"
        metrics = http.get("/metrics").text
        back = switch(
            prober, lambda: http.post(f"{MODELS}/{versions.threat_new}/deactivate", headers=ADMIN), versions.threat
        )
        assert back.json()["tag"] == versions.threat and back.json()["is_active"]
    assert len(prober.calls) > 20
    assert [status for status, _ in prober.calls if status != 200] == []  # no failed request during either switch
    assert workers_that_answered(server, "/detect_threat") == {"1", "2"}  # the prober reached both workers
    assert f'tag="{versions.threat_new}"}} 1.0' in metrics and f'tag="{versions.threat}"}} 0.0' in metrics
    events = http.get(f"{MODELS}/events/audit", params={"model_type": THREAT_MODEL_NAME}).json()
    rolled, activated = events[0], events[1]
    assert (rolled["action"], rolled["actor"], rolled["from_tag"], rolled["to_tag"]) == (
        "deactivate",
        "admin",
        versions.threat_new,
        versions.threat,
    )
    assert (activated["action"], activated["to_tag"]) == ("activate", versions.threat_new)
    no_history = http.post(f"{MODELS}/{versions.threat}/deactivate", headers=ADMIN)
    assert no_history.status_code == 409 and "no previously active" in no_history.json()["error"]
    inactive = http.post(f"{MODELS}/{versions.threat_new}/deactivate", headers=ADMIN)
    assert inactive.status_code == 409 and "is not the active" in inactive.json()["error"]


def test_the_gate_refuses_a_worse_model_and_force_needs_a_reason(
    http: httpx.Client, server: Server, versions: Versions
) -> None:
    path = f"{MODELS}/{versions.threat_worse}/activate"
    refused = http.post(path, headers=ADMIN)
    assert refused.status_code == 409 and "gate refused" in refused.json()["error"], refused.text
    gate = refused.json()["detail"][0]
    assert gate["metric"] == "kddtest.f1" and gate["candidate"] < gate["active"] - gate["margin"]
    assert http.get(f"{MODELS}/{versions.threat}").json()["is_active"]
    no_reason = http.post(path, params={"force": "true"}, headers=ADMIN)
    assert no_reason.status_code == 400 and no_reason.json()["detail"][0]["loc"] == ["query", "reason"]
    forced = http.post(path, params={"force": "true", "reason": "canary on a new capture"}, headers=ADMIN)
    assert forced.status_code == 200, forced.text
    assert forced.json()["activation_reason"] == "canary on a new capture"
    event = http.get(f"{MODELS}/events/audit").json()[0]
    assert (event["action"], event["reason"], event["detail"]["forced"]) == (
        "activate",
        "canary on a new capture",
        True,
    )
    assert http.post(f"{MODELS}/{versions.threat_worse}/deactivate", headers=ADMIN).status_code == 200
    served_by_all(server, versions.threat)  # the next tests start from a settled state


def served_by_all(server: Server, version: str, calls: int = 8) -> None:
    """Wait (at most SWITCH_DEADLINE) until `calls` fresh connections in a row are all answered by `version`: each
    worker follows a switch within its next sync (every second), so right after one a worker may still answer
    with the previous version."""
    deadline = time.monotonic() + SWITCH_DEADLINE
    while [served_version(server.url) for _ in range(calls)] != [(200, version)] * calls:
        assert time.monotonic() < deadline, f"{version} is not served by every worker after {SWITCH_DEADLINE} s"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("which", "check"),
    [
        ("threat_tampered", "estimator.joblib does not match its recorded sha256"),
        ("threat_flipped", "reference cases failed (first: 'flipped')"),
        ("threat_contract", "cannot serve as the threat model: its features or classes differ"),
    ],
)
def test_a_version_failing_a_check_is_refused_naming_it(
    http: httpx.Client, server: Server, versions: Versions, which: str, check: str
) -> None:
    tag = getattr(versions, which)
    refused = http.post(
        f"{MODELS}/{tag}/activate", params={"force": "true", "reason": "forced: checks still run"}, headers=ADMIN
    )
    assert refused.status_code == 422 and check in refused.json()["error"], refused.text
    assert http.get(f"{MODELS}/{versions.threat}").json()["is_active"]
    assert served_version(server.url) == (200, versions.threat)
    assert http.get(f"{MODELS}/{tag}").json()["reference_cases"]["status"].startswith("failed: ")


def test_activating_the_active_version_answers_200_unchanged_and_is_recorded(
    http: httpx.Client, versions: Versions
) -> None:
    # the second step of the original's two-step rollback (deactivate, then activate the previous version)
    before = http.get(f"{MODELS}/profile/threat_detector").json()
    again = http.post(f"{MODELS}/{versions.threat}/activate", headers=ADMIN)
    assert again.status_code == 200, again.text
    assert again.json()["is_active"] and again.json()["tag"] == versions.threat
    after = http.get(f"{MODELS}/profile/threat_detector").json()
    assert after["history"] == before["history"] and after["active"]["tag"] == versions.threat
    assert len(after["history_ids"]) == len(after["history"]) and None not in after["history_ids"]
    (event,) = http.get(f"{MODELS}/events/audit", params={"model_type": "threat_detector", "limit": 1}).json()
    assert (event["action"], event["from_tag"], event["to_tag"]) == ("activate", versions.threat, versions.threat)
    assert event["from_id"] == event["to_id"] == after["active"]["id"]  # the original's integer id beside each tag
    assert event["detail"] == {"no_change": True}


def test_upload_verifies_the_signature_and_refuses_unsafe_packages(
    http: httpx.Client, versions: Versions, tmp_path: Path
) -> None:
    before = store_listing(versions.home)

    def upload(path: Path, model_type: str = ATTACK_MODEL_NAME) -> httpx.Response:
        with path.open("rb") as handle:
            return http.post(
                f"{MODELS}/upload",
                files={"file": (path.name, handle, "application/octet-stream")},
                data={"model_type": model_type, "description": "retrained on the March capture"},
                headers=ADMIN,
            )

    refusals = {
        "tampered": (rewrite(versions.package, tmp_path / "t.bentomodel", _tamper), "differs"),
        "unsigned": (rewrite(versions.package, tmp_path / "u.bentomodel", _drop_signature), "unsigned"),
        "traversal": (rewrite(versions.package, tmp_path / "x.bentomodel", _extra("./../x")), "path traversal"),
        "symlink": (
            rewrite(versions.package, tmp_path / "s.bentomodel", _extra("./l", b"2", "/etc/passwd")),
            "is a link",
        ),
    }
    for name, (path, reason) in refusals.items():
        response = upload(path)
        assert response.status_code == 400 and reason in response.json()["error"], (name, response.text)
    wrong_type = upload(versions.package, THREAT_MODEL_NAME)
    assert wrong_type.status_code == 400 and "model_type" in wrong_type.json()["error"]
    no_file = http.post(f"{MODELS}/upload", data={"model_type": ATTACK_MODEL_NAME}, headers=ADMIN)
    assert no_file.status_code == 400 and no_file.json()["detail"][0]["loc"] == ["body", "file"]
    assert store_listing(versions.home) == before

    created = upload(versions.package)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert (entry["tag"], entry["is_active"]) == (versions.package_tag, False)
    assert (entry["description"], entry["uploaded_by"]) == ("retrained on the March capture", "admin")
    assert store_listing(versions.home) == before | {versions.package_tag}
    assert upload(versions.package).status_code == 409  # already in the store


def test_export_is_a_signed_bentoml_package(http: httpx.Client, versions: Versions, tmp_path: Path) -> None:
    assert http.get(f"{MODELS}/{versions.threat_new}/export").status_code == 401  # admin only
    response = http.get(f"{MODELS}/{versions.threat_new}/export", headers=ADMIN)
    assert response.status_code == 200
    path = tmp_path / "export.bentomodel"
    path.write_bytes(response.content)
    assert verify_package(path, SIGNING_KEY.encode(), 10**9).tag == versions.threat_new


def test_the_active_version_cannot_be_deleted(http: httpx.Client, versions: Versions) -> None:
    active = http.delete(f"{MODELS}/{versions.threat}", params={"delete_file": "true"}, headers=ADMIN)
    assert active.status_code == 409 and "is the active" in active.json()["error"]
    retired = http.delete(f"{MODELS}/{versions.threat_worse}", headers=ADMIN)
    assert retired.status_code == 200 and retired.json()["file_deleted"] is False
    assert http.get(f"{MODELS}/{versions.threat_worse}").json()["retired"] is True
    again = http.post(
        f"{MODELS}/{versions.threat_worse}/activate", params={"force": "true", "reason": "x"}, headers=ADMIN
    )
    assert again.status_code == 409 and "retired" in again.json()["error"]
    deleted = http.delete(f"{MODELS}/{versions.threat_tampered}", params={"delete_file": "true"}, headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["file_deleted"] is True
    assert versions.threat_tampered not in store_listing(versions.home)
    assert http.get(f"{MODELS}/{versions.threat_tampered}").status_code == 404


def test_a_replica_that_cannot_load_the_active_version_is_drained_but_keeps_its_own(
    http: httpx.Client, server: Server, versions: Versions, state_url: str
) -> None:
    """Another replica recorded a version this one cannot load (here: a tag in no store and in no shared package):
    /readyz 503 with the reason, so a balancer drains it; requests reaching it still get the verified version."""
    store = open_lifecycle_store(state_url)
    try:
        state = store.active()[THREAT_MODEL_NAME]
        assert store.switch(state, "threat_detector:notinthisstore", [*state.history, state.tag], "other", "test")
        deadline = time.monotonic() + SWITCH_DEADLINE
        while time.monotonic() < deadline and http.get("/readyz").status_code == 200:
            time.sleep(0.2)
        ready = http.get("/readyz")
        assert ready.status_code == 503 and "notinthisstore" in ready.json()["error"]
        (replica,) = [s for s in http.get(f"{MODELS}/status/replica").json() if s["model_type"] == THREAT_MODEL_NAME]
        assert replica["in_sync"] is False and replica["served_tag"] == versions.threat
        assert "nor in the shared packages" in replica["error"]
        assert served_version(server.url) == (200, versions.threat)
    finally:
        state = store.active()[THREAT_MODEL_NAME]
        store.switch(state, versions.threat, state.history[:-1], "other", "test over")
        store.close()
    deadline = time.monotonic() + SWITCH_DEADLINE
    while time.monotonic() < deadline and http.get("/readyz").status_code != 200:
        time.sleep(0.2)
    assert http.get("/readyz").status_code == 200


def test_a_caller_without_a_sensor_token_never_enforces(http: httpx.Client) -> None:
    """The test policy enforces log_only: a BENIGN event is enforced for a sensor, recorded dry-run for anyone else."""
    events = {"events": [{"attack_type": "BENIGN", "confidence": 0.99}]}
    (anonymous,) = http.post("/self_heal", json=events).json()
    assert (anonymous["mode"], anonymous["reason"]) == ("dry_run", "caller not authorised to enforce")
    (sensor,) = http.post("/self_heal", json=events, headers=SENSOR).json()
    assert sensor["mode"] == "enforce" and sensor["reason"] is None
    assert sensor["action_params"]["authorised_by"] == "sensor"  # the token's label, never its value
    assert http.post("/self_heal", json=events, headers={"authorization": "Bearer nope"}).status_code == 403
    analyzed = http.post("/analyze", json={"flows": []}, headers={"authorization": "Bearer nope"})
    assert analyzed.status_code == 403


def test_the_original_csv_upload(http: httpx.Client, tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "flows.csv"
    pd.read_csv(CIC_ORIGINAL, nrows=12).to_csv(path, index=False)
    with path.open("rb") as handle:
        anonymous = http.post("/api/v1/upload/csv", files={"file": ("flows.csv", handle, "text/csv")})
    assert anonymous.status_code == 200, anonymous.text
    body = anonymous.json()
    assert set(body) >= {"message", "batch_id", "total_rows", "predictions"} and body["total_rows"] == 12
    first = body["predictions"][0]
    assert set(first) == {"traffic_data", "threat_prediction", "attack_prediction", "self_healing_action"}
    assert first["traffic_data"] and first["attack_prediction"]["attack_type_name"]
    logged = [
        p["self_healing_action"] for p in body["predictions"] if p["self_healing_action"]["action_type"] == "log_only"
    ]
    assert logged and all(a["mode"] == "dry_run" for a in logged)
    with path.open("rb") as handle:
        sensor = http.post("/api/v1/upload/csv", files={"file": ("flows.csv", handle, "text/csv")}, headers=SENSOR)
    logged = [
        p["self_healing_action"]
        for p in sensor.json()["predictions"]
        if p["self_healing_action"]["action_type"] == "log_only"
    ]
    assert logged and all(a["mode"] == "enforce" for a in logged)
    missing = http.post("/api/v1/upload/csv", data={"x": "1"})
    assert missing.status_code == 400 and missing.json()["detail"][0]["loc"] == ["body", "file"]
