"""Everything one training run is made of, built (and on resume restored) in one place.

``Session(cfg, resume)`` is built in steps, each a method: ``_inputs`` (config check, resume
point, the manifest — read once —, the model and the loaders: everything that can fail on
bad input, agreed among the ranks before any collective), ``_build`` (speed knobs, the
DeepSpeed engine, the objective, the checkpointer), ``_restore`` (a checkpoint), ``_announce``
(the run directory's config and what rank 0 tells the user), ``_recorders`` (sample audit,
metrics, progress, step timer). It owns the ``Policies`` that decide after each step; the
loop in ``pretrain.train.loop`` only orders steps, logging, evaluation and checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from data_pipeline.common import atomic_write_text
from data_pipeline.loader import PretrainLoader, validation_loader
from data_pipeline.shards import Manifest
from pretrain import engine as eng
from pretrain.checkpoint import Checkpointer, ResumePoint, check_zero_stage, model_json
from pretrain.config import RunConfig, to_toml
from pretrain.metrics import (
    MetricsLogger,
    Progress,
    StepTimer,
    model_flops_per_token,
    peak_flops_per_second,
)
from pretrain.optim import lr_multiplier
from pretrain.train import audit
from pretrain.train import teacher as distill_teacher
from pretrain.train.build import (
    build_model,
    check_tokenizer,
    clear_run_dir,
    is_rtd,
    model_changes,
    resume_point,
    seed_all,
)
from pretrain.train.distill import DistillObjective, check_teacher_unchanged, distill_json
from pretrain.train.objectives import Objective
from pretrain.train.perf import apply_perf, compile_modules
from pretrain.train.policies import Policies, TrainState

__all__ = ["Session"]


class Session:
    """One training run's parts (see the module docstring)."""

    def __init__(self, cfg: RunConfig, resume: str = "auto", overwrite: bool = False):
        self.cfg = cfg
        self.dist = d = eng.init_distributed(
            cfg.distributed.timeout_minutes, cfg.distributed.rank0_timeout_minutes
        )
        # Everything that can fail on bad input, before any collective: the same one-line
        # error on every rank (printed once) instead of ranks failing one by one.
        point, clear, model = eng.agree(lambda: self._inputs(resume, overwrite))
        if clear:
            if d.rank == 0:
                clear_run_dir(Path(cfg.run_dir))
            eng.barrier()
        self.resumed_from = point
        universal = self._build(model, point)
        self.state = self._restore(point, universal)
        self._announce(point, universal)
        self.audit, self.logger, self.progress, self.timer = self._recorders(point)
        e = self.engine
        self.policy = Policies(
            cfg,
            e,
            self.loader,
            self.objective,
            self.state,
            SimpleNamespace(logger=self.logger, progress=self.progress, timer=self.timer),
            has_val=self.val is not None,
            resumed=point is not None,
            flops_per_token=self._flops_per_token(),
            peak=cfg.logging.peak_flops
            or peak_flops_per_second(d.device, eng.torch_dtype(e.dtype)),
        )

    # -- the steps of building a run ----------------------------------------------------------
    def _inputs(self, resume: str, overwrite: bool):
        """(resume point, whether to clear RUN_DIR first, model); builds the loaders."""
        cfg, d = self.cfg, self.dist
        cfg.batch.grad_accum(d.world_size)  # first: a clear error, with valid alternatives
        point, clear = resume_point(cfg, resume, overwrite)
        self.manifest = manifest = Manifest.load(cfg.data.shard_dir)  # read once per run
        self.tokenizer_note = check_tokenizer(cfg, manifest.tokenizer)
        seed_all(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg, manifest.tokenizer)
        self.teacher = None
        if cfg.distill.enabled:  # the student inside a Distiller, the teacher beside it
            model, self.teacher = distill_teacher.build(cfg, model, manifest.tokenizer)
        G, M = cfg.batch.global_batch_size, cfg.batch.micro_batch_size
        self.loader = PretrainLoader(
            cfg.data, cfg.masking, G, M, d.rank, d.world_size, manifest=manifest
        )
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
                manifest=manifest,
            )
        if point is not None:
            check_zero_stage(point, cfg.zero.stage)
            if (note := check_teacher_unchanged(point, model)) and d.rank == 0:
                print(note, flush=True)
            if changes := model_changes(point, model_json(cfg.model.arch, model.config)):
                if d.rank == 0:
                    print(
                        f"note: model settings changed since the checkpoint: {changes}", flush=True
                    )
        return point, clear, model

    def _build(self, model, point: ResumePoint | None) -> bool:
        """Speed knobs, engine, objective and checkpointer; returns whether ``point`` is
        loaded as a universal checkpoint (written by another number of ranks)."""
        cfg, d = self.cfg, self.dist
        student = getattr(model, "student", model)  # a Distiller trains its student
        self.perf = apply_perf(student, cfg.perf, cfg.masking, cfg.data.seq_len)
        if self.teacher is not None and cfg.perf.compile:  # its blocks too: a forward per step
            compile_modules(self.teacher, cfg.perf.compile_mode)
        self.rtd = is_rtd(model.config)
        self.model_json = distill_json(model_json(cfg.model.arch, model.config), model)
        universal = point is not None and eng.needs_universal(
            point.tag_dir, point.world_size, d.world_size
        )
        if universal:  # converted once, by rank 0 (pretrain.engine.universal)
            eng.on_rank0(
                lambda: eng.ensure_universal(point.tag_dir) and None,
                f"converting {point.tag_dir} to a universal checkpoint",
            )
        s = cfg.schedule
        lr_fn = lr_multiplier(
            s.kind, s.warmup_steps, cfg.total_steps, s.end_lr_ratio, s.power, s.decay_fraction
        )
        self.engine = eng.Engine(model, cfg, d, lr_fn, load_universal=universal)
        if self.teacher is not None:  # frozen, outside the engine, in the training precision
            model.attach_teacher(
                self.teacher, self.engine.device, eng.torch_dtype(self.engine.dtype)
            )
        self.objective = self._objective(model)
        self.config_text = to_toml(cfg)
        self.ckpt = Checkpointer(
            cfg.run_dir,
            self.engine,
            cfg.checkpoint.keep_last,
            {"config.toml": self.config_text, "model.json": self.model_json},
            cfg.data.tokenizer_path(),
            cfg.debug.exit_during_save_step,
        )
        return universal

    def _objective(self, model):
        """The loss terms of this model and data: MLM, RTD, NSP/SOP, SBO, distillation."""
        cfg, c = self.cfg, model.config
        pair_task = cfg.data.pair_task if cfg.data.packing == "pairs" else None
        sbo = getattr(c, "sbo", False)
        if self.teacher is not None:
            return DistillObjective(model.plan.weights, pair_task, sbo)
        return Objective(self.rtd, getattr(c, "rtd_weight", 1.0), pair_task, sbo=sbo)

    def _flops_per_token(self) -> float:
        """Training FLOPs per token for MFU: the model's (a distiller's student), plus the
        teacher's forward when distilling (a third of a training step's FLOPs)."""
        cfg, e = self.cfg, self.engine

        def count(m) -> float:
            return model_flops_per_token(
                m,
                cfg.data.seq_len,
                cfg.masking.mask_prob,
                micro_batch_size=cfg.batch.micro_batch_size,
            )

        flops = count(getattr(e.module, "student", e.module))
        return flops + (count(self.teacher) / 3 if self.teacher is not None else 0.0)

    def _restore(self, point: ResumePoint | None, universal: bool) -> TrainState:
        """The counters (and engine, RNG and loader states) of ``point``, or fresh ones."""
        seed_all(self.cfg.seed + 1 + self.dist.rank)  # dropout / RTD sampling differ per rank
        if point is None:
            return TrainState()
        saved = self.ckpt.load(point, self.loader, universal, rng_seed=self.cfg.seed + 1)
        return TrainState.from_dict(saved)

    def _announce(self, point: ResumePoint | None, universal: bool) -> None:
        """RUN_DIR/config.toml, and what rank 0 says about the run before it starts."""
        cfg, d = self.cfg, self.dist
        if d.rank != 0:
            return
        say = lambda text: print(text, flush=True)  # noqa: E731
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(cfg.run_dir) / "config.toml", self.config_text)
        if self.tokenizer_note:
            say(self.tokenizer_note)
        if cfg.checkpoint.export_hf and not cfg.data.tokenizer_path().is_dir():
            say(
                f"warning: no tokenizer directory at {cfg.data.tokenizer_path()}: "
                "checkpoints will lack tokenizer files and the HF export is skipped "
                "(set data.tokenizer_dir)"
            )
        if point is not None:
            say(f"resuming from {point.tag_dir} (step {point.step})")
            if point.world_size != d.world_size:
                how = "universal checkpoint" if universal else "no partitioned state"
                say(
                    f"note: checkpoint written by {point.world_size} ranks, continuing on "
                    f"{d.world_size} ({how}); global batch {cfg.batch.global_batch_size}, "
                    f"gradient accumulation now {self.engine.grad_accum}"
                )
        if self.perf["compiled_modules"] or self.perf["predict_capacity"]:
            say(
                f"perf: {self.perf['compiled_modules']} modules compiled "
                f"(mode {cfg.perf.compile_mode}), MLM head capacity "
                f"{self.perf['predict_capacity'] or 'exact'} positions per row"
            )

    def _recorders(self, point: ResumePoint | None):
        """(sample audit, metrics logger, progress bar, step timer), trimmed on resume."""
        cfg, d = self.cfg, self.dist
        resume_step = self.state.step if point is not None else None
        if d.rank == 0 and cfg.logging.audit_samples:
            audit.prepare(cfg.run_dir, resume_step)
        self.engine.barrier()  # no rank appends to an audit file before rank 0 has trimmed it
        G = cfg.batch.global_batch_size
        return (
            audit.AuditLog(cfg.run_dir, d.rank, d.world_size, G, cfg.logging.audit_samples),
            MetricsLogger(cfg.run_dir, d.rank, cfg.logging.tensorboard, resume_step=resume_step),
            Progress(cfg.max_steps, self.state.step, d.rank, cfg.logging.progress),
            StepTimer(),
        )

    # -- during and after the run -------------------------------------------------------------
    def save(self, step: int) -> Path:
        path = self.ckpt.save(step, dataclasses.asdict(self.state), self.loader.state_dict())
        self.policy.saved()
        return path

    def close(self) -> None:
        self.engine.close()
        self.audit.close()
        self.progress.close()
        self.logger.close()
        self.loader.close()
        if self.val is not None:
            self.val.close()
