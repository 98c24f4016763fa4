"""DeepSpeed behind one small interface: the only module of the project that imports it.

- ``init_distributed()``: one process group for every way of starting ranks: the
  DeepSpeed launcher, torchrun (RANK/WORLD_SIZE/... in the environment), ``mpirun``
  (DeepSpeed's mpi4py discovery), ``srun`` (SLURM variables), or a plain single process.
- ``build_ds_config(cfg, world_size, dtype)`` (in ``pretrain.ds_config``, which needs no
  DeepSpeed import): the DeepSpeed config dict, generated from the typed run config.
- ``Engine``: micro-step forward/backward, optimizer step (skippable), save/load,
  global reductions. No monkey-patching of the engine: DeepSpeed is driven through its
  public API and the optimizer instances we hand it.

CPU notes (facts.md): the shared-memory comm op would JIT-compile (~50 s) on first use
and is only used for inference all-reduce, so it is not built on CPU; optimizers are
passed as torch instances, because a config ``{"type": "AdamW"}`` JIT-compiles a fused op.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from pretrain.config import ConfigError, RunConfig
from pretrain.ds_config import build_ds_config, optimizer_impl, resolve_dtype, torch_dtype
from pretrain.optim import SkippableStep, build_torch_optimizer, param_groups

__all__ = [
    "DistInfo",
    "Engine",
    "build_ds_config",
    "init_distributed",
    "resolve_dtype",
    "shutdown",
    "torch_dtype",
]

_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_LOCAL_SIZE_ENV = (
    "LOCAL_WORLD_SIZE",
    "LOCAL_SIZE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_NTASKS_PER_NODE",
)


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device


def _launched() -> bool:
    """True when a launcher started this process as one of several ranks.

    Sets RANK/WORLD_SIZE/LOCAL_RANK from SLURM's variables under ``srun``; under
    ``mpirun`` DeepSpeed's mpi4py discovery sets them later. False: a single process.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        env.setdefault("LOCAL_RANK", "0")
        return True
    if any(k in env for k in _MPI_ENV):
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        if "MASTER_ADDR" not in env:
            raise ConfigError("srun: set MASTER_ADDR (e.g. the first host of $SLURM_JOB_NODELIST)")
        env.update(
            RANK=env["SLURM_PROCID"],
            WORLD_SIZE=env["SLURM_NTASKS"],
            LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
        )
        env.setdefault("MASTER_PORT", "29500")
        return True
    return False


def init_distributed(timeout_minutes: float = 30.0) -> DistInfo:
    """Initialise (once per process) the process group and this rank's device."""
    import torch.distributed as dist

    single = not dist.is_initialized() and not _launched()
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
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = next((int(os.environ[k]) for k in _LOCAL_SIZE_ENV if k in os.environ), world)
    if on_cpu:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores between local ranks
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    else:
        acc.set_device(local_rank)
        device = torch.device(acc.device_name(local_rank))
    return DistInfo(rank, world, local_rank, local_world, device)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Barrier + destroy a multi-rank process group (avoids a rare abort at interpreter exit).

    A single process keeps its (in-memory) group, so it can train again in-process.
    """
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


def build_optimizer(cfg: RunConfig, model: torch.nn.Module, device_type: str):
    """Optimizer instance for ``deepspeed.initialize``: torch on CPU, fused kernels on GPU."""
    o = cfg.optimizer
    groups = param_groups(model, o.weight_decay)
    if optimizer_impl(cfg, device_type) == "torch":
        return build_torch_optimizer(o.name, groups, o.lr, o.betas, o.eps)
    if cfg.zero.offload_optimizer != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam as base  # the optimizer step runs on CPU

        kwargs = dict(adamw_mode=True)
    elif o.name == "adamw":
        from deepspeed.ops.adam import FusedAdam as base

        kwargs = dict(adam_w_mode=True)
    else:
        from deepspeed.ops.lamb import FusedLamb as base

        kwargs = {}
    cls = type(f"Skippable{base.__name__}", (SkippableStep, base), {})
    return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **kwargs)


class Engine:
    """A model wrapped by DeepSpeed, with the few operations the trainer needs."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: RunConfig,
        dist_info: DistInfo,
        lr_lambda,
        load_universal: bool = False,
    ):
        import deepspeed

        self.dist = dist_info
        self.device = dist_info.device
        self.dtype = resolve_dtype(cfg.precision.dtype, self.device)
        self.grad_accum = cfg.batch.grad_accum(dist_info.world_size)
        self.config = build_ds_config(cfg, dist_info.world_size, self.dtype, load_universal)
        self.base_optimizer = build_optimizer(cfg, model, self.device.type)
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.base_optimizer, lr_lambda)
        self.ds, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=self.base_optimizer,
            lr_scheduler=scheduler,
            config=self.config,
            dist_init_required=False,
        )
        self.zero_stage = cfg.zero.stage
        self.peak_lr = cfg.optimizer.lr

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def lr(self) -> float:
        """LR the next optimizer step will use (first parameter group)."""
        return float(self.base_optimizer.param_groups[0]["lr"])

    def forward(self, batch: dict[str, torch.Tensor], segments: bool) -> dict[str, torch.Tensor]:
        """Model outputs (sums and counts) for one micro-batch."""
        dev = self.device
        seg = batch["segment_ids"].to(dev, non_blocking=True) if segments else None
        return self.ds(
            input_ids=batch["input_ids"].to(dev, non_blocking=True),
            attention_mask=batch["attention_mask"].to(dev, non_blocking=True),
            labels=batch["labels"].to(dev, non_blocking=True),
            segment_ids=seg,
        )

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch; DeepSpeed divides the loss by A (``scale_wrt_gas``).

        Inside the accumulation window ``ds.step()`` only advances DeepSpeed's micro-step
        counter (which decides where gradients are reduced); the last micro-batch's step
        is ``step()``, called by the trainer once it knows whether to skip.
        """
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.backward(loss)
        if not boundary:
            self.ds.step()

    def step(self, skip: bool = False) -> tuple[bool, float | None]:
        """The optimizer step at the end of an accumulation window.

        ``skip`` (agreed on every rank) leaves parameters and optimizer state unchanged.
        Returns (applied, global gradient norm before clipping, None if unknown). A step
        is also not applied when DeepSpeed itself finds non-finite gradients (ZeRO, bf16
        and fp16 wrappers check the global norm; fp16 also on loss-scale overflow).
        """
        if not self.ds.is_gradient_accumulation_boundary():
            raise RuntimeError("Engine.step() before the accumulation window's last backward")
        skipped_before = self.ds.skipped_steps
        norm = None
        if self.ds.optimizer is self.base_optimizer and not skip:
            # Plain optimizer path (ZeRO 0, fp32): DeepSpeed neither keeps a norm nor checks
            # one. The gradients are already all-reduced at the accumulation boundary, so
            # every rank computes the same norm and takes the same decision.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            skip = not math.isfinite(norm)
        self.base_optimizer.skip_step = skip
        try:
            self.ds.step()
        finally:
            self.base_optimizer.skip_step = False
        applied = self.ds.skipped_steps == skipped_before
        if not applied:
            norm = None
        elif norm is None:
            norm = self.ds.get_global_grad_norm()
            norm = None if norm is None else float(norm)
        return applied, norm

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    # -- collectives -------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum or max of ``tensor`` over all ranks (a new tensor on the original device)."""
        import torch.distributed as dist

        t = tensor.detach().to(self.device).clone()
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.to(tensor.device)

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.barrier()

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        import torch.distributed as dist

        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, save_dir: str | os.PathLike, tag: str, client_state: dict) -> None:
        """Every rank writes its part of ``save_dir/tag`` (no ``latest`` file: we write our own)."""
        self.ds.save_checkpoint(
            str(save_dir), tag=tag, client_state=client_state, save_latest=False
        )

    def load(self, load_dir: str | os.PathLike, tag: str) -> dict:
        """Restore model, optimizer, scheduler (and ZeRO partitions); returns the client state."""
        path, client = self.ds.load_checkpoint(
            str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"{Path(load_dir) / tag}: DeepSpeed could not load it")
        # The configured schedule and peak LR win over the checkpoint's (e.g. a run extended
        # with a larger schedule.total_steps); unchanged, this reproduces the same values.
        sched = self.scheduler
        sched.base_lrs = [self.peak_lr] * len(sched.base_lrs)
        for group, fn in zip(self.base_optimizer.param_groups, sched.lr_lambdas, strict=True):
            group["lr"] = self.peak_lr * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.base_optimizer.param_groups]
        return client or {}


def consolidated_state_dict(ckpt_root: str | os.PathLike, tag: str) -> dict[str, torch.Tensor]:
    """fp32 model weights of a checkpoint, whatever its ZeRO stage (for export and inference)."""
    tag_dir = Path(ckpt_root) / tag
    if (
        any(tag_dir.glob("*optim_states.pt"))
        and not (tag_dir / "mp_rank_00_optim_states.pt").exists()
    ):
        import contextlib
        import io

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()):  # its progress chatter
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag)
    states = torch.load(
        tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )  # DeepSpeed's own file, written by this run
    return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}


def convert_to_universal(tag_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """DeepSpeed's universal checkpoint of ``tag_dir`` (loads at any data-parallel size)."""
    import shutil
    import subprocess

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # renamed when complete
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(tag_dir),
        "--output_folder",
        str(tmp),
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{tag_dir}: conversion to a universal checkpoint failed: {tail[0]}")
    shutil.rmtree(out, ignore_errors=True)  # an earlier, interrupted conversion
    os.replace(tmp, out)
