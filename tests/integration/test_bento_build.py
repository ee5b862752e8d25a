"""`bentoml build` packs service, package, policy, both models and pinned dependencies into a Bento."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from nids.models.bundles import HELD_OUT_SHA256

from .conftest import BENTOML, REPO, copy_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENTOFILE = yaml.safe_load((REPO / "bentofile.yaml").read_text())


@pytest.fixture(scope="module")
def bento(model_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = copy_store(model_store.home, tmp_path_factory.mktemp("build-store"))
    result = subprocess.run(
        [str(BENTOML), "build", "--output", "tag"],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    match = re.search(r"__tag__:(\S+):(\S+)", result.stdout)
    assert match, result.stdout
    name, version = match.groups()
    return home / "bentos" / name / version


def test_bento_holds_the_service_package_policy_and_models(bento: Path, model_store: Any) -> None:
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "service:NIDSService"  # the top-level service.py, BentoML's convention
    assert {model["tag"] for model in manifest["models"]} == {model_store.threat_tag, model_store.attack_tag}
    for path in (
        "service.py",
        "nids/serving/service.py",
        "nids/core/pipeline.py",
        "nids/healing/engine.py",
        "config/healing.yaml",
    ):
        assert (bento / "src" / path).is_file(), path
    for absent in ("tests", "training", "benchmarks", "loadtest"):  # the Bento serves; it does not train
        assert not (bento / "src" / absent).exists(), absent
    # of data/, only the held-out rows an imported bundle is checked on, byte for byte (and their provenance)
    shipped = {str(path.relative_to(bento / "src")) for path in (bento / "src" / "data").rglob("*.gz")}
    assert shipped == {str(path.relative_to(REPO)) for path in HELD_OUT_SHA256}
    for path in HELD_OUT_SHA256:
        assert (bento / "src" / path.relative_to(REPO)).read_bytes() == path.read_bytes()
    routes = {route["name"] for route in manifest["schema"]["routes"]}
    assert routes == {
        *("detect_threat", "classify_attack", "self_heal", "analyze", "analyze_csv", "model_info"),
        *("healing_actions", "healing_action", "healing_revert", "healing_enforcement", "ping"),
        *("detect_threat_explained", "classify_attack_explained"),  # the batched APIs' twins for ?explain=N
    }


def test_generated_dockerfile_and_pinned_requirements(bento: Path) -> None:
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    # deploy/Dockerfile.template: the base is a build argument, python:3.11-slim unless a local base is passed
    assert "ARG NIDS_BASE_IMAGE=python:3.11-slim\nFROM ${NIDS_BASE_IMAGE}" in dockerfile
    assert "build-essential" not in dockerfile
    assert 'VOLUME ["/var/lib/nids"]' in dockerfile
    assert "/readyz" in dockerfile.split("HEALTHCHECK", 1)[1]
    assert "env/python/install.sh" in dockerfile  # installs env/python/requirements.txt
    assert "EXPOSE 3000" in dockerfile
    assert "ENTRYPOINT" in dockerfile
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "bentoml==1.4.39" in requirements
    assert all("==" in line for line in requirements), requirements
    for package in ("scikit-learn", "onnxruntime", "pydantic", "numpy"):
        assert any(line.startswith(f"{package}==") for line in requirements), package
    for training_only in ("matplotlib", "skl2onnx", "onnx", "pandas"):
        assert not any(line.startswith(f"{training_only}==") for line in requirements), training_only


def test_bentofile_pins_satisfy_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {
        canonicalize_name(Requirement(dep).name): Requirement(dep) for dep in pyproject["project"]["dependencies"]
    }
    pinned = {canonicalize_name(Requirement(pin).name): Requirement(pin) for pin in BENTOFILE["python"]["packages"]}
    assert set(pinned) == set(declared)
    for name, pin in pinned.items():
        (version,) = [spec.version for spec in pin.specifier if spec.operator == "=="]
        assert declared[name].specifier.contains(version), f"{name}=={version} outside {declared[name].specifier}"
        assert pin.extras == declared[name].extras, name
    assert BENTOFILE["python"]["lock_packages"] is False
