#!/usr/bin/env bash
# The paper-scale GPU check (benchmarks/gpu_check.py) as one command on a GPU machine that can download nothing.
#
#   bash benchmarks/gpu_check.sh wheels      # beforehand, where PyPI is reachable: the packages the GPU image lacks,
#                                            # as Python 3.12 x86-64 wheels, into .whl/ (git-ignored via info/exclude)
#   bash benchmarks/gpu_check.sh [OUT_MD] [LOGS_DIR]
#                                            # on the GPU machine: install .whl/ (when present) into /tmp/site, then
#                                            # build the random SD 2.1-base pipeline, run the smoke with 1 and 2
#                                            # clients and write OUT_MD (default results/gpu_smoke.md)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 importlib-metadata==10.2.0 peft==0.21.2)
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == wheels ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    platforms=()
    for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${tag}_x86_64")
    done
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "${WHEELS[@]}"
    exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${1:-results/gpu_smoke.md}
logs=${2:-/tmp/warmfed-gpu-check}
exec "$PYTHON" -m benchmarks.gpu_check --out "$out" --logs "$logs" --work /tmp/warmfed-gpu-check
