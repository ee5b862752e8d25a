"""The image as a user runs it: `docker run -p ... -v STATE:/var/lib/nids IMAGE`, then every API over HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from benchmarks.replicas import SENSOR_TOKEN, Container, docker
from nids.core.features import ATTACK_CLASSES
from nids.core.settings import SERVER_MEMORY_MIB, WORKER_MEMORY_MIB
from nids.models.bundles import HELD_OUT_SHA256, KDD_TEST
from tests.models.test_bundles import sign, threat_bundle, write_bundle

from .conftest import FIXTURES, Image, report, volume_files

pytestmark = pytest.mark.container

# the SQLite files the service keeps in NIDS_DATA_DIR: audit log, model lifecycle state, prediction log
STATE_FILES = {"healing-audit.sqlite3", "model-lifecycle.sqlite3", "predictions.sqlite3"}
ADMIN_TOKEN = "container-test-admin-token"
# 825 MB measured: pyarrow (Arrow IPC and Parquet bodies) alone is 170 MB of it, the held-out rows 12 MB
MAX_IMAGE_BYTES = 850 * 10**6
DISTRIBUTIONS = "import importlib.metadata as m; print(*sorted({d.metadata['Name'] for d in m.distributions()}))"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def post(client: httpx.Client, path: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    return client.post(path, content=json.dumps(body), headers=headers)


@pytest.fixture(scope="module")
def served(run_container: Callable[..., Container]) -> Container:
    return run_container(volume=f"nids-test-state-{uuid.uuid4().hex[:8]}")


def test_image_is_lean(image: Image, capsys: pytest.CaptureFixture[str]) -> None:
    report(capsys, f"image {image.tag}: {image.size_bytes / 1e6:.0f} MB, built in {image.build_seconds:.0f} s")
    assert image.size_bytes <= MAX_IMAGE_BYTES, f"{image.size_bytes / 1e6:.0f} MB"
    listing = docker("run", "--rm", "--entrypoint", "python", image.tag, "-c", DISTRIBUTIONS).stdout
    installed = {name.lower() for name in listing.split()}
    assert not {"matplotlib", "pandas", "skl2onnx", "onnx"} & installed
    assert {"bentoml", "onnxruntime", "scikit-learn", "psycopg"} <= installed
    compilers = docker("run", "--rm", "--entrypoint", "sh", image.tag, "-c", "command -v gcc cc c++ || true").stdout
    assert compilers.strip() == ""
    sources = docker("run", "--rm", "--entrypoint", "ls", image.tag, "src").stdout.split()
    assert not {"tests", "training"} & set(sources)  # serving code only


def test_runs_as_an_unprivileged_user(image: Image, served: Container) -> None:
    assert docker("image", "inspect", "-f", "{{.Config.User}}", image.tag).stdout.strip() == "bentoml"
    assert served.exec("id", "-u") != "0"
    assert served.exec("stat", "-c", "%U", "/proc/1") == "bentoml"  # the server itself, not only `exec`


def test_every_api_answers_the_real_fixtures(served: Container, image: Image) -> None:
    with served.client() as http:
        assert http.get("/livez").status_code == 200
        (threat,) = post(http, "/detect_threat", fixture("detect_threat")).json()
        assert 0 <= threat["prediction_score"] <= 1 and threat["model_version"] == image.threat_tag
        (attack,) = post(http, "/classify_attack", fixture("classify_attack")).json()
        assert attack["attack_type_name"] == ATTACK_CLASSES[attack["attack_type_encoded"]]
        assert attack["model_version"] == image.attack_tag
        analyzed = post(http, "/analyze", fixture("analyze")).json()
        assert analyzed["summary"]["total"] == 2 and {r["kind"] for r in analyzed["results"]} == {"threat", "attack"}
        csv = "service,flag,src_bytes,dst_bytes,count,same_srv_rate,diff_srv_rate,dst_host_srv_count,"
        csv += "dst_host_same_srv_rate,dst_host_same_src_port_rate,label\nhttp,SF,1500,2000,10,0.8,0.1,50,0.75,0.9,x\n"
        uploaded = http.post("/analyze_csv", files={"file": ("flows.csv", csv.encode(), "text/csv")})
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["summary"]["total"] == 1 and uploaded.json()["ignored_columns"] == ["label"]
        healed = post(http, "/self_heal", fixture("self_heal")).json()
        assert [a["action_type"] for a in healed] == ["block_ip", "restart_service"]
        assert {a["mode"] for a in healed} == {"dry_run"}  # nothing is enforced by default
        info = post(http, "/model_info", fixture("model_info")).json()
        assert (info["threat"]["tag"], info["attack"]["tag"]) == (image.threat_tag, image.attack_tag)
        assert all(case["passed"] for case in info["threat"]["reference_cases"] + info["attack"]["reference_cases"])
        listed = {r["action_id"] for r in post(http, "/healing_actions", {"limit": 1000}).json()}
        assert {a["action_id"] for a in healed} <= listed
        assert re.search(r"^nids_predictions_total\{.*\} [1-9]", http.get("/metrics").text, re.MULTILINE)


def in_progress(http: httpx.Client, path: str) -> float:
    pattern = re.compile(rf'^bentoml_service_request_in_progress\{{endpoint="{path}".*\}} (\S+)$', re.MULTILINE)
    return sum(float(value) for value in pattern.findall(http.get("/metrics").text))


def test_sigterm_finishes_the_request_in_flight_and_closes_the_audit_log(
    run_container: Callable[..., Container], image: Image
) -> None:
    volume = f"nids-test-state-{uuid.uuid4().hex[:8]}"
    container = run_container(volume=volume)
    flows = fixture("analyze")["flows"] * 5000  # 10,000 flows: long enough to be caught in flight
    reply: dict[str, httpx.Response] = {}
    with container.client() as http:
        sender = threading.Thread(
            target=lambda: reply.setdefault("analyze", post(http, "/analyze", {"flows": flows}, token=SENSOR_TOKEN))
        )
        sender.start()
        while not in_progress(http, "/analyze") and sender.is_alive():
            time.sleep(0.01)
        assert sender.is_alive(), "the request ended before it could be caught in flight"
        docker("kill", "--signal", "TERM", container.name)
        sender.join(timeout=60)
    assert reply["analyze"].status_code == 200, reply["analyze"].text[:500]
    assert len(reply["analyze"].json()["results"]) == len(flows)
    assert docker("wait", container.name, timeout=60).stdout.strip() == "0"
    assert "Completed cleanup hook: close" in container.logs()
    # every SQLite store was closed: its write-ahead log was checkpointed into the file and removed
    assert volume_files(image, volume) == STATE_FILES


def test_state_on_the_volume_survives_a_new_container(run_container: Callable[..., Container]) -> None:
    volume = f"nids-test-state-{uuid.uuid4().hex[:8]}"
    first = run_container(volume=volume)
    with first.client() as http:
        decided = {a["action_id"] for a in post(http, "/self_heal", fixture("self_heal")).json()}
    assert first.stop() == 0
    second = run_container(volume=volume)
    with second.client() as http:
        listed = {r["action_id"] for r in post(http, "/healing_actions", {"limit": 1000}).json()}
        assert decided <= listed
        restarted = post(http, "/healing_action", {"action_id": sorted(decided)[0]})
    assert restarted.status_code == 200 and restarted.json()["action_id"] == sorted(decided)[0]


def test_documented_environment_variables_are_honoured(run_container: Callable[..., Container], image: Image) -> None:
    volume = f"nids-test-state-{uuid.uuid4().hex[:8]}"
    container = run_container(
        volume=volume,
        NIDS_DATA_DIR="/var/lib/nids/elsewhere",
        NIDS_MAX_ROWS_PER_REQUEST="3",
        NIDS_HEALING_ENFORCEMENT_STOPPED="true",
        NIDS_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    with container.client() as http:
        too_many = post(http, "/analyze", {"flows": fixture("analyze")["flows"] * 2})
        assert too_many.status_code == 413, too_many.text
        resumed = post(http, "/healing_enforcement", {"enabled": True}, token=ADMIN_TOKEN)
        assert resumed.status_code == 409 and "NIDS_HEALING_ENFORCEMENT_STOPPED" in resumed.json()["error"]
        assert post(http, "/self_heal", fixture("self_heal")).status_code == 200
    assert container.stop() == 0
    assert volume_files(image, volume) == {"elsewhere"}
    assert volume_files(image, volume, "elsewhere") == STATE_FILES

    missing = run_container(wait="/livez", NIDS_THREAT_MODEL_TAG="threat_detector:doesnotexist")
    readyz = httpx.get(f"{missing.url}/readyz", timeout=5)
    assert readyz.status_code == 503 and "threat_detector:doesnotexist" in readyz.json()["error"]


def test_runs_with_a_read_only_root_filesystem(run_container: Callable[..., Container], image: Image) -> None:
    """`docker run --read-only --tmpfs /tmp -v STATE:/var/lib/nids` (Kubernetes: readOnlyRootFilesystem)."""
    volume = f"nids-test-state-{uuid.uuid4().hex[:8]}"
    container = run_container(volume=volume, read_only=True)
    with container.client() as http:
        assert http.get("/readyz").status_code == 200
        assert post(http, "/detect_threat", fixture("detect_threat")).status_code == 200
        assert post(http, "/self_heal", fixture("self_heal")).status_code == 200
    refused = docker("exec", container.name, "sh", "-c", "touch /home/bentoml/bento/probe 2>&1; true").stdout
    assert "Read-only file system" in refused
    assert container.stop() == 0
    assert volume_files(image, volume) == STATE_FILES  # the state went to the volume, and only there


def test_a_memory_limit_that_cannot_hold_two_workers_starts_one(
    run_container: Callable[..., Container], served: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two usable cores but memory for one worker (nids.core.settings.workers_for): one worker, ready, and it
    answers the largest request allowed."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: one worker whatever the memory")
    assert len(served.workers()) == cores  # without a limit: one per core
    limit = SERVER_MEMORY_MIB + 2 * WORKER_MEMORY_MIB - 1
    container = run_container(memory=f"{limit}m")
    assert len(container.workers()) == 1
    with container.client() as http:
        flows = fixture("analyze")["flows"] * 5000  # 10,000 flows
        analyzed = post(http, "/analyze", {"flows": flows}, token=SENSOR_TOKEN)
        assert analyzed.status_code == 200, analyzed.text[:500]
        assert http.get("/readyz").status_code == 200
    report(capsys, f"--memory {limit}m on {cores} cores: 1 worker, ready, a 10,000-flow /analyze answered")


def test_a_signed_bundle_uploaded_inside_the_container_is_checked_on_the_shipped_held_out_rows(
    run_container: Callable[..., Container], tmp_path: Path
) -> None:
    """The original's upload form with a signed `.joblib` bundle: the metric check reads the held-out rows the
    Bento ships (not a checkout's data/), so the upload answers 201 with the metrics and the files' sha256."""
    key = "container-test-signing-key"
    container = run_container(wait="/livez", NIDS_ADMIN_TOKEN=ADMIN_TOKEN, NIDS_MODEL_SIGNING_KEY=key)
    wait_ready(container, seconds=300)  # a busy host (the suite shares 2 cores) may take longer than 90 s
    bundle = write_bundle(tmp_path, threat_bundle())
    form = {"model_type": "threat_detector", "description": "signed bundle", "signature": sign(bundle, key.encode())}
    with container.client() as http:
        uploaded = http.post(
            "/api/v1/models/upload",
            data=form,
            files={"file": (bundle.name, bundle.read_bytes())},
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=300,
        )
    assert uploaded.status_code == 201, f"{uploaded.text}\n{container.logs()[-6000:]}"
    results = uploaded.json()["validation_results"]
    assert results["held_out_metrics"]["kddtest"]["rows"] == 22_544
    assert results["held_out_files"]["KDDTest+.csv.gz"]["sha256"] == HELD_OUT_SHA256[KDD_TEST]
    assert uploaded.json()["is_active"] is False


def test_no_layer_of_the_image_holds_the_build_hosts_ca_certificates(
    image: Image, capsys: pytest.CaptureFixture[str]
) -> None:
    """The build passes the host's TLS-intercepting proxy, whose CA certificates go into a throwaway build base
    only (deploy/container.sh, deploy/ci_image.py): every layer of the saved image is read, none holds them (as a
    file, a link or in the trust bundle), nor the build-only PIP_BREAK_SYSTEM_PACKAGES."""
    host = {path.stem: _pem_body(path.read_text()) for path in sorted(HOST_CA_DIR.glob("*.crt"))}
    if not host:
        pytest.skip(f"this host trusts no certificate of its own ({HOST_CA_DIR} holds no .crt)")
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image.tag).stdout)
    assert not [env for env in config["Env"] if env.startswith("PIP_BREAK_SYSTEM_PACKAGES=")]
    found, layers = [], 0
    with subprocess.Popen(["docker", "save", image.tag], stdout=subprocess.PIPE) as save:
        assert save.stdout is not None
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for member in archive:
                blob = archive.extractfile(member) if member.isfile() else None
                if blob is None or member.name.endswith((".json", "repositories")):
                    continue
                held = _host_certificates_in_layer(blob, host, member.name)
                if held is not None:  # a layer
                    layers += 1
                    found += held
    assert save.returncode == 0 and layers >= 1
    assert found == []
    label = (config.get("Labels") or {}).get(CI_LABEL)
    report(capsys, f"{image.tag}: {layers} layer(s) read, none holds {sorted(host)}; CI-only label: {label!r}")


def wait_ready(container: Container, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (ready := httpx.get(f"{container.url}/readyz", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, f"/readyz not 200 within {seconds} s: {ready.text}"
        time.sleep(0.5)


HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
CI_LABEL = "org.nids-bento.ci-only"  # deploy/ci_image.py


def _pem_body(text: str) -> str:
    """A certificate's base64 body, without its armour and line breaks (as it stands in any bundle)."""
    return "".join(token for token in text.split() if "-----" not in token)


def _host_certificates_in_layer(blob: IO[bytes], host: dict[str, str], layer: str) -> list[str] | None:
    """Where a layer (a tar, perhaps compressed) holds one of the host's certificates: its files, links, bundles
    (None: the blob is no layer)."""
    found: list[str] = []
    try:
        with tarfile.open(fileobj=blob, mode="r|*") as entries:
            for entry in entries:
                name = entry.name.removeprefix("./")
                if any(name.endswith((f"/{stem}.crt", f"/{stem}.pem")) for stem in host):
                    found.append(f"{layer}: {name}")
                elif entry.isfile() and name.startswith("etc/ssl/certs/") and (data := entries.extractfile(entry)):
                    bundle = "".join(data.read().decode("latin-1").split())
                    found += [f"{layer}: {name} holds {stem}" for stem, body in host.items() if body in bundle]
    except tarfile.ReadError:  # not a layer (the image's configuration, an index)
        return None
    return found
