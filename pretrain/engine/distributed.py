"""Process groups and the agreements between ranks.

- ``init_distributed()``: one process group for every way of starting ranks: the DeepSpeed
  launcher, torchrun (RANK/WORLD_SIZE/... in the environment), ``mpirun`` (mpi4py),
  ``srun`` (SLURM variables) — see ``launch_env`` — or a plain single process; with
  deliberate timeouts.
- ``on_rank0(fn)``: work only rank 0 does while the others wait, its errors raised on
  every rank.
- ``agree(fn)`` / ``agreed_error``: a failure on any rank becomes the same one-line
  ``AgreedError`` on every rank, so it is printed once and no rank waits in a collective.

DeepSpeed is imported inside ``init_distributed`` (a heavy import, only for training).
CPU notes (facts.md): the shared-memory comm op would JIT-compile (~50 s) on first use and
is only used for inference all-reduce, so it is not built on CPU.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from data_pipeline.common import CommandError
from pretrain.engine import launch_env

_RANK0_GROUP = None  # a process group with a long timeout, for waits on rank-0-only work


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device


def init_distributed(
    timeout_minutes: float = 10.0, rank0_timeout_minutes: float = 120.0
) -> DistInfo:
    """Initialise (once per process) the process group and this rank's device.

    ``timeout_minutes`` bounds every collective: a rank whose peers stopped answering raises
    instead of hanging for torch's default of 30 minutes (10 on NCCL). Waits on work only
    rank 0 does (``on_rank0``) use a second group with ``rank0_timeout_minutes``.
    """
    global _RANK0_GROUP
    launch_env.apply_env_defaults()
    single = not dist.is_initialized() and not launch_env.launched()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if os.environ.get("PRETRAIN_DS_VERBOSE") != "1":
        deepspeed.utils.logger.setLevel(logging.WARNING)
    acc = get_accelerator()
    on_cpu = acc.device_name() == "cpu"
    if on_cpu and os.environ.get("PRETRAIN_BUILD_SHM_OP") != "1":
        # sys.modules: the attribute ``deepspeed.comm.torch`` is shadowed by torch itself.
        import deepspeed.comm.torch  # noqa: F401

        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    backend, timeout = acc.communication_backend_name(), timedelta(minutes=timeout_minutes)
    if single:
        # An in-memory store: no port, no MPI probing, and no RANK/MASTER_* variables
        # left in the environment for subprocesses to inherit.
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine requires it
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    if not dist.is_initialized() or not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout, verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world > 1 and _RANK0_GROUP is None:
        _RANK0_GROUP = dist.new_group(timeout=timedelta(minutes=rank0_timeout_minutes))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = launch_env.local_world_size(default=world)
    if on_cpu:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores between local ranks
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    else:
        acc.set_device(local_rank)
        device = torch.device(acc.device_name(local_rank))
    return DistInfo(rank, world, local_rank, local_world, device)


def on_rank0(fn, what: str):
    """Run ``fn()`` on rank 0 while every other rank waits (up to the rank-0 timeout).

    Returns ``fn()``'s result on every rank (it must be picklable). An exception on rank 0
    becomes a one-line ``CommandError`` on every rank, so no rank is left waiting.
    """
    multi = dist.is_initialized() and dist.get_world_size() > 1
    box: list = [None, None]  # [result, error]
    if not multi or dist.get_rank() == 0:
        try:
            box[0] = fn()
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            if not multi:
                raise
            box[1] = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if multi:
        dist.broadcast_object_list(box, src=0, group=_RANK0_GROUP)
    if box[1] is not None:
        raise CommandError(f"{what} failed on rank 0: {box[1]}")
    return box[0]


class AgreedError(CommandError):
    """A failure every rank raises together, after a collective that told them all: printed
    once (by rank 0), and no rank is left waiting in a later collective."""


def _multi() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def _gather_messages(message: str | None) -> list[str | None]:
    if not _multi():
        return [message]
    got = [None] * dist.get_world_size()
    dist.all_gather_object(got, message)  # handles the device of any backend (NCCL: CUDA)
    return got


def _error_from(got: list[str | None]) -> AgreedError:
    """One error for every rank: the lowest failing rank's message, said to be that rank's
    unless every rank failed the same way."""
    failed = [(r, m) for r, m in enumerate(got) if m is not None]
    if not failed:  # cannot happen when the caller's flag was right; be explicit anyway
        return AgreedError("another rank failed without a message")
    rank, text = failed[0]
    if len(got) > 1 and (len(failed) < len(got) or len({m for _, m in failed}) > 1):
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        text = f"rank {rank}{others}: {text}"
    return AgreedError(text)


def agreed_error(message: str | None) -> AgreedError:
    """Called by every rank once a collective told them that some rank failed (``message``:
    this rank's one-line reason, or None): the error to raise, the same on every rank."""
    return _error_from(_gather_messages(message))


def agree(fn):
    """``fn()`` on every rank (it must contain no collective); a ``CommandError`` on any rank
    becomes the same ``AgreedError`` on every rank (one all-gather). Returns ``fn()``."""
    try:
        result, message = fn(), None
    except CommandError as e:
        if not _multi():
            raise
        result, message = None, str(e)
    got = _gather_messages(message)
    if any(m is not None for m in got):
        raise _error_from(got)
    return result


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Barrier + destroy a multi-rank process group (avoids a rare abort at interpreter exit).

    A single process keeps its (in-memory) group, so it can train again in-process.
    """
    global _RANK0_GROUP
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()  # every group, the rank-0 one included
        _RANK0_GROUP = None
