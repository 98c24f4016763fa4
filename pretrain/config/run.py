"""``RunConfig``: the components composed into one run, and loading it from TOML + dotted
overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.masking import MaskingConfig
from pretrain.config.distill import DistillConfig
from pretrain.config.learning import (
    BatchConfig,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
)
from pretrain.config.runtime import (
    CheckpointConfig,
    DebugConfig,
    DistributedConfig,
    EvalConfig,
    LoggingConfig,
    PerfConfig,
    PrecisionConfig,
    ZeroConfig,
)
from pretrain.config.toml_io import ConfigError, apply_override, from_dict, tomllib
from pretrain.models import PAIR_ARCHITECTURES


@dataclass
class RunConfig:
    data: DataConfig
    """Shards, packing, sequence length and loader settings (see DataConfig)."""
    run_dir: str = ""
    """Output directory: config.toml, metrics.jsonl, tensorboard/, checkpoints/, hf/."""
    seed: int = 0
    """Seed of initialisation, dropout and RTD sampling (the data order has data.seed)."""
    max_steps: int = 100
    """Optimizer steps to train for (a resumed run continues up to this)."""
    init_from: str | None = None
    """HF model directory to initialise from (the architecture's import_hf)."""
    max_nonfinite_steps: int = 5
    """Stop with an error after this many consecutive steps with a non-finite loss."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture, size preset and field overrides."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """Dynamic masking (data_pipeline.masking.MaskingConfig): kind, rates, spans."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW or LAMB, peak LR, betas, weight decay, gradient clipping."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """LR warm-up and decay."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """Global batch (the one batch size) and per-GPU micro-batch."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """fp32 / bf16 / fp16 (with dynamic loss scaling)."""
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    """ZeRO stage and offloading."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """When to save, how many to keep, the final HF export."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation on the valid shards with fixed masks."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """metrics.jsonl / TensorBoard cadence, progress bar, MFU peak, sample audit."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Timeouts of the process group (how soon a hung job fails)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Distillation from a frozen teacher: teacher, recipe, term weights, student init."""
    perf: PerfConfig = field(default_factory=PerfConfig)
    """Speed knobs that keep the results: torch.compile, fixed-capacity MLM head."""
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Fault injection for tests (off by default)."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Raw DeepSpeed config keys, deep-merged last into the generated DeepSpeed config."""

    def __post_init__(self):
        if not self.run_dir:
            raise ConfigError("run_dir: required key missing")
        if self.max_steps < 1 or self.max_nonfinite_steps < 1 or self.seed < 0:
            raise ConfigError("max_steps and max_nonfinite_steps must be >= 1, seed >= 0")
        if self.optimizer.name == "lamb" and self.zero.stage != 0:
            raise ConfigError(
                "optimizer.name=lamb needs zero.stage=0: ZeRO hands the optimizer "
                "flattened partitions, so LAMB's per-layer trust ratio would be wrong"
            )
        if self.data.packing == "pairs" and self.model.arch not in PAIR_ARCHITECTURES:
            raise ConfigError(
                f'data.packing = "pairs" needs a model with a sentence-pair head '
                f"({', '.join(PAIR_ARCHITECTURES)}), not model.arch = {self.model.arch!r}"
            )
        sbo = self.model.model_kwargs().get("sbo", False)
        if sbo and not self.masking.boundaries:
            raise ConfigError(
                "model.overrides.sbo = true (SpanBERT's span boundary objective) needs "
                "masking.boundaries = true (the batches then carry each span's boundaries)"
            )
        total = self.schedule.total_steps or self.max_steps
        if self.schedule.kind != "constant" and total <= self.schedule.warmup_steps:
            raise ConfigError(
                f"schedule: total_steps ({total}) must exceed warmup_steps "
                f"({self.schedule.warmup_steps})"
            )

    @property
    def total_steps(self) -> int:
        """Length of the LR schedule."""
        return self.schedule.total_steps or self.max_steps

    @property
    def eval_micro_batch_size(self) -> int:
        return self.eval.micro_batch_size or self.batch.micro_batch_size


def config_from_dict(raw: dict) -> RunConfig:
    return from_dict(RunConfig, raw)


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RunConfig:
    """Parse the TOML file at ``path`` (or start empty), apply ``key=value`` overrides, validate."""
    raw: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from e
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)
