"""What a run is built from, decided before any collective: the model for the shards'
tokenizer, where to resume from, and the run directory's state. Everything here only reads
(or raises one-line errors), so ``Session`` runs it on every rank under ``engine.agree``."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from data_pipeline.common import CommandError
from pretrain.checkpoint import CHECKPOINTS, ResumePoint, find_resume
from pretrain.config import RunConfig
from pretrain.models import arch_module, hf_module, tokenizer_mismatch
from pretrain.train import audit


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def is_rtd(config) -> bool:
    """Whether a model config trains replaced-token detection (else plain MLM)."""
    return getattr(config, "objective", "rtd") == "rtd" and hasattr(config, "rtd_weight")


def check_tokenizer(cfg: RunConfig, tokenizer_info: dict) -> str | None:
    """Refuse a tokenizer of another special-token family than the architecture's (unless
    ``data.tokenizer_mismatch = "warn"``); returns what to print (a warning or a note)."""
    error, note = tokenizer_mismatch(cfg.model.arch, tokenizer_info)
    if error and cfg.data.tokenizer_mismatch == "error":
        raise CommandError(error)
    return f"warning: {error}" if error else note


def build_model(cfg: RunConfig, tokenizer_info: dict):
    """The model of ``cfg`` sized for the shards' tokenizer (vocab_size, pad_token_id)."""
    mod = arch_module(cfg.model.arch)
    names = {f.name for f in dataclasses.fields(mod.Config)}
    kwargs = cfg.model.model_kwargs()
    derived = {
        "vocab_size": tokenizer_info.get("vocab_size"),
        "pad_token_id": tokenizer_info.get("special_ids", {}).get("pad"),
    }
    for key, value in derived.items():
        if key in names and key not in cfg.model.overrides and value is not None:
            kwargs[key] = int(value)
    if cfg.init_from:
        model = hf_module(cfg.model.arch).import_hf(cfg.init_from, **cfg.model.overrides)
        vocab = derived["vocab_size"] or 0
        if model.config.vocab_size < vocab:
            raise CommandError(
                f"init_from {cfg.init_from}: {model.config.vocab_size} embedding "
                f"rows, but the shards' tokenizer has {vocab} ids"
            )
        pad = derived["pad_token_id"]
        if pad is not None and getattr(model.config, "pad_token_id", pad) != pad:
            # The pad id selects the padding embedding row and RoBERTa's position offset: a
            # model trained with another tokenizer's pad id would read the shards wrongly.
            raise CommandError(
                f"init_from {cfg.init_from}: pad_token_id {model.config.pad_token_id}, but "
                f"the shards' tokenizer pads with id {pad} (use the model's own tokenizer)"
            )
    else:
        model = mod.Model(mod.Config(**kwargs))
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and cfg.data.seq_len > limit:
        raise CommandError(
            f"data.seq_len={cfg.data.seq_len} exceeds the model's max_position_embeddings={limit}"
        )
    return model


def resume_point(cfg: RunConfig, resume: str, overwrite: bool) -> tuple[ResumePoint | None, bool]:
    """What to resume from, and whether RUN_DIR must be cleared first (``--resume never
    --overwrite`` on a run with checkpoints); reads only."""
    run = Path(cfg.run_dir)
    point = find_resume(run, resume)
    has_ckpt = any((run / CHECKPOINTS).glob("step_*")) if (run / CHECKPOINTS).is_dir() else False
    clear = point is None and has_ckpt and resume == "never"
    if clear and not overwrite:
        raise CommandError(
            f"{run}: has checkpoints; --resume never refuses to mix runs "
            "(use another run_dir, or --overwrite to delete them)"
        )
    return point, clear


def clear_run_dir(run: Path) -> None:
    for name in (CHECKPOINTS, "tensorboard", "hf", audit.AUDIT_DIR):
        shutil.rmtree(run / name, ignore_errors=True)
    for p in [*run.glob("metrics.jsonl*"), run / "summary.json"]:
        p.unlink(missing_ok=True)


def model_changes(point: ResumePoint, model_json: str) -> str | None:
    """What changed in the model's Config since ``point`` (None if nothing). A different
    architecture is an error; dropout and the like may change on resume, shapes may not
    (DeepSpeed's load then fails with a one-line error)."""
    saved_path = point.tag_dir / "model.json"
    if not saved_path.is_file():
        return None
    saved, now = json.loads(saved_path.read_text()), json.loads(model_json)
    if saved == now:
        return None
    if saved.get("arch") != now.get("arch"):
        raise CommandError(
            f"{point.tag_dir}: a {saved.get('arch')} checkpoint; this config trains "
            f"{now.get('arch')}"
        )
    a, b = saved.get("config", {}), now.get("config", {})
    # A field added to the architecture since the checkpoint was written, at its default
    # (the behaviour the checkpoint was trained with), is not a change.
    cls = arch_module(now["arch"]).Config
    new_defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in a}
    diff = [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted({*a, *b})
        if a.get(k) != b.get(k) and not (k not in a and new_defaults.get(k) == b.get(k))
    ]
    return "; ".join(diff) or None
