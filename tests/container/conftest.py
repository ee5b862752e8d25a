"""The Bento's image, built by `deploy/container.sh` on the session's models, and containers run from it.

Selected by `make test-container` (`pytest -m container tests/container`). A Docker engine is needed: the one that
answers, or one that `deploy/engine.sh up` starts as root (stopped again at the end of the session). Without
one the tests are skipped with the reason, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.conftest import BENTOML, REPO, copy_store, free_port

ENGINE = REPO / "deploy" / "engine.sh"
READY_SECONDS = 90
FIXTURES = REPO / "tests" / "fixtures"


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


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


@dataclass
class Container:
    name: str
    url: str
    volume: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> str:
        return docker("exec", self.name, *command).stdout.strip()

    def wait_for(self, path: str = "/readyz") -> None:
        """Until GET path answers 200 (/livez: the server is up, ready or not)."""
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if not self.running():
                pytest.fail(f"container {self.name} exited:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"container {self.name}: no 200 on {path} within {READY_SECONDS} s:\n{self.logs()[-3000:]}")

    def running(self) -> bool:
        result = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def stop(self) -> int:
        """docker stop (SIGTERM, SIGKILL after 30 s); the container's exit code."""
        docker("stop", "-t", "30", self.name, timeout=60)
        return int(docker("inspect", "-f", "{{.State.ExitCode}}", self.name).stdout)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    answered = subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    try:
        up = subprocess.run([str(ENGINE), "up"], capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        missing("no docker client on PATH")
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
    print(f"\nimage {tag}: {size / 1e6:.0f} MB, built in {seconds:.0f} s\n{result.stderr.splitlines()[-1]}")
    yield Image(tag, model_store.threat_tag, model_store.attack_tag, seconds, size)
    docker("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def run_container(image: Image) -> Iterator[Callable[..., Container]]:
    """run_container(volume=None, host_network=False, wait="/readyz", mounts=(), **env) -> Container, once GET
    wait answers 200; every container and volume is removed at module end.

    The container publishes its port 3000 on an ephemeral 127.0.0.1 port, or, with host_network, listens on a
    free loopback port itself (PORT): the way to reach services that listen on the host's loopback only.
    """
    names: list[str] = []
    volumes: set[str] = set()

    def start(
        volume: str | None = None,
        host_network: bool = False,
        wait: str = "/readyz",
        mounts: tuple[str, ...] = (),
        **env: str,
    ) -> Container:
        name = f"nids-test-{uuid.uuid4().hex[:10]}"
        port = free_port()
        args = ["run", "-d", "--name", name]
        if host_network:
            args += ["--network", "host"]
            env = {"PORT": str(port), **env}
        else:
            args += ["-p", f"127.0.0.1:{port}:3000"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if volume is not None:
            volumes.add(volume)
            args += ["-v", f"{volume}:/var/lib/nids"]
        for mount in mounts:
            args += ["-v", mount]
        docker(*args, image.tag)
        names.append(name)
        container = Container(name=name, url=f"http://127.0.0.1:{port}", volume=volume, env=env)
        container.wait_for(wait)
        return container

    yield start
    for name in names:
        docker("rm", "-f", name, check=False)
    for volume in volumes:
        docker("volume", "rm", "-f", volume, check=False)


def volume_files(image: Image, volume: str, folder: str = "") -> set[str]:
    """The names in a volume (or a folder of it), listed by a throwaway container of the image."""
    result = docker("run", "--rm", "-v", f"{volume}:/state", "--entrypoint", "ls", image.tag, "-A", f"/state/{folder}")
    return set(result.stdout.split())
