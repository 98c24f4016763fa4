"""Checkpoints: the run-directory layout, atomic saves with a ``latest`` pointer, RNG states,
resume, and reading a run's model back.

::

    RUN_DIR/config.toml                 resolved config of the (latest) invocation
    RUN_DIR/metrics.jsonl, tensorboard/ (pretrain.metrics)
    RUN_DIR/checkpoints/latest          name of the newest complete checkpoint, written LAST
    RUN_DIR/checkpoints/step_00001000/  one checkpoint:
        *.pt                              DeepSpeed engine state (model, optimizer, scheduler,
                                          ZeRO partitions), client state with the trainer state;
                                          read weights-only (pretrain.engine), never unpickled
        ranks/rank00000.pt                per rank: RNG states (python, numpy, torch, cuda)
                                          and the data-loader position
        config.toml, model.json           resolved run config; the model's exact Config
        tokenizer/                        copy of the tokenizer files
        COMPLETE                          JSON marker, written once every rank has finished
        universal/                        DeepSpeed universal conversion, made on the first
                                          resume at another world size (pretrain.engine.universal)
    RUN_DIR/hf/                         HF export of the final model

A checkpoint counts only once ``COMPLETE`` exists: a kill during a save leaves the
previous checkpoint as the newest complete one, and resume falls back to it even if
``latest`` names an incomplete directory.

Modules: ``layout`` (names, markers, resume points), ``checkpointer`` (save/restore through
``pretrain.engine``), ``run_model`` (a run's model for inference and export).
"""

from pretrain.checkpoint.checkpointer import (
    Checkpointer,
    rng_state,
    seed_rng,
    set_rng_state,
)
from pretrain.checkpoint.layout import (
    CHECKPOINTS,
    COMPLETE,
    LATEST,
    ResumePoint,
    RunDirError,
    check_zero_stage,
    complete_tags,
    find_resume,
    latest_tag,
    read_marker,
    step_of,
    tag_for,
)
from pretrain.checkpoint.run_model import load_run_model, model_json

__all__ = [
    "CHECKPOINTS",
    "COMPLETE",
    "LATEST",
    "Checkpointer",
    "ResumePoint",
    "RunDirError",
    "check_zero_stage",
    "complete_tags",
    "find_resume",
    "latest_tag",
    "load_run_model",
    "model_json",
    "read_marker",
    "rng_state",
    "seed_rng",
    "set_rng_state",
    "step_of",
    "tag_for",
]
