#!/usr/bin/env bash
# Prepare the GPU benchmark run: put into .whl/ every wheel the GPU machine lacks.
#
#   bash bench/gpu_prepare.sh        # HERE, on a machine with PyPI access and the dev venv
#   then, on the GPU machine (no internet), from the repo root:
#   bash bench/run_all.sh --gpu      # installs .whl/*.whl into /tmp/site, runs the benches
#
# The GPU machine has Python 3.12 with torch (CUDA), transformers, tokenizers, sentencepiece,
# safetensors, pyarrow, numpy, mpi4py, tqdm, tensorboard and triton; DeepSpeed and its
# dependencies travel as wheels, pinned to the versions this project's venv runs and tests:
# deepspeed itself (an sdist: built here as a pure-Python wheel with DS_BUILD_OPS=0; its ops
# would JIT-compile on first use, and the benches use none of them), and the binary
# (cp312 manylinux) or pure wheels of what it and the data pipeline import.
# Finally the set is checked: every wheel installs for CPython 3.12 / manylinux x86-64, every
# requirement is in the set or preinstalled there, and deepspeed imports from the set here.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
DEST=${WHEEL_DIR:-.whl}
if [[ -z "${PY312:-}" ]]; then  # a working CPython 3.12, if any (pyenv shims may not run)
    for c in $(command -v python3.12 || true) /root/.pyenv/versions/3.12*/bin/python3.12; do
        if [[ -x "$c" ]] && "$c" -c "" 2>/dev/null; then PY312=$c; break; fi
    done
fi
# Beside deepspeed: its requirements (deepspeed 0.19.8 METADATA, Requires-Dist without extras)
# and theirs; webdataset + braceexpand for the shard format's readers. torch, numpy and what
# transformers brings (packaging, pyyaml, tqdm) are on the GPU machine: never shipped.
PACKAGES=(hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
          einops msgpack ninja psutil py-cpuinfo webdataset braceexpand)

pin() {  # NAME==VERSION as installed in this venv (what the test suite ran with)
    "$PY" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$1"
}

rm -rf "$DEST"
mkdir -p "$DEST"
DS=$(pin deepspeed)
echo "building $DS (pure Python, no ops) ..."
# No build isolation: setup.py imports torch, and an isolated build would download one.
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation "$DS" -w "$DEST"

SPECS=()
for p in "${PACKAGES[@]}"; do SPECS+=("$(pin "$p")"); done
echo "downloading ${SPECS[*]} ..."
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "${SPECS[@]}"

echo "checking the set ..."
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
# 1. Installable for the GPU machine's interpreter and platform, exactly as run_all.sh does.
"$PY" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target "$SCRATCH/cp312" "$DEST"/*.whl
# 2. Every requirement of every wheel is in the set or preinstalled on the GPU machine.
"$PY" - "$DEST" <<'EOF'
import sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon

PREINSTALLED = {canon(n) for n in """torch numpy transformers tokenizers sentencepiece safetensors
    pyarrow mpi4py tqdm tensorboard triton packaging pyyaml filelock huggingface-hub regex
    requests fsspec jinja2 networkx sympy""".split()}
env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
have, missing = {}, []
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    name = next(l.split(":", 1)[1].strip() for l in lines if l.startswith("Name:"))
    version = next(l.split(":", 1)[1].strip() for l in lines if l.startswith("Version:"))
    have[canon(name)] = (version, [l.split(":", 1)[1].strip() for l in lines
                                   if l.startswith("Requires-Dist:")])
for name, (_, reqs) in have.items():
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = canon(req.name)
        if dep in PREINSTALLED:
            continue
        if dep not in have or not req.specifier.contains(have[dep][0], prereleases=True):
            missing.append(f"{name} needs {text}")
if missing:
    sys.exit("incomplete wheel set: " + "; ".join(missing))
print(f"{len(have)} wheels, requirements closed: {', '.join(sorted(have))}")
EOF
# 3. The binary wheels import under a CPython 3.12 when one is at hand.
if [[ -n "${PY312:-}" ]]; then
    PYTHONPATH="$SCRATCH/cp312" "$PY312" -c "import pydantic, pydantic_core, msgpack, psutil, hjson, einops, cpuinfo; print('cp312 imports ok')"
else
    echo "no python3.12 here: cp312 binary wheels not import-checked"
fi
# 4. deepspeed from the set imports and builds our engine's config (pure wheels + this venv's
#    own binaries, since the cp312 ones cannot load into this interpreter).
mkdir -p "$SCRATCH/here"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/here" "$DEST"/*-none-any.whl
PYTHONPATH="$SCRATCH/here:$PWD" "$PY" -c "
import deepspeed, webdataset, sys
assert deepspeed.__file__.startswith('$SCRATCH'), deepspeed.__file__
from pretrain import engine
print('deepspeed', deepspeed.__version__, 'from the wheel set imports')
"
echo "ready: $(ls "$DEST" | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1)); keep $DEST/ out of git (.git/info/exclude)"
