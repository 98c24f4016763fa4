"""The DeepSpeed config dict, generated from the typed run config (never hand-edited).

Pure functions, no DeepSpeed import (``--dry-run`` prints the result without starting
anything); ``pretrain.engine`` hands the dict to ``deepspeed.initialize``. Raw keys in the
config's ``[deepspeed]`` table are deep-merged last, so users can set anything DeepSpeed
offers that the typed config does not name.
"""

from __future__ import annotations

import torch

from pretrain.config import ConfigError, RunConfig
from pretrain.config.toml_io import deep_merge


def resolve_dtype(requested: str, device: torch.device) -> str:
    """ "fp32" | "bf16" | "fp16" for ``precision.dtype`` on ``device``."""
    if device.type == "cpu":
        if requested == "fp16":
            raise ConfigError("precision.dtype=fp16 is not supported on CPU (use fp32 or bf16)")
        return "fp32" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def torch_dtype(dtype: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def _offload(device: str, cfg: RunConfig) -> dict:
    out = {"device": device, "pin_memory": True}
    if device == "nvme":
        out["nvme_path"] = cfg.zero.nvme_path
    return out


def build_ds_config(
    cfg: RunConfig, world_size: int, dtype: str, load_universal: bool = False
) -> dict:
    """The DeepSpeed config for ``cfg`` on ``world_size`` ranks in ``dtype``."""
    accum = cfg.batch.grad_accum(world_size)
    z = cfg.zero
    zero: dict = {"stage": z.stage, "reduce_bucket_size": z.reduce_bucket_size}
    if z.overlap_comm is not None:
        zero["overlap_comm"] = z.overlap_comm
    if z.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(z.offload_optimizer, cfg)
    if z.offload_param != "none":
        zero["offload_param"] = _offload(z.offload_param, cfg)
    p = cfg.precision
    ds = {
        "train_batch_size": cfg.batch.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {
            "enabled": dtype == "fp16",
            "loss_scale": 0,
            "initial_scale_power": p.fp16_initial_scale_power,
            "loss_scale_window": p.fp16_loss_scale_window,
            "hysteresis": p.fp16_hysteresis,
            "min_loss_scale": p.fp16_min_loss_scale,
        },
        # Our optimizers subclass DeepSpeed's/torch's (to skip non-finite steps), so ZeRO's
        # exact-type whitelist does not recognise them.
        "zero_allow_untested_optimizer": True,
        # With optimizer.impl=torch and offload, DeepSpeed would refuse a torch optimizer.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # the trainer does the logging
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    return deep_merge(ds, cfg.deepspeed)


def optimizer_impl(cfg: RunConfig, device_type: str) -> str:
    """ "torch" or "deepspeed" (fused / CPU-Adam kernels) for ``optimizer.impl`` on a device."""
    if cfg.optimizer.impl != "auto":
        return cfg.optimizer.impl
    if cfg.optimizer.name == "lamb":
        # DeepSpeed's FusedLamb applies the trust ratio to every tensor (biases and norms
        # too) and clamps it to [0.01, 10]: another algorithm than ours, so "auto" keeps our
        # LAMB (plain torch, any device) and one config trains the same on CPU and GPU.
        return "torch"
    return "deepspeed" if device_type == "cuda" else "torch"
