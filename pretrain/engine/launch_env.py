"""Which launcher started this process, and the torch.distributed environment it implies.

No DeepSpeed import: ``pretrain.engine.init_distributed`` calls ``launched()`` first. Every
launcher ends up as the same five variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) read by ``env://`` initialisation:

- DeepSpeed's launcher and torchrun set them (and LOCAL_WORLD_SIZE / LOCAL_SIZE) themselves;
- ``mpirun`` (MPICH, Open MPI, Intel MPI, MVAPICH): derived here through mpi4py. Unlike
  DeepSpeed's own discovery, a MASTER_ADDR/MASTER_PORT already in the environment wins (the
  first ``hostname -I`` address is not always the interface the ranks can reach);
- ``srun`` (one task per GPU): SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID, with
  MASTER_ADDR defaulting to the step's first host (``scontrol show hostnames``) and
  MASTER_PORT derived from the job id (two jobs sharing a node do not collide).

``NCCL_DEFAULTS`` are set (if unset) before the process group exists: a failed or timed-out
NCCL collective aborts the process instead of hanging, and NCCL reports warnings only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

from pretrain.config import ConfigError

NCCL_DEFAULTS = {
    # Tear the process down when a collective fails or times out (instead of hanging):
    # the launcher then stops the other ranks. The second name is the one torch < 2.2 reads.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "NCCL_ASYNC_ERROR_HANDLING": "1",
    "NCCL_DEBUG": "WARN",
}
MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
LOCAL_SIZE_ENV = (
    "LOCAL_WORLD_SIZE",
    "LOCAL_SIZE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
)
DEFAULT_PORT = 29500


def apply_env_defaults(env=os.environ) -> None:
    """NCCL error handling and log level, unless the user set them."""
    for key, value in NCCL_DEFAULTS.items():
        env.setdefault(key, value)


def launched(env=os.environ) -> bool:
    """True (and the env:// variables set) when a launcher started this process as one of
    several ranks; False for a plain single process."""
    if "RANK" in env and "WORLD_SIZE" in env:  # DeepSpeed launcher, torchrun, mpich helper
        env.setdefault("LOCAL_RANK", "0")
        return True
    if any(k in env for k in MPI_ENV):
        _mpi_discovery(env)
        return True
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        _slurm_env(env)
        return True
    return False


def local_world_size(env=os.environ, default: int = 1) -> int:
    """Ranks on this host (for sharing CPU threads between them)."""
    for key in LOCAL_SIZE_ENV:
        if env.get(key, "").isdigit():
            return int(env[key])
    return default


def _first_address() -> str:
    """This host's first address, as DeepSpeed's MPI discovery picks it."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return socket.gethostbyname(socket.gethostname())


def _mpi_discovery(env) -> None:
    """RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_* of an ``mpirun`` rank (mpi4py)."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # e.g. mpi4py without an MPI library
        raise ConfigError(f"started by mpirun, but mpi4py cannot be used: {e}") from e
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(MPI.Get_processor_name())
    addr = comm.bcast(_first_address() if rank == 0 else None, root=0)  # every rank calls it
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(hosts[:rank].count(hosts[rank])),
        LOCAL_WORLD_SIZE=str(hosts.count(hosts[rank])),
    )
    env.setdefault("MASTER_ADDR", addr)
    env.setdefault("MASTER_PORT", str(DEFAULT_PORT))


def _expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM's "8(x2),4" -> [8, 8, 4]."""
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _slurm_env(env) -> None:
    """env:// variables of an ``srun`` task (one task per GPU)."""
    env.update(
        RANK=env["SLURM_PROCID"],
        WORLD_SIZE=env["SLURM_STEP_NUM_TASKS"],
        LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
    )
    per_node = _expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", ""))
    node = int(env.get("SLURM_NODEID", "0"))
    if node < len(per_node):
        env.setdefault("LOCAL_WORLD_SIZE", str(per_node[node]))
    if "MASTER_ADDR" not in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        scontrol = shutil.which("scontrol")
        first = ""
        if nodelist and scontrol:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True
            )
            first = (out.stdout.split() or [""])[0] if out.returncode == 0 else ""
        if not first:
            raise ConfigError(
                "srun: set MASTER_ADDR (e.g. the first host of "
                "`scontrol show hostnames $SLURM_JOB_NODELIST`)"
            )
        env["MASTER_ADDR"] = first
    job = env.get("SLURM_JOB_ID", "")
    env.setdefault("MASTER_PORT", str(20000 + int(job) % 20000) if job.isdigit() else "29500")
