#!/usr/bin/env bash
# Build the project's images on a machine without a registry: the base image (base-image.sh), then
# the trainer's cpu target and the services image. Idempotent and cache-friendly: a re-run after a
# code change rebuilds only the layers that copy code.
#
# usage: docker/build-images.sh [--trainer-only] [--cuda]
#   --trainer-only  skip the services image
#   --cuda          build the trainer's cuda target (autoresearch/trainer:cuda, FROM CUDA_BASE_IMAGE)
#                   instead of the cpu target: for GPU hosts, which can pull public images
#
# Environment (all optional):
#   BASE_IMAGE      default autoresearch/base:bookworm
#   TRAINER_IMAGE   default autoresearch/trainer:cpu (with --cuda: autoresearch/trainer:cuda)
#   CUDA_BASE_IMAGE the cuda target's base, default in docker/Dockerfile.trainer
#   SERVICES_IMAGE  default autoresearch/services:latest
#   CA_BUNDLE       CA bundle pip uses inside the build, default /etc/ssl/certs/ca-certificates.crt
#   PYTHON          a python >= 3.11 on the host (reads pyproject.toml; pip-downloads the torch wheel)
#
# The cpu target installs torch from the local CPU wheel in docker/wheels/ (git-ignored). This script
# puts it there: from /opt/wheels if present, else `pip download torch==2.13.0+cpu`, which succeeds
# only where pip can see a CPU build (the "+cpu" local version never matches PyPI's CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
BASE_IMAGE=${BASE_IMAGE:-autoresearch/base:bookworm}
SERVICES_IMAGE=${SERVICES_IMAGE:-autoresearch/services:latest}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PYTHON=${PYTHON:-python3}

trainer_only=0
target=cpu
for arg in "$@"; do
    case "$arg" in
        --trainer-only) trainer_only=1 ;;
        --cuda) target=cuda ;;
        *) echo "usage: $0 [--trainer-only] [--cuda]" >&2; exit 2 ;;
    esac
done
TRAINER_IMAGE=${TRAINER_IMAGE:-autoresearch/trainer:$target}

timed() {  # timed LABEL COMMAND...: run, then print how long it took
    local label=$1 start=$SECONDS
    shift
    "$@"
    echo "build-images: $label took $((SECONDS - start)) s"
}

# Replace DEST only when its content differs, so Docker's layer cache sees no change.
install_if_changed() {
    local src=$1 dest=$2
    if ! cmp -s "$src" "$dest" 2>/dev/null; then cp "$src" "$dest"; fi
}

prepare_wheels() {
    mkdir -p docker/wheels
    local wheel="torch-${TORCH_VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    [[ -f docker/wheels/$wheel ]] && return 0
    if [[ -f /opt/wheels/$wheel ]]; then
        cp "/opt/wheels/$wheel" docker/wheels/
    else
        "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.11 \
            --platform manylinux_2_28_x86_64 -d docker/wheels "torch==${TORCH_VERSION}+cpu"
    fi
    [[ -f docker/wheels/$wheel ]] || { echo "build-images: $wheel not found in docker/wheels" >&2; exit 1; }
}

prepare_build_dir() {
    mkdir -p docker/build
    local tmp
    tmp=$(mktemp)
    if [[ -s $CA_BUNDLE ]]; then cp "$CA_BUNDLE" "$tmp"; else : >"$tmp"; fi
    install_if_changed "$tmp" docker/build/ca.crt
    "$PYTHON" -c 'import sys, tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >"$tmp"
    install_if_changed "$tmp" docker/build/requirements-services.txt
    rm -f "$tmp"
    chmod 0644 docker/build/ca.crt docker/build/requirements-services.txt
}

build() {  # build DOCKERFILE TAG [EXTRA ARGS...]
    local dockerfile=$1 tag=$2
    shift 2
    # The legacy builder (no buildx here) prints a deprecation notice; the build itself is the same.
    docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -f "$dockerfile" -t "$tag" "$@" . \
        2> >(grep -v -e 'DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' \
                     -e 'Install the buildx component' -e 'docs.docker.com/go/buildx' -e '^ *$' >&2)
}

for required in trainer/prepare.py trainer/evaluate.py trainer/train.py; do
    [[ -f $required ]] || { echo "build-images: $required is missing" >&2; exit 1; }
done
if [[ $trainer_only == 0 && ! -f program.md ]]; then
    echo "build-images: program.md is missing (the services image ships it)" >&2
    exit 1
fi

total_start=$SECONDS
timed "base image $BASE_IMAGE" bash docker/base-image.sh "$BASE_IMAGE"
prepare_wheels
prepare_build_dir
cuda_args=()
if [[ -n ${CUDA_BASE_IMAGE:-} ]]; then cuda_args=(--build-arg CUDA_BASE_IMAGE="$CUDA_BASE_IMAGE"); fi
timed "trainer image $TRAINER_IMAGE" build docker/Dockerfile.trainer "$TRAINER_IMAGE" --target "$target" "${cuda_args[@]}"
if [[ $trainer_only == 0 ]]; then
    timed "services image $SERVICES_IMAGE" build docker/Dockerfile.services "$SERVICES_IMAGE"
fi
echo "build-images: all done in $((SECONDS - total_start)) s"
