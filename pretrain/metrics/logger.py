"""Run metrics: ``metrics.jsonl`` + TensorBoard, a progress bar, step timing and memory.

Only rank 0 writes anything; every other rank gets objects with the same interface that
do nothing, so the trainer never branches on rank around logging.

- ``MetricsLogger`` appends one JSON object per logged step to ``RUN_DIR/metrics.jsonl``
  (``"step"`` first) and mirrors the numbers into ``RUN_DIR/tensorboard/``. On resume it
  first drops every line past the checkpoint's step, so a resumed run never shows a step
  twice, and TensorBoard purges the same steps.
- ``Progress``: a tqdm bar with ETA on rank 0 in an interactive terminal.
- ``StepTimer``: wall time per step and the fraction spent blocked on the data loader.
- ``peak_memory_bytes``: CUDA peak allocation, or the process's peak RSS on CPU.

FLOP counting, device peaks and MFU live in ``flops``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], int]:
    """(records, number of unreadable lines skipped) of a ``metrics.jsonl`` file.

    A run killed mid-write leaves a torn last line; it and any other line that is not a
    JSON object with an integer ``step`` are skipped and counted, never fatal.
    """
    records, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def _plain(value):
    """A JSON/TensorBoard-friendly Python number from a float/int/bool/tensor/numpy scalar."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # torch / numpy scalars: one host sync, done by the caller's choice
        return value.item()
    raise TypeError(f"metric value of type {type(value).__name__} is not a number")


class MetricsLogger:
    """Writes ``RUN_DIR/metrics.jsonl`` and ``RUN_DIR/tensorboard/`` (rank 0 only).

    ``resume_step``: the step of the checkpoint being resumed. Lines with a larger step
    are removed from ``metrics.jsonl`` (the file is rewritten atomically) and TensorBoard
    is told to purge events from ``resume_step + 1`` on. With ``resume_step=None`` (a
    fresh run) an existing ``metrics.jsonl`` is not overwritten but moved aside to
    ``metrics.jsonl.prev-N``, so no earlier run's numbers are lost.

    Values that are ``None`` are written as JSON ``null`` and skipped in TensorBoard;
    non-finite floats are written as ``NaN``/``Infinity`` (Python's ``json`` reads them)
    because a diverged loss must stay visible.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        rank: int,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = rank == 0
        self.dropped_lines = 0  # unreadable lines removed while truncating for a resume
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self._move_aside()
        else:
            self._truncate(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            # Imported lazily: it pulls in tensorboard (~2 s), which non-zero ranks never need.
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge)

    def _move_aside(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        n = 1
        while self.path.with_name(f"{METRICS_FILE}.prev-{n}").exists():
            n += 1
        target = self.path.with_name(f"{METRICS_FILE}.prev-{n}")
        os.replace(self.path, target)
        warnings.warn(
            f"{self.path}: existing metrics of an earlier run moved to {target.name}", stacklevel=3
        )

    def _truncate(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        records, self.dropped_lines = read_metrics(self.path)
        kept = [r for r in records if r["step"] <= resume_step]
        if self.dropped_lines:
            warnings.warn(
                f"{self.path}: dropped {self.dropped_lines} unreadable line(s) on resume",
                stacklevel=3,
            )
        if len(kept) == len(records) and not self.dropped_lines:
            return
        tmp = self.path.with_name(METRICS_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in kept:
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: a crash here leaves the old or the new file, whole

    def log(self, step: int, metrics: dict[str, float | int | None]) -> None:
        """Append one record ``{"step": step, **metrics}``; no-op on non-zero ranks."""
        if not self.enabled:
            return
        if "step" in metrics:
            raise ValueError("metrics must not contain 'step'; pass it as the step argument")
        record = {"step": int(step)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        # One write + flush per record: a crash loses at most the line being written.
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):  # None/str: not scalars
                    self._tb.add_scalar(key, float(value), global_step=int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Progress:
    """Progress bar with ETA (tqdm) on rank 0; a no-op elsewhere.

    Also a no-op when ``enabled`` is false or stderr is not a terminal (batch jobs,
    CI logs): carriage-return redraws would only fill log files, and ``metrics.jsonl``
    already records everything the bar shows.
    """

    def __init__(self, total: int, initial: int, rank: int, enabled: bool = True):
        self._bar = None
        if rank != 0 or not enabled or not _interactive(sys.stderr):
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, step: int, postfix: dict | None = None) -> None:
        """Move the bar to ``step`` (an absolute step, not an increment)."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _interactive(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


class StepTimer:
    """Wall time per optimizer step and the part of it spent waiting for data.

    Usage (any number of waits per step, e.g. one per accumulated micro-batch)::

        timer = StepTimer()
        for step in ...:
            for _ in range(accumulation):
                timer.data_start(); batch = next(loader); timer.data_end()
                ...
            stats = timer.step_end()   # this step: step_time_s, data_wait_s, data_wait_frac
        window = timer.window()        # since the last window(): mean step time, wait fraction

    The first step's time runs from construction (or ``reset()``). On GPU, call it after
    something that synchronises (e.g. reading the loss), otherwise the host-side time
    only measures kernel launches. ``clock`` is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Restart timing now (e.g. after evaluation or checkpointing, which are not steps)."""
        self._step_start = self._clock()
        self._wait = 0.0
        self._wait_start: float | None = None
        self._win_steps, self._win_time, self._win_wait = 0, 0.0, 0.0

    def data_start(self) -> None:
        self._wait_start = self._clock()

    def data_end(self) -> None:
        if self._wait_start is None:
            raise RuntimeError("StepTimer.data_end() without data_start()")
        self._wait += self._clock() - self._wait_start
        self._wait_start = None

    def step_end(self) -> dict[str, float]:
        now = self._clock()
        elapsed = now - self._step_start
        stats = {
            "step_time_s": elapsed,
            "data_wait_s": self._wait,
            "data_wait_frac": self._wait / elapsed if elapsed > 0 else 0.0,
        }
        self._win_steps += 1
        self._win_time += elapsed
        self._win_wait += self._wait
        self._step_start, self._wait = now, 0.0
        return stats

    def window(self) -> dict[str, float]:
        """Means over the steps since the last call (the logging interval), then restart it."""
        steps, total, wait = self._win_steps, self._win_time, self._win_wait
        self._win_steps, self._win_time, self._win_wait = 0, 0.0, 0.0
        return {
            "steps": steps,
            "step_time_s": total / steps if steps else math.nan,
            "data_wait_frac": wait / total if total > 0 else 0.0,
        }


def peak_memory_bytes(device) -> int | None:
    """Peak memory of this process on ``device``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the caching allocator's
    reserve; reset it with ``torch.cuda.reset_peak_memory_stats``). CPU: the process's
    peak resident set size (``ru_maxrss``; includes Python and libraries). ``None`` where
    neither is available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024)
