"""deploy/: the Kubernetes manifests against the API schemas (kubernetes-validate, offline), the Compose file
(`docker-compose config` where it is installed) and how both wire the replicas, probes, balancer and state."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nids.core.settings import SERVER_MEMORY_MIB, WORKER_MEMORY_MIB, workers_for

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest supported minor we aim at and the newest bundled
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
STATE_DIR = "/var/lib/nids"
WRITABLE = {STATE_DIR, "/tmp"}  # the only writable paths of a replica (read-only root filesystem)
SECRETS = {"NIDS_ADMIN_TOKEN", "NIDS_SENSOR_TOKEN", "NIDS_VIEWER_TOKEN", "NIDS_MODEL_SIGNING_KEY"}
SHARED_STORES = {"NIDS_HEALING_AUDIT_URL", "NIDS_MODEL_STATE_URL", "NIDS_PREDICTION_LOG_URL"}
ENV_EXAMPLE = DEPLOY / "compose.env.example"


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [doc for doc in documents() if doc["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    docs = documents()
    assert {doc["kind"] for doc in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    deployment = by_kind("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_deployment_probes_resources_state_and_user() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {port["containerPort"] for port in container["ports"]} == {3000}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert set(mounts) == WRITABLE and set(mounts.values()) <= {volume["name"] for volume in pod["volumes"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["terminationGracePeriodSeconds"] > 30  # beyond the service's 30 s request timeout
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        spec = by_kind(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    target = by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (
        by_kind("HorizontalPodAutoscaler")["spec"]["minReplicas"]
        >= 2
        > by_kind("PodDisruptionBudget")["spec"]["minAvailable"]
    )


def test_the_deployment_reads_every_secret_and_shares_every_store() -> None:
    (container,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert set(env) >= SECRETS | SHARED_STORES
    for name in SECRETS | SHARED_STORES:  # from a Secret, never a literal in the file
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name
    assert len({env[name]["valueFrom"]["secretKeyRef"]["name"] for name in SHARED_STORES}) == 1  # one database


def quantity(text: str) -> float:
    """A Kubernetes quantity (2, 500m, 1184Mi, 1Gi) as a number (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * factor
    return float(text)


def test_requests_and_limits_follow_the_worker_rule() -> None:
    """The pod's CPU limit is its workers (one per core) and its memory limit fits exactly that many (the
    default of nids.core.settings.workers_for): no worker is killed for memory, no core idles."""
    (container,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    cores, memory = quantity(resources["limits"]["cpu"]), int(quantity(resources["limits"]["memory"]))
    assert cores == int(cores) >= 1
    assert workers_for(int(cores), memory) == cores
    assert workers_for(int(cores) + 1, memory) == cores  # a bigger node adds no worker the memory cannot hold
    assert memory - (SERVER_MEMORY_MIB + int(cores) * WORKER_MEMORY_MIB) * 2**20 < 64 * 2**20  # nor idles memory


def test_compose_runs_two_replicas_behind_haproxy_on_one_postgres() -> None:
    services = COMPOSE["services"]
    replicas = [name for name, service in services.items() if str(service.get("image", "")).startswith("${NIDS_IMAGE")]
    assert len(replicas) == 2
    for name in replicas:
        service = services[name]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        environment = service["environment"]
        assert {environment[name] for name in SHARED_STORES} == {environment["NIDS_HEALING_AUDIT_URL"]}
        assert environment["NIDS_HEALING_AUDIT_URL"].startswith("postgresql://nids:${POSTGRES_PASSWORD:?")
        assert all(environment[name].startswith(f"${{{name}:?") for name in SECRETS)  # required, no default
        assert [volume.split(":")[1] for volume in service["volumes"]] == [STATE_DIR]
        assert service["read_only"] is True
        assert {volume.split(":")[1] for volume in service["volumes"]} | {
            mount.split(":")[0] for mount in service["tmpfs"]
        } == WRITABLE
    assert len({services[name]["volumes"][0] for name in replicas}) == 2  # a state volume each
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    balancer = services["haproxy"]
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert any(volume.startswith("./haproxy/haproxy.cfg:") for volume in balancer["volumes"])
    assert set(re.findall(r"\$\{(\w+)\}", config)) == set(balancer["environment"])
    assert {balancer["environment"][f"NIDS_REPLICA_{n}"].split(":")[0] for n in (1, 2)} == set(replicas)
    assert {name: depends["condition"] for name, depends in balancer["depends_on"].items()} == dict.fromkeys(
        replicas, "service_healthy"
    )
    assert "option httpchk GET /readyz" in config


def test_the_balancer_checks_tolerate_a_busy_host() -> None:
    """A /readyz slowed by a queue of requests is not a failure (issue 18: both replicas went DOWN at 501 ms)."""
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert re.search(r"^\s*timeout check 2s$", config, re.MULTILINE)
    (server,) = re.findall(r"^\s*default-server (.*)$", config, re.MULTILINE)
    options = dict(re.findall(r"\b(inter|fall|rise) (\S+)", server))
    assert options == {"inter": "1s", "fall": "3", "rise": "2"}


def docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose missing in CI (.ci/run installs it)")
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    return subprocess.run(
        [compose, "--env-file", str(env_file), "-f", str(DEPLOY / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={key: value for key, value in os.environ.items() if key not in SECRETS | {"POSTGRES_PASSWORD"}},
    )


def test_compose_file_is_valid_for_docker_compose() -> None:
    result = docker_compose("config", "-q", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    (tmp_path / "empty.env").write_text("")
    result = docker_compose("config", "-q", env_file=tmp_path / "empty.env")
    assert result.returncode != 0 and "set POSTGRES_PASSWORD" in result.stderr, result.stderr
