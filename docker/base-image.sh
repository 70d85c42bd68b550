#!/usr/bin/env bash
# Build the local base image (Debian bookworm minbase + Python 3.11, pip, git, CA certificates) with
# debootstrap + docker import, for machines without an image registry. GPU hosts with a registry
# pass their usual public base image to the Dockerfiles instead (build argument BASE_IMAGE).
# usage: docker/base-image.sh [IMAGE]        (default autoresearch/base:bookworm; idempotent)
set -euo pipefail
image=${1:-autoresearch/base:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install -y debootstrap" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
packages=python3,python3-pip,python3-venv,git,ca-certificates,tini
debootstrap --variant=minbase --include="$packages" bookworm "$root" http://deb.debian.org/debian >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$image"
rm -f "$root.log"
echo "built base image $image"
