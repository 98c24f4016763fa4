"""How a run executes: precision, ZeRO, checkpoints, evaluation, logging, timeouts, speed
knobs and fault injection (one dataclass per component; a docstring per field)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.config.toml_io import ConfigError


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
    """How the model runs, never what it computes (``pretrain.train.perf.apply_perf``)."""

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
