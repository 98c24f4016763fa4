"""Everything one training run is made of, built (and on resume restored) in one place.

``Session(cfg, resume)`` initialises distributed training, builds the model (vocabulary
and padding id from the shards' tokenizer), the loaders, the DeepSpeed engine, the
objective, the checkpointer and the metrics logger, and restores a checkpoint. The loop in
``pretrain.trainer`` only orders steps, logging, evaluation and checkpoints; the policies
(what to log, when to save, what a non-finite step means) are in ``pretrain.policies``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from data_pipeline.cli import CommandError
from data_pipeline.shards import Manifest, atomic_write_text
from data_pipeline.stream import PretrainLoader, validation_loader
from pretrain import audit
from pretrain import engine as eng
from pretrain.checkpoint import (
    CHECKPOINTS,
    Checkpointer,
    ResumePoint,
    check_zero_stage,
    find_resume,
    model_json,
)
from pretrain.config import RunConfig, to_toml
from pretrain.metrics import (
    MetricsLogger,
    Progress,
    StepTimer,
    model_flops_per_token,
    peak_flops_per_second,
)
from pretrain.models import arch_module, tokenizer_family_note
from pretrain.objectives import Objective
from pretrain.optim import lr_multiplier
from pretrain.perf import apply_perf
from pretrain.policies import LoopPolicies, NonFiniteLossError, StopSignal, TrainState
from pretrain.universal import ensure_universal, needs_universal

__all__ = ["NonFiniteLossError", "Session", "StopSignal", "TrainState", "build_model"]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def is_rtd(config) -> bool:
    """Whether a model config trains replaced-token detection (else plain MLM)."""
    return getattr(config, "objective", "rtd") == "rtd" and hasattr(config, "rtd_weight")


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
        model = mod.import_hf(cfg.init_from, **cfg.model.overrides)
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


class Session(LoopPolicies):
    def __init__(self, cfg: RunConfig, resume: str = "auto", overwrite: bool = False):
        self.cfg = cfg
        self.dist = d = eng.init_distributed(
            cfg.distributed.timeout_minutes, cfg.distributed.rank0_timeout_minutes
        )
        # Everything that can fail on bad input, before any collective: the same one-line
        # error on every rank (printed once) instead of ranks failing one by one.
        point, model = eng.agree(lambda: self._build(resume, overwrite))
        if point is None and self._clear:
            if d.rank == 0:
                clear_run_dir(Path(cfg.run_dir))
            eng.barrier()
        self.perf = apply_perf(model, cfg.perf, cfg.masking, cfg.data.seq_len)
        self.rtd = is_rtd(model.config)
        note = tokenizer_family_note(cfg.model.arch, self.loader.manifest.tokenizer)
        if note and d.rank == 0:
            print(note, flush=True)
        self.model_json = model_json(cfg.model.arch, model.config)
        G, M = cfg.batch.global_batch_size, cfg.batch.micro_batch_size
        universal = self._universal(point)
        lr_fn = lr_multiplier(
            cfg.schedule.kind,
            cfg.schedule.warmup_steps,
            cfg.total_steps,
            cfg.schedule.end_lr_ratio,
            cfg.schedule.power,
            cfg.schedule.decay_fraction,
        )
        self.engine = e = eng.Engine(model, cfg, d, lr_fn, load_universal=universal)
        self.objective = Objective(self.rtd, getattr(model.config, "rtd_weight", 1.0))
        config_text = to_toml(cfg)
        self.ckpt = Checkpointer(
            cfg.run_dir,
            e,
            cfg.checkpoint.keep_last,
            {"config.toml": config_text, "model.json": self.model_json},
            cfg.data.tokenizer_path(),
            cfg.debug.exit_during_save_step,
        )
        seed_all(cfg.seed + 1 + d.rank)  # dropout / RTD sampling streams differ per rank
        self.state = TrainState()
        if point is not None:
            self._check_model(point)
            restored = self.ckpt.load(point, self.loader, universal, rng_seed=cfg.seed + 1)
            known = {f.name for f in dataclasses.fields(TrainState)}
            self.state = TrainState(**{k: v for k, v in restored.items() if k in known})
        if d.rank == 0:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(cfg.run_dir) / "config.toml", config_text)
            if cfg.checkpoint.export_hf and not cfg.data.tokenizer_path().is_dir():
                print(
                    f"warning: no tokenizer directory at {cfg.data.tokenizer_path()}: "
                    "checkpoints will lack tokenizer files and the HF export is skipped "
                    "(set data.tokenizer_dir)",
                    flush=True,
                )
        self.resumed_from = point
        if point is not None and d.rank == 0:
            print(f"resuming from {point.tag_dir} (step {point.step})", flush=True)
            if point.world_size != d.world_size:
                how = "universal checkpoint" if universal else "no partitioned state"
                print(
                    f"note: checkpoint written by {point.world_size} ranks, continuing on "
                    f"{d.world_size} ({how}); global batch {G}, gradient accumulation now "
                    f"{e.grad_accum}",
                    flush=True,
                )
        if d.rank == 0 and (self.perf["compiled_modules"] or self.perf["predict_capacity"]):
            print(
                f"perf: {self.perf['compiled_modules']} modules compiled "
                f"(mode {cfg.perf.compile_mode}), MLM head capacity "
                f"{self.perf['predict_capacity'] or 'exact'} positions per row",
                flush=True,
            )
        if d.rank == 0 and cfg.logging.audit_samples:
            audit.prepare(cfg.run_dir, self.state.step if point else None)
        e.barrier()  # no rank appends to an audit file before rank 0 has truncated it
        self.audit = audit.AuditLog(cfg.run_dir, d.rank, d.world_size, G, cfg.logging.audit_samples)
        self.logger = MetricsLogger(
            cfg.run_dir,
            d.rank,
            cfg.logging.tensorboard,
            resume_step=self.state.step if point else None,
        )
        self.progress = Progress(cfg.max_steps, self.state.step, d.rank, cfg.logging.progress)
        self.timer = StepTimer()
        self._last_save = time.monotonic()
        self._win_tokens, self._win_time, self._win_steps = 0, 0.0, 0
        self._flops_per_token = model_flops_per_token(
            e.module, cfg.data.seq_len, cfg.masking.mask_prob, micro_batch_size=M
        )
        self._peak = cfg.logging.peak_flops or peak_flops_per_second(
            d.device, eng.torch_dtype(e.dtype)
        )

    def _build(self, resume: str, overwrite: bool):
        """Check the config, find the resume point, build the model and the loaders."""
        cfg, d = self.cfg, self.dist
        cfg.batch.grad_accum(d.world_size)  # first: a clear error, with valid alternatives
        point, self._clear = resume_point(cfg, resume, overwrite)
        manifest = Manifest.load(cfg.data.shard_dir)
        seed_all(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg, manifest.tokenizer)
        G, M = cfg.batch.global_batch_size, cfg.batch.micro_batch_size
        self.loader = PretrainLoader(cfg.data, cfg.masking, G, M, d.rank, d.world_size)
        self.val = None
        ev = cfg.eval
        if (ev.every_steps or ev.at_end or ev.at_start) and manifest.split("valid"):
            per_batch = cfg.eval_micro_batch_size * d.world_size
            n = cfg.eval.max_sequences
            self.val = validation_loader(
                cfg.data,
                cfg.masking,
                cfg.eval_micro_batch_size,
                d.rank,
                d.world_size,
                None if n is None else -(-n // per_batch),
            )
        if point is not None:
            check_zero_stage(point, cfg.zero.stage)
        return point, model

    def _universal(self, point: ResumePoint | None) -> bool:
        """Whether to load ``point`` as a universal checkpoint (partitioned optimizer state
        written by another number of ranks); converted once, by rank 0 (pretrain.universal)."""
        if point is None or not needs_universal(
            point.tag_dir, point.world_size, self.dist.world_size
        ):
            return False
        eng.on_rank0(
            lambda: ensure_universal(point.tag_dir) and None,
            f"converting {point.tag_dir} to a universal checkpoint",
        )
        return True

    def _check_model(self, point: ResumePoint) -> None:
        saved_path = point.tag_dir / "model.json"
        if not saved_path.is_file():
            return
        saved, now = json.loads(saved_path.read_text()), json.loads(self.model_json)
        if saved != now:
            a, b = saved.get("config", {}), now.get("config", {})
            diff = [
                f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted({*a, *b})
                if a.get(k) != b.get(k)
            ]
            if saved.get("arch") != now.get("arch"):
                raise CommandError(
                    f"{point.tag_dir}: a {saved.get('arch')} checkpoint; this "
                    f"config trains {now.get('arch')}"
                )
            # Dropout and the like may change on resume; shapes may not (the load fails).
            if self.dist.rank == 0:
                print(
                    f"note: model settings changed since the checkpoint: {'; '.join(diff)}",
                    flush=True,
                )

    def close(self) -> None:
        self.engine.close()
        self.audit.close()
        self.progress.close()
        self.logger.close()
        self.loader.close()
        if self.val is not None:
            self.val.close()
