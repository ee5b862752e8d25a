"""The CI-only image (deploy/container.sh on the local base): the image BentoML built, without the build host's CA
certificates, flattened into one layer, so that no layer of it holds them, and labelled CI-only.

    python3 deploy/ci_image.py BUILT TAG     # writes TAG; BUILT is left for the caller to remove

The build trusted the host's TLS-intercepting proxy to install packages (its certificates were added to a
throwaway build base). Here they are removed from the trust store in a first stage, and the whole filesystem is
copied into an empty image (`FROM scratch`), which gets BUILT's configuration again (environment, user,
working directory, entrypoint, ports, volumes, health check, labels) but PIP_BREAK_SYSTEM_PACKAGES, a build
setting, plus the label org.nids-bento.ci-only. Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CI_LABEL = "org.nids-bento.ci-only"
CI_LABEL_TEXT = "built on a local Debian base for CI (deploy/container.sh): not a release, never push"
HOST_CA_DIR = "/usr/local/share/ca-certificates"
BUILD_ONLY_ENV = ("PIP_BREAK_SYSTEM_PACKAGES=",)
STAGE_LABEL = "org.nids-bento.ci-image-stage"


def _duration(nanoseconds: int) -> str:
    return f"{nanoseconds // 1_000_000}ms"


def healthcheck(config: dict[str, Any]) -> list[str]:
    """The HEALTHCHECK instruction of an image's Config.Healthcheck (none: no line)."""
    check = config.get("Healthcheck") or {}
    test = check.get("Test") or []
    if not test or test[0] == "NONE":
        return []
    options = [
        f"--{name}={_duration(check[key])}"
        for name, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"))
        if check.get(key)
    ]
    if check.get("Retries"):
        options.append(f"--retries={check['Retries']}")
    command = test[1] if test[0] == "CMD-SHELL" else json.dumps(test[1:])
    return [f"HEALTHCHECK {' '.join(options)} CMD {command}"]


def dockerfile(built: str, config: dict[str, Any]) -> str:
    """Two stages: BUILT without the host's certificates, then all of it in one layer with BUILT's configuration."""
    lines = [
        f"FROM {built} AS built",
        f"LABEL {STAGE_LABEL}={os.getpid()}",  # the stage's image, removed after the build
        "USER root",
        f"RUN rm -f {HOST_CA_DIR}/*.crt && update-ca-certificates --fresh >/dev/null",
        "FROM scratch",
        "COPY --from=built / /",
    ]
    lines += [
        f"ENV {name}={json.dumps(value)}"
        for name, _, value in (env.partition("=") for env in config.get("Env") or [])
        if not any(f"{name}=".startswith(prefix) for prefix in BUILD_ONLY_ENV)
    ]
    labels = {**(config.get("Labels") or {}), CI_LABEL: CI_LABEL_TEXT}
    lines += [f"LABEL {json.dumps(name)}={json.dumps(value)}" for name, value in sorted(labels.items())]
    lines += [f"EXPOSE {port}" for port in sorted(config.get("ExposedPorts") or {})]
    if volumes := sorted(config.get("Volumes") or {}):
        lines.append(f"VOLUME {json.dumps(volumes)}")
    if config.get("WorkingDir"):
        lines.append(f"WORKDIR {config['WorkingDir']}")
    lines += healthcheck(config)
    if config.get("User"):
        lines.append(f"USER {config['User']}")
    if config.get("Entrypoint"):
        lines.append(f"ENTRYPOINT {json.dumps(config['Entrypoint'])}")
    if config.get("Cmd"):
        lines.append(f"CMD {json.dumps(config['Cmd'])}")
    return "\n".join(lines) + "\n"


def main(built: str, tag: str) -> None:
    inspected = subprocess.run(["docker", "image", "inspect", built], capture_output=True, text=True, check=True)
    config = json.loads(inspected.stdout)[0]["Config"]
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(dockerfile(built, config))
        subprocess.run(
            ["docker", "build", "-q", "--network", "host", "-t", tag, context],
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            stdout=subprocess.DEVNULL,
            check=True,
        )
    stage = f"label={STAGE_LABEL}={os.getpid()}"
    stages = subprocess.run(["docker", "images", "-q", "--filter", stage], capture_output=True, text=True, check=True)
    if ids := stages.stdout.split():
        subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True, check=False)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: deploy/ci_image.py BUILT TAG")
    main(sys.argv[1], sys.argv[2])
