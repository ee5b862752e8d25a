#!/usr/bin/env bash
# `make container`: the image of a Bento, built by `bentoml containerize` (classic builder, host network).
#
#   deploy/container.sh [BENTO_TAG]     default nids:latest; prints the image tag on its last line
#
# NIDS_CONTAINER_BASE picks the base image:
#   default  BentoML's path: bentofile.yaml's docker.base_image (python:3.11-slim, pulled from the registry)
#   local    a base made from Debian's packages (deploy/base-image.sh), for machines without a registry (CI here)
#   auto     (the default) `default` when python:3.11-slim is present or can be pulled, else `local`
# NIDS_IMAGE_TAG names the image (default: the Bento's tag, e.g. nids:abc123, also tagged nids:latest). Needs a
# Docker engine: as root, deploy/engine.sh up starts one when none answers.
set -euo pipefail
cd "$(dirname "$0")/.."

BENTO="${1:-nids:latest}"
BASE_MODE="${NIDS_CONTAINER_BASE:-auto}"
DEFAULT_BASE=python:3.11-slim
LOCAL_BASE=local/debian-bookworm:base
BENTOML="$(realpath "${BENTOML:-$(command -v bentoml || echo .venv/bin/bentoml)}")"

deploy/engine.sh up

if [ "$BASE_MODE" = auto ]; then
  if docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1 || timeout 120 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE_MODE=default
  else
    BASE_MODE=local
  fi
fi
build_args=()
case "$BASE_MODE" in
  default) ;;
  local)
    deploy/base-image.sh "$LOCAL_BASE"
    build_args=(--opt "build-arg=NIDS_BASE_IMAGE=$LOCAL_BASE")
    ;;
  *) echo "container.sh: NIDS_CONTAINER_BASE must be auto, default or local, not $BASE_MODE" >&2; exit 2 ;;
esac

image_tag=()
if [ -n "${NIDS_IMAGE_TAG:-}" ]; then
  image_tag=(--image-tag "$NIDS_IMAGE_TAG")
fi
echo "container.sh: containerize $BENTO on the $BASE_MODE base" >&2
start=$SECONDS
# BentoML 1.4.39 copies the Bento to a temporary build context and then refuses to read the Dockerfile template
# there unless that context lies below the working directory: build from inside a temporary directory.
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
# BentoML asks for BuildKit, which needs buildx with some Docker clients; the classic builder needs none
(cd "$context" && TMPDIR="$context" DOCKER_BUILDKIT=0 \
  "$BENTOML" containerize "$BENTO" --opt network=host "${build_args[@]}" "${image_tag[@]}" >&2)
tag="${NIDS_IMAGE_TAG:-$("$BENTOML" get "$BENTO" -o json | python3 -c 'import json, sys; b = json.load(sys.stdin); print(b["name"] + ":" + b["version"])')}"
if [ -z "${NIDS_IMAGE_TAG:-}" ]; then
  docker tag "$tag" "${tag%%:*}:latest"  # what deploy/docker-compose.yml runs by default
fi
size="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
echo "container.sh: built $tag ($size) in $((SECONDS - start)) s" >&2
echo "$tag"
