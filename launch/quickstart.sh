#!/usr/bin/env bash
# The main job end to end on the built-in sample corpus (README command 1):
#
#   bash launch/quickstart.sh [WORK_DIR]      # default ./quickstart; safe to re-run
#
# sample corpus -> tokenizer -> shards -> train K steps on 2 ranks (2 CPU processes, or
# the GPUs) -> checkpoint -> a second invocation resumes to 2K steps -> HF export ->
# fill-mask, then the validation-loss curve. Steps whose output exists are skipped, and
# training resumes from the run's newest checkpoint, so a re-run finishes an interrupted one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mkdir -p "${1:-./quickstart}" && cd "${1:-./quickstart}" && pwd)"
K="${K:-500}"
VOCAB="${VOCAB:-4000}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    NGPU="${NGPU:-$(nvidia-smi -L | wc -l)}"
else
    NGPU="${NGPU:-2}"  # CPU: two gloo ranks
fi

bash "$ROOT/launch/setup.sh"
# shellcheck disable=SC1091
source "$ROOT/.venv/bin/activate"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }

step "sample corpus -> $WORK/corpus"
[ -f "$WORK/corpus/valid.jsonl" ] || python -m data_pipeline sample-corpus "$WORK/corpus"

step "tokenizer: RoBERTa's byte-level BPE (vocabulary $VOCAB) -> $WORK/tokenizer"
[ -f "$WORK/tokenizer/tokenizer.json" ] || python -m data_pipeline train-tokenizer \
    --input "$WORK/corpus/train.jsonl" --out "$WORK/tokenizer" --vocab-size "$VOCAB" \
    --family roberta

step "shards -> $WORK/shards"
[ -f "$WORK/shards/manifest.json" ] || python -m data_pipeline preprocess \
    --input "$WORK/corpus/train.jsonl" --valid-input "$WORK/corpus/valid.jsonl" \
    --tokenizer "$WORK/tokenizer" --out "$WORK/shards" --shard-size 256K

step "inspect the shards (totals, checksums, a decoded sample)"
python -m data_pipeline inspect "$WORK/shards" --verify --samples 1

train() {  # the same command both times: the second one resumes from the checkpoint
    deepspeed --num_gpus "$NGPU" launch/pretrain.sh --config configs/quickstart.toml \
        "data.shard_dir=\"$WORK/shards\"" "run_dir=\"$WORK/run\"" "max_steps=$1" \
        "schedule.total_steps=$((2 * K))"
}
step "train to step $K on $NGPU ranks -> $WORK/run"
train "$K"
step "resume from the step-$K checkpoint and train to step $((2 * K))"
train "$((2 * K))"

step "export -> $WORK/hf"
python -m pretrain export --run "$WORK/run" --out "$WORK/hf"

step "fill-mask"
python -m pretrain fill-mask --model "$WORK/hf" --top-k 5 \
    "Return a new <mask> containing the items of the list."

step "validation MLM loss (fixed masks) by step"
python - "$WORK/run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"eval_loss"' in line]
hi, lo = max(r["eval_loss"] for r in rows), min(r["eval_loss"] for r in rows)
for r in rows:  # bar: where the loss sits between the lowest and the highest value
    bar = "#" * (1 + round(50 * (r["eval_loss"] - lo) / max(hi - lo, 1e-9)))
    print(f"step {r['step']:>5}  eval_loss {r['eval_loss']:.3f}  acc {r['eval_mlm_acc']:.3f}  {bar}")
first, last = rows[0]["eval_loss"], rows[-1]["eval_loss"]
print(f"validation MLM loss {first:.3f} -> {last:.3f}")
if not last < 0.9 * first:  # an untrained model sits at ln(vocab); training must beat it
    sys.exit(f"quickstart: the validation loss did not fall by 10 % ({first:.3f} -> {last:.3f})")
PY
