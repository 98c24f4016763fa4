#!/usr/bin/env bash
# Elastic pretraining with torchrun: nodes may join and leave while the job runs.
#
#   NNODES=2:8 NPROC_PER_NODE=8 RDZV_ENDPOINT=head-node:29400 RDZV_ID=run42 \
#       bash launch/elastic.sh --config configs/roberta-base.toml data.shard_dir=... run_dir=...
#
# Start the same command on every node (by hand, pdsh, or one Slurm task per node). torchrun
# forms a world from MIN..MAX nodes; when a node joins or leaves (or a rank fails) it stops
# every worker and starts them again with the new membership (up to MAX_RESTARTS failures;
# joins and leaves are not counted). The restarted workers resume from the newest complete
# checkpoint at the new world size: the global batch stays batch.global_batch_size,
# gradient accumulation is re-derived (a world size that cannot divide the global batch
# stops with a one-line error naming the sizes that would work), a ZeRO checkpoint written
# by another number of ranks is converted to DeepSpeed's universal format once, and the data
# continues the same global sample sequence. Choose the global batch so that every possible
# world size divides it: G = micro_batch x NPROC_PER_NODE x k x accumulation for k = MIN..MAX.
#
# On a membership change torchrun sends SIGTERM to the workers and SIGKILLs them 30 s later:
# they finish the step, save a checkpoint and exit 0 within that time if a save is quick;
# otherwise the restart resumes from the previous checkpoint (keep checkpoint.every_minutes
# small). SIGUSR1 or SIGTERM sent to this script (preemption) is forwarded as SIGUSR1 to this
# node's workers only, so they save and exit 0, torchrun sees a clean exit, and so does this
# script; torchrun itself would kill the workers after SHUTDOWN_TIMEOUT seconds.
#
# Environment:
#   NNODES          MIN:MAX nodes (default 1:1; a single number for a fixed size)
#   NPROC_PER_NODE  ranks per node (default: the number of GPUs, or 1 without any)
#   RDZV_ENDPOINT   host:port of the rendezvous, reachable from every node (default
#                   localhost:29400); the node whose address it is hosts the store
#   RDZV_ID         a job id shared by all nodes (default: $SLURM_JOB_ID, else "pretrain")
#   RDZV_CONF       extra rendezvous settings, e.g. "last_call_timeout=30,join_timeout=900"
#   MAX_RESTARTS    worker-group restarts after failures (default 3)
#   SHUTDOWN_TIMEOUT seconds torchrun waits for workers to exit before SIGKILL (default 300)
#   PYTHON          interpreter (default: python)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED="${PYTHONUNBUFFERED:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# torch 2.13 shares the rendezvous TCPStore with the workers by default, and then a rank-0
# agent that restarts for a joining node does not republish MASTER_ADDR for the new round:
# the joining node waits for it forever. Without sharing every round publishes it afresh.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

PYTHON="${PYTHON:-python}"
NNODES="${NNODES:-1:1}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
    [ "${NPROC_PER_NODE:-0}" -gt 0 ] || NPROC_PER_NODE=1
fi
RDZV_ENDPOINT="${RDZV_ENDPOINT:-localhost:29400}"
RDZV_ID="${RDZV_ID:-${SLURM_JOB_ID:-pretrain}}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-300}"
conf=()
if [ -n "${RDZV_CONF:-}" ]; then
    conf=(--rdzv-conf "$RDZV_CONF")
fi

"$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID" \
    ${conf[@]+"${conf[@]}"} --max-restarts "$MAX_RESTARTS" --shutdown-timeout "$SHUTDOWN_TIMEOUT" \
    -m pretrain train "$@" &
agent=$!

forward() {  # preemption: the workers (children of torchrun) save and exit 0
    echo "elastic.sh: $1 received; asking the workers to checkpoint and stop" >&2
    pkill -USR1 -P "$agent" 2>/dev/null || true
}
trap 'forward SIGUSR1' USR1
trap 'forward SIGTERM' TERM

status=0
while :; do
    wait "$agent" && status=0 || status=$?
    # A trapped signal interrupts `wait` (status > 128) while torchrun still runs: wait again.
    kill -0 "$agent" 2>/dev/null || break
done
exit "$status"
