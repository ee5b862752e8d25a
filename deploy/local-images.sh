#!/usr/bin/env bash
# The PostgreSQL and HAProxy images deploy/docker-compose.yml runs, for machines that reach no container registry:
# where postgres:15 or haproxy:2.6 is neither present nor pullable, build local/postgres:15 and local/haproxy:2.6
# from Debian's packages on the local base (deploy/base-image.sh), and print the Compose option that runs them:
# `-f deploy/docker-compose.local.yml`, or nothing where the registry's images are at hand.
#
#   docker compose -f deploy/docker-compose.yml $(deploy/local-images.sh) up -d
#
# Local images are for CI and offline use: never push them.
set -euo pipefail
cd "$(dirname "$0")/.."

available() { docker image inspect "$1" >/dev/null 2>&1 || timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

if available postgres:15 && available haproxy:2.6; then
  exit 0
fi
BASE=local/debian-bookworm:python3
deploy/base-image.sh "$BASE"
for image in postgres haproxy; do
  tag="local/$image:$([ "$image" = postgres ] && echo 15 || echo 2.6)"
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    echo "local-images.sh: building $tag from Debian's packages" >&2
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "BASE=$BASE" -t "$tag" "deploy/local/$image" >/dev/null
  fi
done
echo "-f deploy/docker-compose.local.yml"
