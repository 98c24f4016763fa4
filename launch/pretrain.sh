#!/usr/bin/env bash
''':'
# One rank of pretraining. A bash/python polyglot, so that all of these work:
#
#   deepspeed launch/pretrain.sh --config configs/roberta-base.toml [key=value ...]
#   deepspeed --num_gpus 2 launch/pretrain.sh --config ...   # 2 ranks (also on CPU: gloo)
#   bash launch/pretrain.sh --config ...                     # one process
#
# DeepSpeed's launcher runs `python -u launch/pretrain.sh --local_rank=N ARGS` on every
# rank: Python reads the first line as the start of a string and runs the part below it;
# bash sees the no-op `:` and runs this part. Both set the same environment defaults.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED="${PYTHONUNBUFFERED:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
PYTHON="${PYTHON:-python}"
exec "$PYTHON" -m pretrain train "$@"
'''
import os
import sys

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
# sys.path[0] is launch/ when run as a script; the project root is where `pretrain` lives.
sys.path[0:1] = [here]

args = []
for arg in sys.argv[1:]:  # the DeepSpeed launcher's --local_rank=N (the env has LOCAL_RANK too)
    if arg.startswith("--local_rank="):
        os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
    else:
        args.append(arg)

from pretrain.cli import main  # noqa: E402

sys.exit(main(["train", *args]))
