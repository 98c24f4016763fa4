"""What the training loop decides after each step, apart from how a run is built.

``Policies`` is an object the ``Session`` owns, built from the parts it uses (named in its
constructor, nothing else): the counters and the non-finite policy, the logging and
evaluation cadence, checkpoint timing agreed by all ranks, and the end-of-run summary and
export. ``TrainState`` holds the counters saved in every checkpoint; ``StopSignal`` turns
SIGTERM/SIGUSR1 into a clean stop.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path

import torch

from data_pipeline.common import atomic_write_text
from data_pipeline.loader import distinct_samples_lost
from pretrain.checkpoint import load_run_model
from pretrain.engine import AgreedError, on_rank0
from pretrain.export import export_model
from pretrain.metrics import mfu, peak_memory_bytes


class NonFiniteLossError(AgreedError):
    """Too many consecutive non-finite steps: every rank stops at the same step (the
    non-finite flag is agreed), rank 0 says why in one line."""


@dataclasses.dataclass
class TrainState:
    """Counters saved in every checkpoint (and its COMPLETE marker)."""

    step: int = 0
    samples: int = 0
    tokens: int = 0  # real (non-padding) tokens, global
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0  # steps skipped for a non-finite loss or gradient
    overflow_skips: int = 0  # fp16 loss-scale overflows (DeepSpeed skips them itself)

    @classmethod
    def from_dict(cls, saved: dict) -> TrainState:
        """The counters of a checkpoint's client state (unknown keys ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


class StopSignal:
    """SIGTERM/SIGUSR1 set a flag (preemption: finish the step, save, exit 0).

    One rank receiving it is enough: ``checkpoint_due`` agrees on it with an all-reduce.
    Installed before the session is built, so a signal during start-up (loading, a universal
    conversion) stops the run after its first step instead of killing it. It must reach the
    rank processes: srun forwards signals to its tasks, ``launch/elastic.sh`` forwards them
    to torchrun's workers, DeepSpeed's per-node launcher forwards SIGTERM and SIGINT only.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    @property
    def name(self) -> str:
        """The signal's name, or a note that another rank received it."""
        return signal.Signals(self.received).name if self.received else "a signal on another rank"

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class Policies:
    """The loop's decisions (see the module docstring)."""

    def __init__(
        self,
        cfg,
        engine,
        loader,
        objective,
        state: TrainState,
        recorders,
        *,
        has_val: bool,
        resumed: bool,
        flops_per_token: float,
        peak: float | None,
    ):
        """``recorders``: the session's ``logger``, ``progress`` and ``timer``; ``has_val``:
        there is a validation split; ``resumed``: the run continues from a checkpoint."""
        self.cfg, self.engine, self.loader, self.objective = cfg, engine, loader, objective
        self.state, self.rec = state, recorders
        self.rank = engine.rank
        self.has_val, self.resumed = has_val, resumed
        self.flops_per_token, self.peak = flops_per_token, peak
        self._last_save = time.monotonic()
        self._win_tokens, self._win_time, self._win_steps = 0, 0.0, 0

    # -- after every step ---------------------------------------------------------------------
    def account(self, step: int, result) -> None:
        """Counters after a step; stop after too many consecutive non-finite steps."""
        s, cfg = self.state, self.cfg
        s.step = step
        s.samples += cfg.batch.global_batch_size
        s.tokens += result.tokens
        self._win_tokens += result.tokens
        self._win_time += self.rec.timer.step_end()["step_time_s"]
        self._win_steps += 1
        if not result.applied and not result.nonfinite and self.engine.dtype == "fp16":
            s.overflow_skips += 1  # the loss scaler at work, not a divergence
        elif not result.applied:
            s.nonfinite_in_row += 1
            s.nonfinite_total += 1
            if self.rank == 0:
                print(
                    f"warning: step {step}: non-finite loss or gradient; step skipped "
                    f"({s.nonfinite_in_row} in a row)",
                    flush=True,
                )
            if s.nonfinite_in_row >= cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"step {step}: {s.nonfinite_in_row} consecutive steps with a non-finite "
                    f"loss or gradient (max_nonfinite_steps={cfg.max_nonfinite_steps}); stopping"
                )
        else:
            s.nonfinite_in_row = 0
        if cfg.debug.step_delay_s:
            time.sleep(cfg.debug.step_delay_s)

    def log(self, step: int, result) -> dict:
        sums, n = self.objective.take_sums()
        rec = self.objective.metrics(self.engine.all_reduce(sums), n)
        win = self.rec.timer.window()
        tps = self._win_tokens / self._win_time if self._win_time > 0 else 0.0
        # FLOPs count padded positions too: MFU from sequences/s, not real tokens/s.
        slots = self.cfg.batch.global_batch_size * self.cfg.data.seq_len * self._win_steps
        seq_tps = slots / self._win_time if self._win_time > 0 else 0.0
        rec.update(
            samples=self.state.samples,
            tokens=self.state.tokens,
            lr=result.lr,
            grad_norm=result.grad_norm,
            tokens_per_s=tps,
            mfu=mfu(seq_tps, self.flops_per_token, self.engine.world_size, self.peak),
            data_wait_frac=win["data_wait_frac"],
            peak_mem=peak_memory_bytes(self.engine.device),
            packing_efficiency=self.loader.stats()["packing_efficiency"],  # this rank's
            skipped_steps=self.state.nonfinite_total,
        )
        self._win_tokens, self._win_time, self._win_steps = 0, 0.0, 0
        self.rec.logger.log(step, rec)
        self.rec.progress.update(step, {"loss": rec["loss"], "lr": rec["lr"]})
        if self.rank == 0 and not self.rec.progress.active:
            task = self.objective.pair_task  # NSP / SOP accuracy beside MLM's
            pair = f" | {task}_acc {rec[f'{task}_acc']:.3f}" if task else ""
            if self.objective.sbo:  # SpanBERT's boundary predictions beside MLM's
                pair += f" | sbo_acc {rec['sbo_acc']:.3f}"
            # Distillation: each term (the total mixes them with their weights).
            pair += "".join(f" | {k} {v:.4f}" for k, v in rec.items() if k.startswith("distill_"))
            print(
                f"step {step}/{self.cfg.max_steps} | loss {rec['loss']:.4f} | mlm_acc "
                f"{rec['mlm_acc']:.3f}{pair} | lr {rec['lr']:.3g} | {tps:,.0f} tok/s",
                flush=True,
            )
        return rec

    def log_eval(self, step: int, rec: dict) -> None:
        self.rec.logger.log(step, rec)
        self.rec.timer.reset()  # evaluation time is not step time
        if self.rank == 0:
            acc = f" | eval_mlm_acc {rec['eval_mlm_acc']:.3f}"
            if any(k.startswith("eval_distill_") for k in rec):  # the student's own MLM loss
                acc = f" | eval_mlm_loss {rec['eval_mlm_loss']:.4f}{acc}"
            if task := self.objective.pair_task:
                acc += f" | eval_{task}_acc {rec[f'eval_{task}_acc']:.3f}"
            if self.objective.sbo:
                acc += f" | eval_sbo_acc {rec['eval_sbo_acc']:.3f}"
            # Validation attends as training does; say which, so numbers are not compared
            # across modes by mistake.
            mode = "within documents" if self.cfg.data.attend_within_document else "across rows"
            mode = "within each pair" if self.cfg.data.packing == "pairs" else mode
            print(
                f"step {step}/{self.cfg.max_steps} | eval_loss {rec['eval_loss']:.4f}{acc} "
                f"(attention {mode}, as trained)",
                flush=True,
            )

    # -- cadence ------------------------------------------------------------------------------
    def poisoned(self, step: int) -> bool:
        return step in self.cfg.debug.poison_loss_steps and self.rank == 0

    def log_due(self, step: int) -> bool:
        return step % self.cfg.logging.every_steps == 0 or step == self.cfg.max_steps

    def eval_due(self, step: int) -> bool:
        """At step 0 of a fresh run (eval.at_start), every eval.every_steps, at max_steps."""
        ev = self.cfg.eval
        if not self.has_val:
            return False
        if step == 0:
            return ev.at_start and not self.resumed  # never again after a resume
        return bool(
            (ev.every_steps and step % ev.every_steps == 0)
            or (ev.at_end and step == self.cfg.max_steps)
        )

    def checkpoint_due(self, step: int, stop: StopSignal) -> tuple[bool, bool]:
        """(save now, preempted): one all-reduce so every rank agrees (rank 0's clock)."""
        c = self.cfg.checkpoint
        minutes = (time.monotonic() - self._last_save) / 60.0
        time_due = self.rank == 0 and c.every_minutes > 0 and minutes >= c.every_minutes
        flags = self.engine.all_reduce(
            torch.tensor([float(stop.received is not None), float(time_due)]), op="max"
        )
        preempted, time_due = bool(flags[0]), bool(flags[1])
        by_step = c.every_steps > 0 and step % c.every_steps == 0
        return preempted or time_due or by_step or step == self.cfg.max_steps, preempted

    def saved(self) -> None:
        """A checkpoint was just written: the clock of time-based saves restarts."""
        self._last_save = time.monotonic()
        self.rec.timer.reset()

    # -- the end ------------------------------------------------------------------------------
    def nothing_to_train(self) -> bool:
        """A re-run of a finished command: say so, export if that is missing, and stop."""
        if self.state.step < self.cfg.max_steps:
            return False
        if self.rank == 0:
            print(
                f"already at step {self.state.step} (max_steps={self.cfg.max_steps}): "
                "nothing to train",
                flush=True,
            )
        self.finish(export=not (Path(self.cfg.run_dir) / "hf" / "config.json").is_file())
        return True

    def finish(self, export: bool = True, preempted_by: str | None = None) -> None:
        """RUN_DIR/summary.json (counters, every rank's data statistics: nothing dropped
        goes uncounted) and, if ``export``, the HF export of the final model (rank 0)."""
        if preempted_by is not None:
            export = False
            if self.rank == 0:
                print(
                    f"stopped by {preempted_by} after step {self.state.step}; checkpoint "
                    "saved; resume with the same command",
                    flush=True,
                )
        data = self.engine.all_gather_object(self.loader.stats())
        if self.rank == 0:
            lost = distinct_samples_lost(data)  # a shard every rank skipped counts once
            summary = {**dataclasses.asdict(self.state), "samples_lost": lost, "data": data}
            atomic_write_text(
                Path(self.cfg.run_dir) / "summary.json", json.dumps(summary, indent=1) + "\n"
            )
            if lost or self.state.nonfinite_total:
                print(
                    f"summary: {lost} samples lost to bad data, {self.state.nonfinite_total} "
                    "steps skipped (non-finite); details in summary.json",
                    flush=True,
                )
        if export and self.cfg.checkpoint.export_hf:
            # Rank 0 exports while the others wait (long timeout); its errors reach every rank.
            on_rank0(self._export_hf, "the HF export")
        self.engine.barrier()

    def _export_hf(self) -> None:
        model, tok = load_run_model(self.cfg.run_dir)
        try:
            export_model(model, tok, Path(self.cfg.run_dir) / "hf")
        except ValueError as e:  # e.g. shards without a tokenizer directory
            print(f"warning: HF export skipped: {e}", flush=True)
