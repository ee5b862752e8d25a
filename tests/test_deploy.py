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

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest supported minor we aim at and the newest bundled
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
STATE_DIR = "/var/lib/nids"


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
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == STATE_DIR and mount["name"] in {volume["name"] for volume in pod["volumes"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["terminationGracePeriodSeconds"] > 30  # beyond the service's 30 s request timeout
    assert {env["name"] for env in container["env"]} >= {"NIDS_HEALING_AUDIT_URL"}
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


def test_compose_runs_two_replicas_behind_haproxy_on_one_postgres() -> None:
    services = COMPOSE["services"]
    replicas = [name for name, service in services.items() if str(service.get("image", "")).startswith("${NIDS_IMAGE")]
    assert len(replicas) == 2
    for name in replicas:
        service = services[name]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["environment"]["NIDS_HEALING_AUDIT_URL"].startswith("postgresql://")
        assert [volume.split(":")[1] for volume in service["volumes"]] == [STATE_DIR]
    assert len({services[name]["volumes"][0] for name in replicas}) == 2  # a state volume each
    balancer = services["haproxy"]
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert any(volume.startswith("./haproxy/haproxy.cfg:") for volume in balancer["volumes"])
    assert set(re.findall(r"\$\{(\w+)\}", config)) == set(balancer["environment"])
    assert {balancer["environment"][f"NIDS_REPLICA_{n}"].split(":")[0] for n in (1, 2)} == set(replicas)
    assert {name: depends["condition"] for name, depends in balancer["depends_on"].items()} == dict.fromkeys(
        replicas, "service_healthy"
    )
    assert "option httpchk GET /readyz" in config


def test_compose_file_is_valid_for_docker_compose() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose missing in CI (.ci/run installs it)")
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    result = subprocess.run(
        [compose, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
