"""The run configuration: one typed dataclass per component, composed into ``RunConfig``.

Loaded from TOML with dotted overrides (``python -m pretrain train --config C.toml
optimizer.lr=6e-4 batch.micro_batch_size=16``); unknown keys and wrong types are errors
naming the key (see ``pretrain.config_io``). The resolved config is written to
``RUN_DIR/config.toml`` and into every checkpoint.

Batch size has one source of truth: ``batch.global_batch_size`` sequences per optimizer
step. The accumulation A = G / (world_size * micro_batch_size) is derived, never set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

from data_pipeline.masking import MaskingConfig
from data_pipeline.stream import LoaderConfig
from pretrain.config_io import (
    ConfigError,
    apply_override,
    from_dict,
    to_toml,
    unknown_key_error,
    unknown_value_error,
)
from pretrain.optim import SCHEDULES

__all__ = ["ConfigError", "RunConfig", "load_config", "config_from_dict", "to_toml"]


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
        from pretrain.models import ARCHITECTURES, arch_module, find_preset

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
        from pretrain.models import find_preset

        kwargs = find_preset(self.preset)[1] if self.preset else {}
        return {**kwargs, **self.overrides}


@dataclass
class DataConfig(LoaderConfig):
    """The loader's configuration (``data_pipeline.stream.LoaderConfig``) plus what the
    trainer itself needs to know about the data."""

    tokenizer_dir: str | None = None
    """Tokenizer directory copied into checkpoints and exports; default SHARD_DIR/tokenizer."""
    attend_within_document: bool = True
    """Restrict attention to the query's own document in packed rows (segment ids)."""

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


@dataclass
class PrecisionConfig:
    dtype: str = "auto"
    """"auto" (bf16 on GPUs that support it, else fp16; fp32 on CPU), "fp32", "bf16" or "fp16"
    (GPU only; dynamic loss scaling)."""
    fp16_initial_scale_power: int = 16
    """fp16: the dynamic loss scale starts at 2**this."""
    fp16_loss_scale_window: int = 1000
    """fp16: overflow-free steps before the loss scale is raised."""
    fp16_hysteresis: int = 2
    """fp16: consecutive overflows before the loss scale is lowered."""
    fp16_min_loss_scale: float = 1.0
    """fp16: lower bound of the loss scale."""

    def __post_init__(self):
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(
                f"precision.dtype: expected auto, fp32, bf16 or fp16, got {self.dtype!r}"
            )


@dataclass
class ZeroConfig:
    stage: int = 0
    """ZeRO stage: 0 (data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters)."""
    offload_optimizer: str = "none"
    """"none", "cpu" or "nvme" (stage >= 1): optimizer states and step off the GPU."""
    offload_param: str = "none"
    """"none", "cpu" or "nvme" (stage 3 only): parameters off the GPU."""
    nvme_path: str = ""
    """Directory for nvme offload."""
    overlap_comm: bool | None = None
    """Overlap gradient reduction with backward (None = DeepSpeed's default for the stage)."""
    reduce_bucket_size: int = 500_000_000
    """Elements per gradient-reduction bucket."""

    def __post_init__(self):
        if self.stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero.stage: expected 0, 1, 2 or 3, got {self.stage}")
        for name in ("offload_optimizer", "offload_param"):
            if getattr(self, name) not in ("none", "cpu", "nvme"):
                raise ConfigError(f"zero.{name}: expected none, cpu or nvme")
        if self.offload_optimizer != "none" and self.stage == 0:
            raise ConfigError("zero.offload_optimizer needs zero.stage >= 1")
        if self.offload_param != "none" and self.stage != 3:
            raise ConfigError("zero.offload_param needs zero.stage = 3")
        if "nvme" in (self.offload_optimizer, self.offload_param) and not self.nvme_path:
            raise ConfigError("zero: nvme offload needs zero.nvme_path")


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    """Save every this many steps (0 = off; the last step is always saved)."""
    every_minutes: float = 0.0
    """Also save when this many minutes passed since the last save (0 = off; rank 0's clock)."""
    keep_last: int = 3
    """Complete checkpoints to keep (older ones are deleted after a new one is complete)."""
    export_hf: bool = True
    """At the end of training, write the final model as a HF directory to RUN_DIR/hf."""

    def __post_init__(self):
        if self.every_steps < 0 or self.every_minutes < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint: every_steps, every_minutes >= 0 and keep_last >= 1")


@dataclass
class EvalConfig:
    every_steps: int = 0
    """Evaluate on the validation shards every this many steps (0 = only at the end)."""
    max_sequences: int | None = 1024
    """Validation sequences per evaluation, from the start of the split (None = all of it).
    The same sequences on any world size when it is a multiple of world x micro-batch."""
    micro_batch_size: int = 0
    """Validation sequences per forward per rank (0 = batch.micro_batch_size)."""
    at_end: bool = True
    """Evaluate after the last step."""
    at_start: bool = False
    """Also evaluate the initial model (logged as step 0) when a run starts from scratch."""

    def __post_init__(self):
        if self.every_steps < 0 or self.micro_batch_size < 0:
            raise ConfigError("eval: every_steps and micro_batch_size must be >= 0")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ConfigError("eval.max_sequences must be >= 1 (omit it for the whole split)")


@dataclass
class LoggingConfig:
    every_steps: int = 10
    """Log to metrics.jsonl/TensorBoard every this many steps (exact global values)."""
    tensorboard: bool = True
    """Also write RUN_DIR/tensorboard/."""
    progress: bool = True
    """Progress bar with ETA on rank 0 (only in an interactive terminal)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU (default: from the GPU's name; none on CPU)."""
    audit_samples: bool = False
    """Write RUN_DIR/audit/rankNNNNN.jsonl: the global row ids each rank consumed at each step
    (``python -m pretrain.audit RUN_DIR`` checks that no sample was lost or repeated)."""

    def __post_init__(self):
        if self.every_steps < 1:
            raise ConfigError("logging.every_steps must be >= 1")


@dataclass
class DistributedConfig:
    timeout_minutes: float = 10.0
    """Timeout of every collective operation: a rank that waits longer for its peers raises
    and the job ends (a rank that dies is noticed sooner: the launchers stop the job when any
    rank exits non-zero). Must exceed the slowest legitimate wait, e.g. a checkpoint save."""
    rank0_timeout_minutes: float = 120.0
    """How long the other ranks wait for work that only rank 0 does: converting a checkpoint
    to DeepSpeed's universal format after a world-size change, and the final HF export."""

    def __post_init__(self):
        if self.timeout_minutes <= 0 or self.rank0_timeout_minutes <= 0:
            raise ConfigError("distributed: timeout_minutes and rank0_timeout_minutes must be > 0")


@dataclass
class PerfConfig:
    """How the model runs, never what it computes (``pretrain.perf.apply_perf``)."""

    compile: bool = False
    """torch.compile each transformer block, embedding and head in place (parameter names
    and checkpoints unchanged). The first steps pay the compilation: ~1 minute for a base
    model on a GPU, minutes on a CPU. Needs Triton on CUDA, a C++ compiler on CPU."""
    compile_mode: str = "default"
    """torch.compile mode: "default", "reduce-overhead", "max-autotune" or
    "max-autotune-no-cudagraphs"."""
    predict_capacity: str = "off"
    """"auto": the MLM head decodes a fixed number of positions per row, the bound that
    masking.kind = "mlm" guarantees (static shapes, no host sync); "off" (and always for
    wwm/span masking, which have no such bound): exactly the labelled positions. Same loss
    terms either way; RTD models draw their replacement samples for K slots per row instead
    of N labels in all, so "auto" changes which random numbers a run uses (not their
    distribution): opt-in, and keep it unchanged within a run for bit-exact resume."""

    def __post_init__(self):
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            raise ConfigError(
                f"perf.compile_mode must be one of {modes}, got {self.compile_mode!r}"
            )
        if self.predict_capacity not in ("auto", "off"):
            raise ConfigError(
                f"perf.predict_capacity must be 'auto' or 'off', got {self.predict_capacity!r}"
            )


@dataclass
class DebugConfig:
    poison_loss_steps: list[int] = field(default_factory=list)
    """Steps whose loss is multiplied by NaN on rank 0 (tests the non-finite skip)."""
    exit_during_save_step: int = 0
    """Hard-exit (status 137) in the middle of saving this step's checkpoint (tests atomicity)."""
    step_delay_s: float = 0.0
    """Sleep this long after every step, so that tests can act on a run in progress (send
    signals, add or kill ranks) at a known pace."""

    def __post_init__(self):
        if self.step_delay_s < 0:
            raise ConfigError("debug.step_delay_s must be >= 0")


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
