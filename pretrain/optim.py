"""Optimizers and learning-rate schedules (plain PyTorch; DeepSpeed's fused kernels live in
``pretrain.engine``, the only module that imports DeepSpeed).

- ``param_groups``: weight decay on matrices only; biases and LayerNorm weights (every
  parameter with fewer than two dimensions) get none, as in BERT/RoBERTa/ELECTRA.
- ``AdamW`` / ``Lamb``: CPU optimizers handed to ``deepspeed.initialize`` as instances (a
  config ``{"type": "AdamW"}`` would JIT-compile DeepSpeed's fused op on CPU, ~1 minute).
  Both can skip a step (``SkippableStep``), which is how a non-finite loss leaves
  parameters and optimizer state untouched when no DeepSpeed wrapper does it for us.
- ``lr_multiplier``: the schedule as a plain function for ``torch.optim.lr_scheduler.LambdaLR``
  (DeepSpeed saves and restores the scheduler with every checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and undecayed vectors (biases, LayerNorm weights).

    The second group also turns off LAMB's layer adaptation, as Google's reference LAMB
    does for parameters excluded from weight decay (``exclude_from_layer_adaptation``).
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # tied parameters are listed once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


class SkippableStep:
    """Optimizer mixin: while ``skip_step`` is set, ``step()`` changes nothing.

    The trainer sets it on every rank from an all-reduced non-finite flag. ``overflow`` is
    the attribute DeepSpeed's engine reads after ``optimizer.step()`` to count a skipped
    step and hold the LR schedule back, exactly as it does for its own overflow skips
    (ZeRO and the bf16/fp16 wrappers skip non-finite gradients themselves; this covers the
    plain-optimizer path, ZeRO stage 0 in fp32). DeepSpeed may call ``step()`` once per
    parameter group, so the flag stays set until the trainer clears it.
    """

    skip_step: bool = False
    overflow: bool = False

    def step(self, *args, **kwargs):
        self.overflow = bool(self.skip_step)
        if self.skip_step:
            return None
        return super().step(*args, **kwargs)


class AdamW(SkippableStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` that can skip a step (see ``SkippableStep``)."""


class _Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2).

    Per parameter tensor x with gradient g, at step t:
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        u = r + weight_decay * x
        x = x - lr * (||x|| / ||u||) * u     (trust ratio 1 when either norm is 0,
                                              or when the group has ``adapt=False``)
    The trust ratio is per tensor ("layer"), which is why LAMB cannot run under ZeRO: ZeRO
    hands the optimizer flattened partitions, not layers (the config refuses the pair).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_trust_ratio: float = 10.0,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid LAMB hyper-parameters lr={lr} betas={betas} eps={eps}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            adapt=True,
            max_trust_ratio=max_trust_ratio,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc = torch.promote_types(p.dtype, torch.float32)  # fp32 moments for bf16/fp16
                g = p.grad.to(acc)
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=acc)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=acc)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(group["eps"]))
                x = p.to(acc)
                if group["weight_decay"]:
                    update.add_(x, alpha=group["weight_decay"])
                if group["adapt"]:
                    w_norm, u_norm = x.norm(), update.norm()
                    # Tensors, not .item(): no host sync per parameter on GPU.
                    trust = torch.where(
                        (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                    ).clamp_(max=group["max_trust_ratio"])
                    update.mul_(trust)
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


class Lamb(SkippableStep, _Lamb):
    """LAMB (see ``_Lamb``) that can skip a step (see ``SkippableStep``)."""


def build_torch_optimizer(name: str, groups: list[dict], lr: float, betas, eps: float):
    """The CPU optimizer instance for ``name`` ("adamw" | "lamb")."""
    if name == "adamw":
        # torch's AdamW does not know the "adapt" key; it is harmless extra group state.
        return AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=True)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw or lamb")


# ----------------------------------------------------------------------------- schedules

SCHEDULES = ("constant", "linear", "polynomial", "cosine", "wsd")


def lr_multiplier(
    kind: str,
    warmup_steps: int,
    total_steps: int,
    end_ratio: float = 0.0,
    power: float = 1.0,
    decay_fraction: float = 0.1,
) -> Callable[[int], float]:
    """Peak-LR multiplier as a function of the scheduler's step index ``s`` (0-based).

    ``s`` is the number of optimizer steps already taken (LambdaLR is stepped after each),
    so the ``s+1``-th step warms up as ``(s + 1) / warmup_steps``: the first step already
    has a non-zero LR and step ``warmup_steps`` runs at the peak. After the warm-up, with
    ``p = (s - warmup_steps) / (total_steps - warmup_steps)`` the fraction of the decay
    done (0 on the first step after warm-up, 1 at ``total_steps``): ``linear`` 1 - p,
    ``polynomial`` (1 - p)^power, ``cosine`` (1 + cos(pi p)) / 2, each mapped onto
    [end_ratio, 1]; ``wsd`` (warmup-stable-decay) stays at the peak and decays linearly
    over the last ``decay_fraction`` of ``total_steps``; ``constant`` stays at the peak.
    Beyond ``total_steps``: end_ratio.

    A plain closure on purpose: LambdaLR checkpoints the ``__dict__`` of callable objects
    and would restore a stale schedule over the configured one on resume.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose from {', '.join(SCHEDULES)}")
    if kind != "constant" and total_steps <= warmup_steps:
        raise ValueError(
            f"schedule: total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})"
        )
    decay_start = warmup_steps
    if kind == "wsd":
        decay_start = max(warmup_steps, total_steps - math.ceil(decay_fraction * total_steps))

    def multiplier(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if kind == "constant" or s < decay_start:
            return 1.0
        p = min(1.0, (s - decay_start) / max(1, total_steps - decay_start))
        if kind in ("linear", "wsd"):
            shape = 1.0 - p
        elif kind == "polynomial":
            shape = (1.0 - p) ** power
        else:  # cosine
            shape = 0.5 * (1.0 + math.cos(math.pi * p))
        return end_ratio + (1.0 - end_ratio) * shape

    return multiplier
