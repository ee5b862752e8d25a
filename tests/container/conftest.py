"""The Bento's image, built by `deploy/container.sh` on the session's models, and containers run from it.

Selected by `make test-container` (`pytest -m container tests/container`). A Docker engine is needed: the one that
answers, or one that `deploy/engine.sh up` starts as root (stopped again at the end of the session). Without
one the tests are skipped with the reason, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from benchmarks.replicas import Container, StartError, docker, start_container
from tests.integration.conftest import BENTOML, REPO, copy_store

ENGINE = REPO / "deploy" / "engine.sh"
FIXTURES = REPO / "tests" / "fixtures"


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """A figure for the CI log, shown even when pytest captures output."""
    with capsys.disabled():
        print(f"\n{text}")


def missing(reason: str) -> None:
    """Skip for a missing tool, but fail in CI, whose .ci/run installs every tool these tests need."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)")
    pytest.skip(reason)


@dataclass(frozen=True)
class Image:
    tag: str
    threat_tag: str
    attack_tag: str
    build_seconds: float
    size_bytes: int


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """The engine that answers, or one started here (and stopped at the end). NIDS_TEST_NO_DOCKER=1 runs the
    tests that can do without one (the balanced replicas as processes) as if there were none."""
    if os.environ.get("NIDS_TEST_NO_DOCKER"):
        missing("NIDS_TEST_NO_DOCKER is set")
    if shutil.which("docker") is None:
        missing("no docker client on PATH (Debian package docker.io)")
    answered = subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    up = subprocess.run([str(ENGINE), "up"], capture_output=True, text=True, timeout=120, check=False)
    if up.returncode != 0:
        missing(f"no Docker engine answers and none could be started: {up.stderr.strip()}")
    yield
    if not answered:
        subprocess.run([str(ENGINE), "down"], timeout=120, check=False)


@pytest.fixture(scope="session")
def image(docker_engine: None, model_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """`bentoml build` on the session's models, then `deploy/container.sh` (the `make container` script)."""
    home = copy_store(model_store.home, tmp_path_factory.mktemp("container-store"))
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML": str(BENTOML)}
    built = subprocess.run(
        [str(BENTOML), "build", "--output", "tag"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    match = re.search(r"__tag__:(\S+)", built.stdout)
    assert match, built.stdout
    tag = f"nids-test:{match.group(1).split(':')[1]}"
    start = time.monotonic()
    result = subprocess.run(
        [str(REPO / "deploy" / "container.sh"), match.group(1)],
        env={**env, "NIDS_IMAGE_TAG": tag},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == tag
    size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
    yield Image(tag, model_store.threat_tag, model_store.attack_tag, seconds, size)
    docker("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def run_container(image: Image) -> Iterator[Callable[..., Container]]:
    """run_container(**options) -> Container: benchmarks.replicas.start_container on the image; every container
    and volume started is removed at module end."""
    started: list[Container] = []

    def start(**options: Any) -> Container:
        try:
            container = start_container(image.tag, **options)
        except StartError as error:
            pytest.fail(str(error))
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove()
    for volume in {container.volume for container in started} - {None}:
        docker("volume", "rm", "-f", str(volume), check=False)


def volume_files(image: Image, volume: str, folder: str = "") -> set[str]:
    """The names in a volume (or a folder of it), listed by a throwaway container of the image."""
    result = docker("run", "--rm", "-v", f"{volume}:/state", "--entrypoint", "ls", image.tag, "-A", f"/state/{folder}")
    return set(result.stdout.split())
