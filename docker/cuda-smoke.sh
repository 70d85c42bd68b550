#!/usr/bin/env bash
# Build the trainer's cuda target through compose and check it on this machine's CPU (no GPU needed):
#   1. torch reports its CUDA version and the NVIDIA libraries (cuDNN, cuBLAS, NCCL, ...) load;
#   2. the tiny preset trains and is scored inside the image, through the sandbox, on the CPU;
#   3. the GPU request shapes (tests/integration/test_gpu_request.py) hold against this engine.
# Prints the build time and the image size. Environment: TRAINER_IMAGE (default
# autoresearch/trainer:cuda), BASE_IMAGE and CA_BUNDLE as docker/build-images.sh reads them, PY.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRAINER_IMAGE=${TRAINER_IMAGE:-autoresearch/trainer:cuda}
PY=${PY:-.venv/bin/python}
start=$SECONDS
# Built by compose from compose.yaml (the `prepare` service's build: the cuda target), as a GPU host
# builds it with `docker compose up`. Without a registry, AR_BASE_IMAGE names the local base image.
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
if [ -z "${BASE_IMAGE:-}" ] && docker image inspect autoresearch/base:bookworm >/dev/null 2>&1; then
    BASE_IMAGE=autoresearch/base:bookworm  # docker/base-image.sh's, equivalent to the public base
fi
if [ -n "${BASE_IMAGE:-}" ]; then export AR_BASE_IMAGE=$BASE_IMAGE; fi
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}  # as docker/build-images.sh
if [ -f "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" docker/certs/host.pem
    export AR_CA_BUNDLE=docker/certs/host.pem
fi
AR_TRAINER_IMAGE=$TRAINER_IMAGE "${compose[@]}" -f compose.yaml -p cuda-smoke build prepare
echo "cuda-smoke: build (${compose[*]} -f compose.yaml build prepare) took $((SECONDS - start)) s"
size=$(docker image inspect -f '{{.Size}}' "$TRAINER_IMAGE")
echo "cuda-smoke: $TRAINER_IMAGE is $((size / 1000000)) MB"
docker run --rm -i --network none "$TRAINER_IMAGE" python - <<'PY'
import ctypes, glob, os, sys
import torch
assert torch.version.cuda, "torch has no CUDA"
print(f"cuda-smoke: torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
root = os.path.join(os.path.dirname(torch.__file__), "..", "nvidia")
wanted = ["libcudart.so*", "libcublas.so*", "libcudnn.so*", "libnccl.so*", "libcusparse.so*", "libcufft.so*"]
loaded = []
for pattern in wanted:
    found = sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
    if not found:
        sys.exit(f"cuda-smoke: no {pattern} in the image")
    ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)
    loaded.append(os.path.basename(found[0]))
print("cuda-smoke: loaded", ", ".join(loaded))
print("cuda-smoke: torch.cuda.is_available() =", torch.cuda.is_available(), "(no GPU here)")
PY
AR_TRAINER_IMAGE=$TRAINER_IMAGE TRAINER_TARGET=cuda "$PY" -m pytest -p no:cacheprovider -v \
    "tests/integration/test_docker_sandbox.py::test_the_real_trainer_and_evaluator_run_in_the_sandbox" \
    tests/integration/test_gpu_request.py
echo "cuda-smoke: passed in $((SECONDS - start)) s"
