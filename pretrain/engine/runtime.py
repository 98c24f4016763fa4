"""``Engine``: a model wrapped by DeepSpeed, with the few operations the trainer needs
(micro-step forward/backward, a skippable optimizer step, save/load, global reductions).

No monkey-patching of the engine: DeepSpeed is driven through its public API and the
optimizer instances we hand it (torch's on CPU, because a config ``{"type": "AdamW"}``
JIT-compiles a fused op; DeepSpeed's fused kernels on GPU). DeepSpeed is imported inside
the functions that build or use the engine (a heavy import, only for training).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.distributed as dist

from data_pipeline.common import CommandError
from pretrain.config import RunConfig
from pretrain.engine.distributed import DistInfo, agree
from pretrain.engine.ds_config import build_ds_config, optimizer_impl, resolve_dtype
from pretrain.engine.universal import UNIVERSAL
from pretrain.engine.zero_files import check_checkpoint_files
from pretrain.optim import SkippableStep, build_torch_optimizer, param_groups


class UnreadableCheckpointError(CommandError, ValueError):
    """A checkpoint file that a weights-only read refuses (or cannot parse)."""


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
        # Sentence-pair rows (data.packing = "pairs") also carry token types and a label each;
        # masking.boundaries adds the span boundaries of SpanBERT's SBO.
        pairs = {
            k: batch[k].to(dev, non_blocking=True)
            for k in ("token_type_ids", "sentence_labels", "span_left", "span_right")
            if k in batch
        }
        return self.ds(
            input_ids=batch["input_ids"].to(dev, non_blocking=True),
            attention_mask=batch["attention_mask"].to(dev, non_blocking=True),
            labels=batch["labels"].to(dev, non_blocking=True),
            segment_ids=seg,
            **pairs,
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

    def diagnostics(self) -> dict[str, float]:
        """The model's ``diagnostics()`` (e.g. DeBERTa-v3's embedding cosine), computed on
        whole parameters: gathered first under ZeRO-3, whose ranks hold slices."""
        fn = getattr(self.module, "diagnostics", None)
        if fn is None:
            return {}
        if self.zero_stage != 3:
            return fn()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters())):
            return fn()

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
        t = tensor.detach().to(self.device).clone()
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.to(tensor.device)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
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
