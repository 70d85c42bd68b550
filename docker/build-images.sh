#!/usr/bin/env bash
# Build the project's images on a machine without a registry: the base image (base-image.sh), then
# the trainer's cpu target and the services image. Idempotent and cache-friendly: a re-run after a
# code change rebuilds only the layers that copy code.
#
# usage: docker/build-images.sh [--trainer-only] [--cuda]
#   --trainer-only  skip the services image
#   --cuda          build the trainer's cuda target (autoresearch/trainer:cuda: torch and the NVIDIA
#                   libraries from PyPI) instead of the cpu target
#
# Environment (all optional):
#   BASE_IMAGE      default autoresearch/base:bookworm
#   TRAINER_IMAGE   default autoresearch/trainer:cpu (with --cuda: autoresearch/trainer:cuda)
#   SERVICES_IMAGE  default autoresearch/services:latest
#   CA_BUNDLE       CA bundle pip uses inside the build, default /etc/ssl/certs/ca-certificates.crt
#                   (copied to docker/certs/host.pem, the build's CA_BUNDLE argument)
#   PYTHON          a python >= 3.11 on the host (pip-downloads the local torch wheel, if any)
#
# Torch: docker/install-torch.sh (a local wheel folder, docker/wheels/, first). This script copies
# torch's CPU wheel there when pip on this machine can find one locally (docker/local-wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

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

prepare_ca() {
    local tmp
    tmp=$(mktemp)
    if [[ -s $CA_BUNDLE ]]; then cp "$CA_BUNDLE" "$tmp"; else : >"$tmp"; fi
    install_if_changed "$tmp" docker/certs/host.pem
    rm -f "$tmp"
    chmod 0644 docker/certs/host.pem
}

build() {  # build DOCKERFILE TAG [EXTRA ARGS...]
    local dockerfile=$1 tag=$2
    shift 2
    # The legacy builder (no buildx here) prints a deprecation notice; the build itself is the same.
    docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg CA_BUNDLE=docker/certs/host.pem \
        -f "$dockerfile" -t "$tag" "$@" . \
        2> >(grep -v -e 'DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' \
                     -e 'Install the buildx component' -e 'docs.docker.com/go/buildx' -e '^ *$' >&2)
}

for required in trainer/prepare.py trainer/protocol.py trainer/channel.py trainer/evaluate.py \
    trainer/model_server.py trainer/train.py; do
    [[ -f $required ]] || { echo "build-images: $required is missing" >&2; exit 1; }
done
if [[ $trainer_only == 0 && ! -f program.md ]]; then
    echo "build-images: program.md is missing (the services image ships it)" >&2
    exit 1
fi

total_start=$SECONDS
timed "base image $BASE_IMAGE" bash docker/base-image.sh "$BASE_IMAGE"
PYTHON=$PYTHON bash docker/local-wheels.sh
prepare_ca
variant=auto
if [[ $target == cuda ]]; then variant=cuda; fi
timed "trainer image $TRAINER_IMAGE" build docker/Dockerfile.trainer "$TRAINER_IMAGE" --target "$target" \
    --build-arg TORCH_VARIANT="$variant"
if [[ $trainer_only == 0 ]]; then
    timed "services image $SERVICES_IMAGE" build docker/Dockerfile.services "$SERVICES_IMAGE"
fi
echo "build-images: all done in $((SECONDS - total_start)) s"
