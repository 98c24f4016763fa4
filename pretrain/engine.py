"""DeepSpeed behind one small interface: the only module of the project that imports it.

- ``init_distributed()``: one process group for every way of starting ranks: the
  DeepSpeed launcher, torchrun (RANK/WORLD_SIZE/... in the environment), ``mpirun``
  (mpi4py), ``srun`` (SLURM variables) — see ``pretrain.launch_env`` — or a plain single
  process; with deliberate timeouts. ``on_rank0(fn)``: work only rank 0 does while the
  others wait, with its errors raised on every rank.
- ``build_ds_config(cfg, world_size, dtype)`` (in ``pretrain.ds_config``, which needs no
  DeepSpeed import): the DeepSpeed config dict, generated from the typed run config.
- ``Engine``: micro-step forward/backward, optimizer step (skippable), save/load,
  global reductions. No monkey-patching of the engine: DeepSpeed is driven through its
  public API and the optimizer instances we hand it.
- Reading checkpoints never runs code from them: ``consolidated_state_dict`` (fp32 weights
  of any ZeRO stage, for export and inference) reads every file weights-only, and
  ``check_checkpoint_files`` refuses a file DeepSpeed's own loaders (resume, universal
  conversion) would fully unpickle.

CPU notes (facts.md): the shared-memory comm op would JIT-compile (~50 s) on first use
and is only used for inference all-reduce, so it is not built on CPU; optimizers are
passed as torch instances, because a config ``{"type": "AdamW"}`` JIT-compiles a fused op.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from data_pipeline.cli import CommandError
from pretrain import launch_env
from pretrain.config import RunConfig
from pretrain.ds_config import build_ds_config, optimizer_impl, resolve_dtype, torch_dtype
from pretrain.models.common import load_torch_file
from pretrain.optim import SkippableStep, build_torch_optimizer, param_groups
from pretrain.universal import UNIVERSAL

__all__ = [
    "AgreedError",
    "DistInfo",
    "Engine",
    "build_ds_config",
    "agree",
    "agreed_error",
    "init_distributed",
    "on_rank0",
    "resolve_dtype",
    "shutdown",
    "torch_dtype",
]

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
    import torch.distributed as dist

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
    import torch.distributed as dist

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


class UnreadableCheckpointError(CommandError, ValueError):
    """A checkpoint file that a weights-only read refuses (or cannot parse)."""


def _multi() -> bool:
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def _gather_messages(message: str | None) -> list[str | None]:
    import torch.distributed as dist

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
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Barrier + destroy a multi-rank process group (avoids a rare abort at interpreter exit).

    A single process keeps its (in-memory) group, so it can train again in-process.
    """
    import torch.distributed as dist

    global _RANK0_GROUP
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()  # every group, the rank-0 one included
        _RANK0_GROUP = None


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
        # Per-group hyperparameters as configured (weight decay 0 for biases and norms).
        self._group_hparams = [
            {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
            for g in self.base_optimizer.param_groups
        ]

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

    def close(self) -> None:
        """Undo DeepSpeed's process-wide side effects once this engine is done.

        ZeRO-3 replaces ``torch.nn.functional.linear`` with its memory-efficient version for
        the whole process ("this will persist unless manually reset"), which changes the
        rounding of every later model in the process (a test, a notebook, a second run).
        """
        if self.zero_stage != 3:
            return
        from deepspeed.runtime.zero.partition_parameters import (
            InsertPostInitMethodToModuleSubClasses as Init,
        )

        original = getattr(Init, "linear_bk", None)
        if original is not None:
            torch.nn.functional.linear = original

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

        # DeepSpeed's loader unpickles everything: the files must pass a weights-only read
        # (agreed: a file only one rank reads would otherwise stop that rank alone).
        def check() -> None:
            try:
                check_checkpoint_files(Path(load_dir) / tag, recursive=tag == UNIVERSAL)
            except ValueError as e:
                raise UnreadableCheckpointError(str(e)) from e

        agree(check)
        path, client = self.ds.load_checkpoint(
            str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"{Path(load_dir) / tag}: DeepSpeed could not load it")
        # DeepSpeed's ZeRO-3 universal load (0.19) hands every parameter group the *same*
        # `step` tensor, which torch's AdamW then increments in place once per group: give
        # each state its own. It also copies the first group's hyperparameters into every
        # group (weight decay on biases and norms): the configured ones win.
        for state in self.base_optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
        groups = self.base_optimizer.param_groups
        for group, hparams in zip(groups, self._group_hparams, strict=True):
            group.update(hparams)
        # The configured schedule and peak LR win over the checkpoint's (e.g. a run extended
        # with a larger schedule.total_steps); unchanged, this reproduces the same values.
        sched = self.scheduler
        sched.base_lrs = [self.peak_lr] * len(sched.base_lrs)
        for group, fn in zip(self.base_optimizer.param_groups, sched.lr_lambdas, strict=True):
            group["lr"] = self.peak_lr * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.base_optimizer.param_groups]
        return client or {}


# ----------------------------------------------------------------------------- reading checkpoints
# Every checkpoint file is read with ``torch.load(weights_only=True)``: a run directory can
# come from anywhere, and a full unpickle would run any code a file asks for. Besides tensors
# and containers, DeepSpeed 0.19 pickles these classes into the files we write (found by
# loading ZeRO 0-3 checkpoints in fp32 and bf16): the optimizer wrappers' loss scaler and
# ZeRO stage, and the fp32 fragment addresses of ZeRO 1/2 and the BF16 optimizer. fp16 runs
# (GPU only) write a DynamicLossScaler instead of a LossScaler. All are plain data holders.
_OPTIM_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")
_MODEL_FILE = "mp_rank_00_model_states.pt"  # ZeRO 0-2: the whole module
_ZERO3_MODEL_FILE = "zero_pp_rank_0_mp_rank_00_model_states.pt"  # ZeRO 3: metadata, no weights


def _checkpoint_globals() -> tuple:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


def load_checkpoint_file(path: str | os.PathLike, mmap: bool = False):
    """One DeepSpeed checkpoint file, read weights-only (``UnsafeFileError`` if it holds
    anything but tensors, containers and DeepSpeed's metadata classes above)."""
    return load_torch_file(path, _checkpoint_globals(), mmap=mmap)


def check_checkpoint_files(directory: str | os.PathLike, recursive: bool = False) -> None:
    """Refuse (``UnsafeFileError``) a checkpoint with a file that a weights-only load rejects,
    before DeepSpeed's own loader, which unpickles everything, reads it. Memory-mapped: only
    the pickles are parsed, no tensor data is read."""
    d = Path(directory)
    for path in sorted(d.rglob("*.pt") if recursive else d.glob("*.pt")):
        load_checkpoint_file(path, mmap=True)


def consolidated_state_dict(tag_dir: str | os.PathLike, model: torch.nn.Module) -> dict:
    """fp32 weights of the checkpoint in ``tag_dir`` (one written by ``Engine.save`` for a
    model of ``model``'s class and config), whatever its ZeRO stage, precision and world size.

    Reimplements what DeepSpeed's ``zero_to_fp32`` does for the layouts we save, with
    weights-only loads (``zero_to_fp32`` unpickles everything). The fp32 master weights are
    read where DeepSpeed keeps them: ZeRO 0 in fp32: the module itself; ZeRO 0 in bf16/fp16:
    the optimizer wrapper's fp32 copies (per parameter, or one flat tensor per group) in the
    model-states file, in ``pretrain.optim.param_groups`` order; ZeRO 1/2: each rank's
    partition of the flat fp32 groups (``*zero_pp_rank_R_*optim_states.pt``), concatenated
    in rank order; ZeRO 3: each rank's slice of every parameter. ``model`` only supplies the
    parameter order of ZeRO 0's optimizer groups and the tied-parameter names.
    """
    tag_dir = Path(tag_dir)
    optim = {}
    for path in tag_dir.glob("*_optim_states.pt"):
        m = _OPTIM_FILE.fullmatch(path.name)
        if m is not None:
            if m.group(2) != "00":
                raise ValueError(f"{path}: model-parallel checkpoints are not supported")
            optim[int(m.group(1))] = path
    if sorted(optim) != list(range(len(optim))):
        raise ValueError(f"{tag_dir}: optimizer partitions of ranks {sorted(optim)} only")
    model_file = tag_dir / _MODEL_FILE
    if not model_file.is_file() and (tag_dir / _ZERO3_MODEL_FILE).is_file():
        model_file = tag_dir / _ZERO3_MODEL_FILE
    if not model_file.is_file():
        raise ValueError(f"{tag_dir}: no {_MODEL_FILE}; not a DeepSpeed checkpoint")
    states = load_checkpoint_file(model_file)
    module = states["module"]
    buffers = set(states.get("buffer_names") or [])
    out = {k: _fp32(v) for k, v in module.items() if k in buffers}
    if optim:
        shards = [
            load_checkpoint_file(optim[r], mmap=True)["optimizer_state_dict"]
            for r in range(len(optim))
        ]
        counts = shards[0].get("partition_count", len(shards))
        if max(counts if isinstance(counts, list) else [counts]) != len(shards):
            raise ValueError(
                f"{tag_dir}: written by {counts} ranks, but {len(shards)} optimizer "
                "partitions are there (an incomplete or overwritten checkpoint)"
            )
        if int(shards[0]["zero_stage"]) == 3:
            out.update(_zero3_weights(shards, states["param_shapes"], tag_dir))
        else:
            out.update(_zero12_weights(shards, states["param_shapes"], tag_dir))
    else:
        out.update(_zero0_weights(module, states.get("optimizer") or {}, model, tag_dir))
    # Tied parameters (ELECTRA's shared embeddings) are stored once.
    shared = dict(states.get("shared_params") or {})
    shared.update(_aliases(model))
    for name, source in shared.items():
        if source in out:
            out[name] = out[source]
    return out


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """{second name of a tied parameter: its first name}."""
    first, out = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _zero0_weights(module: dict, wrapper: dict, model, where) -> dict:
    """ZeRO 0: the module's weights, replaced by the optimizer wrapper's fp32 masters when
    the module is bf16/fp16 (FP16_UnfusedOptimizer: ``fp32_groups``, one tensor per
    parameter; FP16_Optimizer (fused Adam): ``fp32_groups_flat``, one flat tensor per group)."""
    out = {k: _fp32(v) for k, v in module.items()}
    per_param, flat = wrapper.get("fp32_groups"), wrapper.get("fp32_groups_flat")
    if per_param is None and flat is None:
        return out  # fp32 training: the module holds the master weights
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in param_groups(model, 0.0)]
    groups = [g for g in groups if g]  # DeepSpeed drops empty groups
    mismatch = ValueError(f"{where}: the optimizer's fp32 weights do not match this model")
    if flat is not None:
        sizes = [[module[n].numel() for n in g] for g in groups]
        if [f.numel() for f in flat] != [sum(z) for z in sizes]:
            raise mismatch
        per_param = [torch.split(f, z) for f, z in zip(flat, sizes, strict=True)]
    if [len(t) for t in per_param] != [len(g) for g in groups]:
        raise mismatch
    for group, tensors in zip(groups, per_param, strict=True):
        for name, t in zip(group, tensors, strict=True):
            if t.numel() != module[name].numel():
                raise ValueError(f"{where}: fp32 weight of {name} has {t.numel()} elements")
            out[name] = t.float().view(module[name].shape)
    return out


def _zero12_weights(shards: list[dict], shapes: list[dict], where) -> dict:
    """ZeRO 1/2 (and the BF16 optimizer): per group, the ranks' fp32 partitions in rank
    order form the flat group; parameters follow each other in ``param_shapes`` order, each
    followed by its alignment padding."""
    paddings = shards[0].get("param_alignment_paddings")
    out = {}
    for g, group in enumerate(shapes):
        flat = torch.cat([s["single_partition_of_fp32_groups"][g] for s in shards])
        pads = paddings[g] if paddings is not None else [0] * len(group)
        offset = 0
        for (name, shape), pad in zip(group.items(), pads, strict=True):
            n = math.prod(shape)
            if offset + n > flat.numel():
                raise ValueError(f"{where}: fp32 partitions too small for {name}")
            out[name] = flat.narrow(0, offset, n).view(shape).float()
            offset += n + pad
    return out


def _zero3_weights(shards: list[dict], shapes: list[dict], where) -> dict:
    """ZeRO 3: every parameter is split into world-size slices of ceil(numel / world)
    (the last one padded); rank R's slices follow each other, over its flat groups, in
    ``param_shapes`` order."""
    world = len(shards)
    streams = [torch.cat(list(s["fp32_flat_groups"])) for s in shards]
    out, offset = {}, 0
    for name, shape in ((k, v) for group in shapes for k, v in group.items()):
        n = math.prod(shape)
        part = -(-n // world)
        out[name] = torch.cat([s.narrow(0, offset, part) for s in streams])[:n].view(shape)
        out[name] = out[name].float()
        offset += part
    if offset != streams[0].numel():
        raise ValueError(
            f"{where}: fp32 partitions hold {streams[0].numel()} elements per rank, "
            f"the parameters {offset}; not this layout"
        )
    return out


def ds_to_universal(tag_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """DeepSpeed's ``ds_to_universal`` of ``tag_dir`` into ``out_dir``, in this process.

    In-process (DeepSpeed is imported already: ~0.2 s instead of ~2 s for a new interpreter)
    and sequential: no worker processes are forked from a process with live communication
    threads. Atomicity and caching are ``pretrain.universal``'s.
    """
    import contextlib
    import io

    from deepspeed.checkpoint import ds_to_universal as conv

    check_checkpoint_files(tag_dir)  # DeepSpeed's conversion unpickles everything it reads
    argv = sys.argv
    sys.argv = ["ds_to_universal", "--input_folder", str(tag_dir), "--output_folder", str(out_dir)]
    sys.argv += ["--num_extract_workers", "1", "--num_merge_workers", "1"]
    try:
        args = conv.parse_arguments()
    finally:
        sys.argv = argv
    sink = io.StringIO()  # its progress bars and chatter
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        conv.main(args)
