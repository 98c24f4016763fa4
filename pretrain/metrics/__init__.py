"""What a run reports: ``metrics.jsonl`` + TensorBoard, a progress bar, step timing and
memory (``logger``), model FLOPs per token, device peaks and MFU (``flops``), and the
training curves as a PNG (``plot``)."""

from pretrain.metrics.flops import (
    flops_breakdown,
    mfu,
    model_flops_per_token,
    peak_flops_for_name,
    peak_flops_per_second,
)
from pretrain.metrics.logger import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsLogger,
    Progress,
    StepTimer,
    peak_memory_bytes,
    read_metrics,
)

__all__ = [
    "METRICS_FILE",
    "TENSORBOARD_DIR",
    "MetricsLogger",
    "Progress",
    "StepTimer",
    "flops_breakdown",
    "mfu",
    "model_flops_per_token",
    "peak_flops_for_name",
    "peak_flops_per_second",
    "peak_memory_bytes",
    "read_metrics",
]
