#!/usr/bin/env bash
# Every benchmark from one command; each appends its section to bench/RESULTS.md.
#
#   bash bench/run_all.sh                  CPU: preprocess, loader, model_step, train_throughput
#                                          (small presets; ~15 min on 2 cores), then faults
#                                          (fault injection, ~15 min more)
#   bash bench/run_all.sh --gpu            on a GPU machine, from the repo root: installs the
#                                          wheels of .whl/ (bench/gpu_prepare.sh) into /tmp/site
#                                          if DeepSpeed is missing, then train_throughput and
#                                          model_step on CUDA (base presets, seq 512, bf16;
#                                          ours' variants with the time left: --extras),
#                                          within GPU_BUDGET_S seconds (default 540; the
#                                          architectures run in the order RoBERTa, DeBERTa,
#                                          ELECTRA, BERT, ALBERT, and those the budget does not
#                                          reach are reported as skipped: raise it for all five)
#   bash bench/run_all.sh --quick          tiny runs that only check every bench works
#   ... --results FILE                     append there instead of bench/RESULTS.md
#
# With $OUT set (the device tool's output folder) the GPU sections, the updated RESULTS.md
# and this script's log are copied there after every bench, so a run cut short keeps what
# it measured. Rehearsal of the --gpu flow on a CPU machine (tests the script, measures
# nothing): BENCH_DEVICE=cpu GPU_BENCH_ARGS="--quick" bash bench/run_all.sh --gpu
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=cpu
RESULTS=bench/RESULTS.md
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) MODE=gpu ;;
        --quick) MODE=quick ;;
        --results) RESULTS=$2; shift ;;
        *) echo "usage: bash bench/run_all.sh [--gpu | --quick] [--results FILE]" >&2; exit 2 ;;
    esac
    shift
done

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ $MODE == gpu && -x /opt/torch/.venv/bin/python3 ]]; then PY=/opt/torch/.venv/bin/python3
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then PY=python
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi

status=0
run() {  # run a bench, note a failure, carry on with the next one
    echo "== $*"
    "$@" || { echo "== failed (exit $?): $*"; status=1; }
}

if [[ $MODE == quick ]]; then
    run "$PY" bench/preprocess.py --quick --results "$RESULTS"
    run "$PY" bench/loader.py --quick --results "$RESULTS"
    run "$PY" bench/model_step.py --quick --results "$RESULTS"
    run "$PY" bench/train_throughput.py --quick --in-process --results "$RESULTS"
    exit $status
fi

if [[ $MODE == cpu ]]; then
    run "$PY" bench/preprocess.py --results "$RESULTS"
    run "$PY" bench/loader.py --results "$RESULTS"
    run "$PY" bench/model_step.py --results "$RESULTS"
    run "$PY" bench/train_throughput.py --results "$RESULTS"
    run "$PY" bench/faults.py --results "$RESULTS"
    exit $status
fi

# --gpu ---------------------------------------------------------------------------------------
BUDGET=${GPU_BUDGET_S:-540}
DEVICE=${BENCH_DEVICE:-cuda}
read -r -a EXTRA <<< "${GPU_BENCH_ARGS:-}"
SECTIONS=$(mktemp)  # the current bench's section, appended to $RESULTS when it is done
ALL=$(mktemp)       # every section of this run (copied to $OUT/gpu_sections.md)
LOG=${OUT:+$OUT/run_all.log}
LOG=${LOG:-/dev/null}
save() {
    cat "$SECTIONS" >> "$RESULTS"
    cat "$SECTIONS" >> "$ALL"
    : > "$SECTIONS"
    if [[ -n "${OUT:-}" ]]; then
        cp "$RESULTS" "$OUT/RESULTS.md"
        cp "$ALL" "$OUT/gpu_sections.md"
    fi
}
{
    echo "== $(date -Is) $(hostname) $("$PY" --version 2>&1)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    if ! "$PY" -c "import deepspeed" 2>/dev/null; then
        if ! ls .whl/*.whl > /dev/null 2>&1; then
            echo "DeepSpeed is missing and there is no .whl/: run 'bash bench/gpu_prepare.sh' on a machine with PyPI access, then carry .whl" >&2
            exit 1
        fi
        if "$PY" -m pip --version > /dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
        else  # no pip there: a wheel is a zip laid out for site-packages
            "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall('/tmp/site') for w in sys.argv[1:]]" .whl/*.whl
        fi
    fi
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    export PATH=/tmp/site/bin:$PATH DS_ACCELERATOR=$DEVICE TOKENIZERS_PARALLELISM=false
    "$PY" -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    echo "nvcc: $(command -v nvcc || echo none); gcc: $(command -v gcc || echo none)"

    # The main figures: ours vs HF through DeepSpeed, ~1 min per side (compilation included).
    left=$((BUDGET - SECONDS))
    ((left > 200)) || { echo "GPU_BUDGET_S=${BUDGET} leaves ${left} s: too little" >&2; exit 1; }
    run timeout $((left - 90)) "$PY" bench/train_throughput.py --device "$DEVICE" --extras \
        --budget-s $((left - 120)) --results "$SECTIONS" "${EXTRA[@]}"
    save
    left=$((BUDGET - SECONDS))
    if ((left > 100)); then  # forward + backward alone, same presets (no DeepSpeed)
        run timeout $((left - 10)) "$PY" bench/model_step.py --device "$DEVICE" --steps 5 \
            --results "$SECTIONS" "${EXTRA[@]}"
        save
    else
        echo "== skipped model_step: ${left} s left of GPU_BUDGET_S=${BUDGET}"
    fi
    echo "== done in ${SECONDS} s"
    exit $status
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
