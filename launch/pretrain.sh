#!/usr/bin/env bash
''':'
# One rank of pretraining. A bash/python polyglot, so that all of these work:
#
#   bash launch/pretrain.sh --config configs/roberta-base.toml [key=value ...]   # one process
#   deepspeed launch/pretrain.sh --config ...                  # every GPU of this machine
#   deepspeed --num_gpus 2 launch/pretrain.sh --config ...     # 2 ranks (also on CPU: gloo)
#
# DeepSpeed's launcher runs `python -u launch/pretrain.sh --local_rank=N ARGS` on every
# rank: Python reads the first line as the start of a string and runs the part below it;
# bash sees the no-op `:` and runs this part. Rank, world size and device always come from
# the launcher's environment (pretrain/engine/launch_env.py), so the same arguments work under
# every launcher. All arguments are passed through to `python -m pretrain train`.
#
# Multi-node with a DeepSpeed hostfile (launch/hostfile.example: one `HOST slots=GPUS` line
# per node; the first host is the master; the run directory and shards on a shared
# filesystem; the same checkout and environment at the same path on every node):
#
#   pdsh (default; passwordless ssh from the first node to all):
#     deepspeed --hostfile hostfile launch/pretrain.sh --config C.toml ...
#   Open MPI (mpirun of the MPI that mpi4py loads):
#     deepspeed --hostfile hostfile --launcher openmpi \
#         --launcher_args "--mca btl_tcp_if_include IFACE" launch/pretrain.sh --config C.toml ...
#     (DeepSpeed adds btl_tcp_if_include eth0 unless the launcher args name an interface)
#   MPICH / Intel MPI / MVAPICH:
#     deepspeed --hostfile hostfile --launcher mpich|impi|mvapich launch/pretrain.sh --config ...
#   Slurm (inside an allocation; srun starts the ranks):
#     deepspeed --hostfile hostfile --launcher slurm --master_addr "$(scontrol show hostnames \
#         "$SLURM_JOB_NODELIST" | head -n 1)" launch/pretrain.sh --config ...
#     (or, simpler and with preemption handled: sbatch launch/slurm/pretrain.sbatch ...)
#   No ssh at all: start the same command on every node yourself, adding
#     --no_ssh --node_rank N --master_addr FIRST_HOST --master_port 29500   (N = 0, 1, ...)
#
# The same training without DeepSpeed's launcher:
#   torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
#       -m pretrain train --config ...          (elastic: launch/elastic.sh)
#   mpirun -n 16 -ppn 8 python -m pretrain train --config ...   (RANK etc. from mpi4py;
#       MASTER_ADDR/MASTER_PORT from the environment if set, else rank 0's first address)
#
# Signals (preemption): every rank handles SIGTERM and SIGUSR1 by finishing its step, saving
# a checkpoint and exiting 0; send them to the rank processes. DeepSpeed's per-node launcher
# (launch.py) forwards SIGTERM/SIGINT to its ranks (SIGKILL after 30 s) but dies on SIGUSR1;
# when any rank exits non-zero it stops the node's other ranks at once, and ranks on other
# nodes fail their next collective (gloo at once; NCCL after distributed.timeout_minutes).
#
# Environment defaults (set only when unset; override by exporting them):
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1  a failed/timed-out NCCL collective aborts the process
#   NCCL_ASYNC_ERROR_HANDLING=1        the same for torch < 2.2
#   NCCL_DEBUG=WARN                    NCCL warnings only (INFO to debug a network)
#   No interface is forced: set NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME if the default
#   route is not the fabric. The collective timeout is a config key:
#   distributed.timeout_minutes (default 10).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED="${PYTHONUNBUFFERED:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
PYTHON="${PYTHON:-python}"
exec "$PYTHON" -m pretrain train "$@"
'''
# Python part. For bash it is the inside of one single-quoted word after `exec` (never run),
# so `bash -n` checks the whole file: no single quote below but the closing one.
import os
import sys

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# sys.path[0] is launch/ when run as a script; the project root is where `pretrain` lives.
sys.path[0:1] = [here]
# The NCCL defaults above are applied by pretrain.engine.init_distributed (every launcher).

args = []
for arg in sys.argv[1:]:  # --local_rank=N from the DeepSpeed launcher (also in LOCAL_RANK)
    if arg.startswith("--local_rank="):
        os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
    else:
        args.append(arg)

from pretrain.cli import main  # noqa: E402

sys.exit(main(["train", *args]))  # end of the bash word: '
