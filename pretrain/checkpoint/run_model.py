"""A run directory's model for inference and export: the newest checkpoint's consolidated fp32
weights (read weights-only, never unpickled), else the final HF export in ``RUN_DIR/hf``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from pretrain.checkpoint.layout import CHECKPOINTS, RunDirError, latest_tag
from pretrain.config.toml_io import tomllib
from pretrain.distill.distiller import shell
from pretrain.engine import consolidated_state_dict
from pretrain.models import arch_module, hf_module


def load_run_model(run_dir: str | os.PathLike):
    """(model in eval mode with consolidated fp32 weights, tokenizer directory) of a run.

    A distillation run's model is its student (the projections W_e / W_h stay in the
    checkpoint; the teacher was never part of it).

    The newest complete checkpoint (any ZeRO stage), else the final HF export in RUN_DIR/hf.
    Never runs code from the run directory: checkpoint files are read weights-only
    (``pretrain.engine.consolidated_state_dict``), an export through safetensors; a file
    that would need a full unpickle is refused with a one-line ``RunDirError``.
    """
    run = Path(run_dir)
    root = run / CHECKPOINTS
    tag = latest_tag(root)
    if tag is not None:
        info = json.loads((root / tag / "model.json").read_text())
        mod = arch_module(info["arch"])
        model = student = mod.Model(mod.Config(**info["config"]))
        if "distill" in info:  # the checkpoint holds a Distiller: student + W_e / W_h
            model = shell(student, info["distill"])
        try:  # weights-only reads: nothing pickled in the checkpoint runs
            state = consolidated_state_dict(root / tag, model)
        except ValueError as e:
            raise RunDirError(str(e)) from e
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(
            dict(model.named_parameters())
        )
        if unexpected or set(missing) - tied:
            raise RunDirError(
                f"{root / tag}: weights do not match the model "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        return student.eval(), root / tag / "tokenizer"
    hf = run / "hf"
    if (hf / "config.json").is_file() and (run / "config.toml").is_file():
        arch = tomllib.loads((run / "config.toml").read_text())["model"]["arch"]
        try:
            return hf_module(arch).import_hf(hf).eval(), hf
        except ValueError as e:
            raise RunDirError(str(e)) from e
    if not run.is_dir():
        raise RunDirError(f"{run_dir}: not a directory")
    raise RunDirError(
        f"{run_dir}: not a run directory with a model (no complete checkpoint in "
        f"{CHECKPOINTS}/ and no hf/ export)"
    )


def model_json(arch: str, config) -> str:
    """model.json: the architecture and its exact Config (vocab size etc. included)."""
    return json.dumps({"arch": arch, "config": asdict(config)}, indent=1) + "\n"
