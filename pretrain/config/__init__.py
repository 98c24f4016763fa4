"""The run configuration: one typed dataclass per component, composed into ``RunConfig``.

Loaded from TOML with dotted overrides (``python -m pretrain train --config C.toml
optimizer.lr=6e-4 batch.micro_batch_size=16``); unknown keys and wrong types are errors
naming the key (see ``toml_io``). The resolved config is written to
``RUN_DIR/config.toml`` and into every checkpoint.

Batch size has one source of truth: ``batch.global_batch_size`` sequences per optimizer
step. The accumulation A = G / (world_size * micro_batch_size) is derived, never set.

Modules: ``toml_io`` (typed dataclasses <-> TOML, overrides, errors), ``learning`` (model,
data, optimizer, schedule, batch), ``runtime`` (precision, ZeRO, checkpoints, evaluation,
logging, timeouts, perf, debug), ``distill`` (teacher, recipe, term weights), ``run`` (``RunConfig``, ``load_config``).
"""

from pretrain.config.distill import DistillConfig
from pretrain.config.learning import (
    BatchConfig,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
)
from pretrain.config.run import RunConfig, config_from_dict, load_config
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
from pretrain.config.toml_io import ConfigError, to_toml, tomllib

__all__ = [
    "BatchConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DebugConfig",
    "DistillConfig",
    "DistributedConfig",
    "EvalConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PerfConfig",
    "PrecisionConfig",
    "RunConfig",
    "ScheduleConfig",
    "ZeroConfig",
    "config_from_dict",
    "load_config",
    "to_toml",
    "tomllib",
]
