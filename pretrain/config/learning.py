"""What is trained and how fast it learns: model, data, optimizer, schedule and the batch
(one dataclass per component; a docstring per field)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data_pipeline.loader import LoaderConfig
from pretrain.config.toml_io import ConfigError, unknown_key_error, unknown_value_error
from pretrain.models import ARCHITECTURES, arch_module, find_preset
from pretrain.optim import SCHEDULES


@dataclass
class ModelConfig:
    arch: str = "roberta"
    """Architecture: "roberta" (MLM), "electra" or "deberta" (RTD)."""
    preset: str | None = None
    """Size preset of the architecture (e.g. "roberta-base", "electra-debug")."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of the architecture's Config replacing the preset's (HF names, e.g.
    hidden_dropout_prob). vocab_size and pad_token_id come from the tokenizer unless set."""

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise unknown_value_error("model.arch", self.arch, ARCHITECTURES)
        kwargs = {}
        if self.preset is not None:
            try:
                preset_arch, kwargs = find_preset(self.preset)
            except ValueError as e:
                raise ConfigError(f"model.preset: {e}") from e
            if preset_arch != self.arch:
                raise ConfigError(
                    f"model.preset: {self.preset!r} is a {preset_arch} preset, not {self.arch}"
                )
        mod = arch_module(self.arch)
        valid = {f.name for f in fields(mod.Config)}
        for key in self.overrides:
            if key not in valid:
                raise unknown_key_error(key, valid, "model.overrides.")
        try:  # build the architecture's Config now so that bad values fail before any work
            mod.Config(**{**kwargs, **self.overrides})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from e

    def model_kwargs(self) -> dict[str, Any]:
        """Config keyword arguments: the preset's, then the overrides."""
        kwargs = find_preset(self.preset)[1] if self.preset else {}
        return {**kwargs, **self.overrides}


@dataclass
class DataConfig(LoaderConfig):
    """The loader's configuration (``data_pipeline.loader.LoaderConfig``) plus what the
    trainer itself needs to know about the data."""

    tokenizer_dir: str | None = None
    """Tokenizer directory copied into checkpoints and exports; default SHARD_DIR/tokenizer."""
    attend_within_document: bool = True
    """Restrict attention to the query's own document in packed rows (segment ids)."""
    tokenizer_mismatch: str = "error"
    """A shards' tokenizer whose special tokens are of another family than model.arch's
    (e.g. RoBERTa's <s> </s> for BERT): "error" refuses to start, naming both; "warn" trains
    anyway with a warning."""

    def __post_init__(self):
        super().__post_init__()
        if self.tokenizer_mismatch not in ("error", "warn"):
            raise unknown_value_error(
                "data.tokenizer_mismatch", self.tokenizer_mismatch, ("error", "warn")
            )

    def attention_segments(self) -> bool:
        """Whether the model gets segment ids: packed documents kept apart. Pair rows hold one
        pair (A and B attend to each other), so their padding mask says everything."""
        return self.attend_within_document and self.packing != "pairs"

    def tokenizer_path(self) -> Path:
        return (
            Path(self.tokenizer_dir) if self.tokenizer_dir else Path(self.shard_dir) / "tokenizer"
        )


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    """"adamw" or "lamb" (LAMB needs zero.stage = 0: ZeRO flattens the per-layer tensors
    that LAMB's trust ratio is computed over)."""
    lr: float = 1e-4
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam/LAMB (beta1, beta2)."""
    eps: float = 1e-6
    """Adam/LAMB epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay on matrices (none on biases and LayerNorm weights)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    impl: str = "auto"
    """"auto": DeepSpeed's fused AdamW on GPU (CPU-Adam with optimizer offload), torch on
    CPU, and our LAMB everywhere; "torch" everywhere; or "deepspeed" (fused/CPU-Adam kernels,
    JIT-compiled on first use; its FusedLamb also adapts biases and norms and clamps the
    trust ratio to [0.01, 10], unlike our LAMB)."""

    def __post_init__(self):
        if self.name not in ("adamw", "lamb"):
            raise unknown_value_error("optimizer.name", self.name, ("adamw", "lamb"))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optimizer.betas: expected two values in [0, 1), got {self.betas}")
        if self.lr <= 0 or self.eps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("optimizer: lr must be > 0; eps, weight_decay, grad_clip >= 0")
        if self.impl not in ("auto", "torch", "deepspeed"):
            raise ConfigError(
                f"optimizer.impl: expected auto, torch or deepspeed, got {self.impl!r}"
            )


@dataclass
class ScheduleConfig:
    kind: str = "linear"
    """LR shape after warm-up: constant, linear, polynomial, cosine or wsd (warmup-stable-decay)."""
    warmup_steps: int = 0
    """Linear warm-up from lr/warmup_steps to the peak over this many steps."""
    total_steps: int = 0
    """Step at which the decay reaches end_lr_ratio (0 = max_steps). Set it explicitly when a
    run is extended by resuming with a larger max_steps, so the schedule does not change."""
    end_lr_ratio: float = 0.0
    """Final LR as a fraction of the peak."""
    power: float = 1.0
    """polynomial: exponent of the decay (1 = linear)."""
    decay_fraction: float = 0.1
    """wsd: fraction of total_steps spent decaying at the end."""

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise unknown_value_error("schedule.kind", self.kind, SCHEDULES)
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ConfigError("schedule: warmup_steps and total_steps must be >= 0")
        if not 0.0 <= self.end_lr_ratio <= 1.0 or not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError("schedule: end_lr_ratio must be in [0, 1], decay_fraction in (0, 1]")


@dataclass
class BatchConfig:
    global_batch_size: int = 8
    """Sequences per optimizer step, over all ranks and accumulation steps (the one batch size)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one rank (per GPU)."""

    def __post_init__(self):
        if self.global_batch_size < 1 or self.micro_batch_size < 1:
            raise ConfigError("batch: global_batch_size and micro_batch_size must be >= 1")

    def grad_accum(self, world_size: int) -> int:
        """A = G / (W * M); a clear error with valid alternatives when it is not an integer."""
        g, m, w = self.global_batch_size, self.micro_batch_size, world_size
        if g % (w * m) == 0:
            return g // (w * m)
        worlds = (
            [d for d in range(1, min(g // m, 4096) + 1) if (g // m) % d == 0] if g % m == 0 else []
        )
        micros = [d for d in range(1, g // w + 1) if (g // w) % d == 0] if g % w == 0 else []
        msg = (
            f"batch.global_batch_size={g} is not divisible by world_size {w} x micro_batch_size {m}"
        )
        msg += (
            f"; world sizes that work with micro_batch_size={m}: {_short(worlds)}"
            if worlds
            else f"; micro_batch_size={m} does not divide {g}"
        )
        msg += (
            f"; micro-batch sizes that work on {w} ranks: {_short(micros)}"
            if micros
            else f"; no micro-batch size works on {w} ranks ({g} % {w} != 0)"
        )
        raise ConfigError(msg)


def _short(values: list[int]) -> str:
    return ", ".join(map(str, values if len(values) <= 16 else values[:15] + ["..."]))
