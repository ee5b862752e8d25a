#!/usr/bin/env bash
# `make container`: the image of a Bento, built by `bentoml containerize` (classic builder, host network).
#
#   deploy/container.sh [BENTO_TAG]     default nids:latest; prints the image tag on its last line
#
# NIDS_CONTAINER_BASE picks the base image:
#   default  BentoML's path: bentofile.yaml's docker.base_image (python:3.11-slim, pulled from the registry)
#   local    a base made from Debian's packages (deploy/base-image.sh), for machines without a registry (CI here):
#            the CI-ONLY image, tagged nids:ci-local and labelled org.nids-bento.ci-only. Its packages were
#            installed through the build host's TLS-intercepting proxy, whose CA certificates go into a throwaway
#            build base only; deploy/ci_image.py removes them and flattens the image, so no layer holds them.
#   auto     (the default) `default` when python:3.11-slim is present or can be pulled, else `local`
# NIDS_IMAGE_TAG names the image (default: the Bento's tag, e.g. nids:abc123, also tagged nids:latest; on the
# local base nids:ci-local). Needs a Docker engine: as root, deploy/engine.sh up starts one when none answers.
set -euo pipefail
cd "$(dirname "$0")/.."

BENTO="${1:-nids:latest}"
BASE_MODE="${NIDS_CONTAINER_BASE:-auto}"
DEFAULT_BASE=python:3.11-slim
LOCAL_BASE=local/debian-bookworm:python3
CI_TAG=nids:ci-local
BENTOML="$(realpath "${BENTOML:-$(command -v bentoml || echo .venv/bin/bentoml)}")"

deploy/engine.sh up

if [ "$BASE_MODE" = auto ]; then
  if docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1 || timeout 120 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE_MODE=default
  else
    BASE_MODE=local
  fi
fi
context="$(mktemp -d)"
transient=()  # images of this build only: removed at the end
trap 'rm -rf "$context"; [ "${#transient[@]}" -eq 0 ] || docker rmi -f "${transient[@]}" >/dev/null 2>&1 || true' EXIT

build_args=()
image_tag=()
case "$BASE_MODE" in
  default)
    if [ -n "${NIDS_IMAGE_TAG:-}" ]; then
      image_tag=(--image-tag "$NIDS_IMAGE_TAG")
    fi
    ;;
  local)
    deploy/base-image.sh "$LOCAL_BASE"
    # the throwaway build base: the host's CA certificates (package downloads pass its proxy) and pip allowed
    # to install into Debian's Python (BentoML's template installs uv with it)
    build_base="local/nids-build-base:$$"
    mkdir "$context/base"
    cp /usr/local/share/ca-certificates/*.crt "$context/base/" 2>/dev/null || true
    printf 'FROM %s\nCOPY . /usr/local/share/ca-certificates/\nRUN rm -f /usr/local/share/ca-certificates/Dockerfile && update-ca-certificates >/dev/null\nENV PIP_BREAK_SYSTEM_PACKAGES=1\n' \
      "$LOCAL_BASE" >"$context/base/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$build_base" "$context/base" >/dev/null
    transient+=("$build_base")
    build_args=(--opt "build-arg=NIDS_BASE_IMAGE=$build_base")
    image_tag=(--image-tag "local/nids-build:$$")
    transient+=("local/nids-build:$$")
    ;;
  *) echo "container.sh: NIDS_CONTAINER_BASE must be auto, default or local, not $BASE_MODE" >&2; exit 2 ;;
esac

echo "container.sh: containerize $BENTO on the $BASE_MODE base" >&2
start=$SECONDS
# BentoML 1.4.39 copies the Bento to a temporary build context and then refuses to read the Dockerfile template
# there unless that context lies below the working directory: build from inside a temporary directory.
mkdir "$context/bento"
# BentoML asks for BuildKit, which needs buildx with some Docker clients; the classic builder needs none
(cd "$context/bento" && TMPDIR="$context/bento" DOCKER_BUILDKIT=0 \
  "$BENTOML" containerize "$BENTO" --opt network=host "${build_args[@]}" "${image_tag[@]}" >&2)
if [ "$BASE_MODE" = local ]; then
  tag="${NIDS_IMAGE_TAG:-$CI_TAG}"
  python3 deploy/ci_image.py "local/nids-build:$$" "$tag"
else
  tag="${NIDS_IMAGE_TAG:-$("$BENTOML" get "$BENTO" -o json | python3 -c 'import json, sys; b = json.load(sys.stdin); print(b["name"] + ":" + b["version"])')}"
  if [ -z "${NIDS_IMAGE_TAG:-}" ]; then
    docker tag "$tag" "${tag%%:*}:latest"  # what deploy/docker-compose.yml runs by default
  fi
fi
size="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
echo "container.sh: built $tag ($size) in $((SECONDS - start)) s" >&2
echo "$tag"
