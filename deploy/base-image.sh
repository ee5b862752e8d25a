#!/usr/bin/env bash
# A Python 3.11 base image made from Debian's packages, for machines that reach no container registry
# (CI here): debootstrap bookworm (python3 is 3.11), then `docker import`. deploy/container.sh builds the CI-only
# image on it; deploy/compose-ci.sh builds PostgreSQL and HAProxy images on it for the Compose bring-up.
#
#   deploy/base-image.sh [TAG]      default local/debian-bookworm:python3; skipped when TAG already exists
#
# Debian's packages only: no certificate of the build machine, no pip setting (deploy/container.sh adds those to
# a throwaway build image and keeps them out of the image it tags). Images for users are built on BentoML's
# default base (python:3.11-slim) where a registry answers. Needs root, debootstrap and a Debian mirror in the
# machine's own apt sources.
set -euo pipefail

TAG="${1:-local/debian-bookworm:python3}"
SUITE=bookworm

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base-image.sh: $TAG exists, kept" >&2
  exit 0
fi

# the first mirror serving $SUITE in this machine's apt sources (one-line or deb822 format)
mirror() {
  local files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for file in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] && files+=("$file")
  done
  [ "${#files[@]}" -gt 0 ] || return 0
  awk -v suite="$SUITE" '
    /^deb / { for (i = 2; i < NF; i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { if ($(i + 1) == suite) { print $i; exit } } }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }
    /^$/ { uri = "" }
  ' "${files[@]}" | head -1
}

MIRROR="$(mirror)"
if [ -z "$MIRROR" ]; then
  echo "base-image.sh: no apt source for $SUITE on this machine; pass a mirror in MIRROR=" >&2
  exit 1
fi
ROOTFS="$(mktemp -d /var/tmp/nids-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS" "$ROOTFS.log"' EXIT

echo "base-image.sh: debootstrap $SUITE from the machine's apt mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -30 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"

chroot "$ROOTFS" apt-get clean
# the image runs with LANG=C.UTF-8: no translations, manuals or package lists (33 MB of locales alone)
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
  "$ROOTFS"/var/log/*

tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'LABEL org.nids-bento.base="Debian bookworm from debootstrap (deploy/base-image.sh)"' \
  --change 'CMD ["/bin/bash"]' \
  - "$TAG" >/dev/null
echo "base-image.sh: built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1 / 1e6}'))" >&2
