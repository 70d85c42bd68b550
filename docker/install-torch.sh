#!/bin/sh
# Install torch 2.13.0, hash-pinned (docker/lock/), into PYTHON's environment, from the first source
# this machine has:
#   1. a local wheel folder holding torch 2.13.0+cpu (WHEEL_FOLDER, or pip's own configured find-links)
#   2. PyTorch's CPU index (https://download.pytorch.org/whl/cpu), when it answers
#   3. PyPI: torch 2.13.0, the CUDA 13.0 build with its NVIDIA libraries (it runs on CPU too)
# VARIANT "cuda" goes straight to 3 (the trainer image's cuda target); "auto" (default) tries 1 to 3.
#
# usage: install-torch.sh PYTHON LOCK_DIR [WHEEL_FOLDER]      environment: VARIANT, PIP_ARGS
set -eu
python=$1 locks=$2 wheels=${3:-}
variant=${VARIANT:-auto}
CPU_INDEX=https://download.pytorch.org/whl/cpu
pip_install() { "$python" -m pip install --disable-pip-version-check ${PIP_ARGS:-} --require-hashes "$@"; }
quiet_try() {  # run quietly; keep the output for the final error message
    log=$(mktemp)
    if "$@" >"$log" 2>&1; then rm -f "$log"; return 0; fi
    tail -3 "$log" | sed 's/^/    /' >&2
    rm -f "$log"
    return 1
}
case $variant in
    auto|cuda) ;;
    *) echo "install-torch: VARIANT must be auto or cuda, not $variant" >&2; exit 2 ;;
esac
if [ "$variant" = auto ]; then
    find_links=""
    if [ -n "$wheels" ] && ls "$wheels"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then find_links="--find-links $wheels"; fi
    echo "install-torch: trying torch 2.13.0+cpu from a local wheel folder"
    # shellcheck disable=SC2086
    if quiet_try pip_install $find_links -r "$locks/torch-cpu.lock"; then
        echo "install-torch: installed torch 2.13.0+cpu from a local wheel folder"; exit 0
    fi
    if "$python" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=10)" >/dev/null 2>&1; then
        echo "install-torch: trying torch 2.13.0+cpu from $CPU_INDEX"
        if quiet_try pip_install --extra-index-url "$CPU_INDEX" -r "$locks/torch-cpu.lock"; then
            echo "install-torch: installed torch 2.13.0+cpu from $CPU_INDEX"; exit 0
        fi
    else
        echo "install-torch: $CPU_INDEX does not answer"
    fi
fi
echo "install-torch: installing torch 2.13.0 from PyPI (CUDA 13.0 build, NVIDIA libraries included)"
pip_install -r "$locks/torch-cuda.lock"
