#!/usr/bin/env bash
# Copy torch's CPU wheel (2.13.0+cpu) into docker/wheels/ when pip on this machine finds one without
# a download (a wheel folder in pip's configuration), so image builds use it; otherwise do nothing
# (docker/install-torch.sh then tries PyTorch's CPU index, then PyPI). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ls docker/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 && exit 0
# --no-index: local folders only (pip's find-links), never a download of the index's CUDA build.
if "$PYTHON" -m pip download --quiet --no-deps --no-index --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 -d docker/wheels "torch==2.13.0+cpu" >/dev/null 2>&1; then
    echo "local-wheels: copied torch 2.13.0+cpu into docker/wheels/"
else
    echo "local-wheels: no local torch 2.13.0+cpu wheel; image builds install torch from the network"
fi
