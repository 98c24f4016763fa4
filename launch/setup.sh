#!/usr/bin/env bash
# Create (or reuse) ./.venv with everything this project needs.
#
#   bash launch/setup.sh          # runtime dependencies
#   bash launch/setup.sh dev      # + test dependencies (pytest, transformers, mpich)
#
# Idempotent: a second run with an unchanged pyproject.toml does nothing.
# torch: on a machine without an NVIDIA GPU we install the CPU build *before* the
# project so that pip never resolves `torch` to a multi-GB CUDA wheel. Override the
# spec with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url URL").
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-}"
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.installed-${EXTRA:-runtime}"
want="$(cat pyproject.toml launch/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
# The dev install is a superset of the runtime one: nothing to do after the tests' set-up.
if [ -z "$EXTRA" ] && [ -f "$VENV/.installed-dev" ] && [ "$(cat "$VENV/.installed-dev")" = "$want" ]; then
    exit 0
fi

python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        python -m pip install -q ${TORCH_SPEC:-torch}
    else
        python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
    fi
fi
# DS_BUILD_OPS=0: install DeepSpeed without compiling its C++/CUDA ops (they JIT on demand).
if [ -n "$EXTRA" ]; then
    DS_BUILD_OPS=0 python -m pip install -q -e ".[$EXTRA]"
else
    DS_BUILD_OPS=0 python -m pip install -q -e .
fi
echo "$want" > "$stamp"
