"""DeepSpeed behind one package: the only place in the project that imports it.

Modules: ``launch_env`` (which launcher started this rank: DeepSpeed, torchrun, mpirun,
srun), ``distributed`` (process groups, rank agreement, ``on_rank0``), ``ds_config`` (the
DeepSpeed config, generated from the typed run config), ``runtime`` (``Engine``: forward,
backward, skippable step, save/load, reductions), ``zero_files`` (reading ZeRO checkpoint
files weights-only; fp32 consolidation), ``universal`` (resuming at another world size).
"""

from pretrain.engine.distributed import (
    AgreedError,
    DistInfo,
    agree,
    agreed_error,
    barrier,
    init_distributed,
    on_rank0,
    shutdown,
)
from pretrain.engine.ds_config import build_ds_config, resolve_dtype, torch_dtype
from pretrain.engine.runtime import Engine, UnreadableCheckpointError, build_optimizer
from pretrain.engine.universal import UNIVERSAL, ensure_universal, needs_universal
from pretrain.engine.zero_files import (
    check_checkpoint_files,
    consolidated_state_dict,
    ds_to_universal,
    load_checkpoint_file,
)

__all__ = [
    "UNIVERSAL",
    "AgreedError",
    "DistInfo",
    "Engine",
    "UnreadableCheckpointError",
    "agree",
    "agreed_error",
    "barrier",
    "build_ds_config",
    "build_optimizer",
    "check_checkpoint_files",
    "consolidated_state_dict",
    "ds_to_universal",
    "ensure_universal",
    "init_distributed",
    "load_checkpoint_file",
    "needs_universal",
    "on_rank0",
    "resolve_dtype",
    "shutdown",
    "torch_dtype",
]
