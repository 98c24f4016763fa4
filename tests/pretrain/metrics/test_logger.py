"""metrics.jsonl / TensorBoard logging, resume truncation, progress bar, step timer, memory."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from pretrain import metrics
from pretrain.metrics import MetricsLogger, Progress, StepTimer, peak_memory_bytes, read_metrics


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return {}
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_jsonl_one_object_per_call_step_first(tmp_path):
    log = MetricsLogger(tmp_path, rank=0, tensorboard=False)
    log.log(1, {"loss": 2.5, "lr": 1e-4, "samples": 8, "eval_loss": None})
    log.log(2, {"loss": torch.tensor(2.25), "mlm_acc": 0.125, "lr": 2e-4, "samples": 16})
    log.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2
    first, second = _lines(tmp_path / "metrics.jsonl")
    assert list(first) == ["step", "loss", "lr", "samples", "eval_loss"]
    assert first == {"step": 1, "loss": 2.5, "lr": 1e-4, "samples": 8, "eval_loss": None}
    assert second["step"] == 2 and second["loss"] == 2.25 and isinstance(second["samples"], int)


def test_nan_loss_is_kept_visible(tmp_path):
    with MetricsLogger(tmp_path, rank=0, tensorboard=False) as log:
        log.log(7, {"loss": float("nan")})
    (rec,) = _lines(tmp_path / "metrics.jsonl")
    assert math.isnan(rec["loss"])


def test_step_key_in_metrics_is_refused(tmp_path):
    with MetricsLogger(tmp_path, rank=0, tensorboard=False) as log:
        with pytest.raises(ValueError, match="step"):
            log.log(1, {"step": 3, "loss": 1.0})


def _write_run(path, steps, torn=True):
    lines = [json.dumps({"step": s, "loss": 10.0 - s}) for s in steps]
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"step": 99, "loss": 1.'  # killed mid-write
    path.write_text(text)


def test_resume_drops_later_steps_and_torn_last_line(tmp_path):
    _write_run(tmp_path / "metrics.jsonl", range(1, 7))
    with pytest.warns(UserWarning, match="1 unreadable"):
        log = MetricsLogger(tmp_path, rank=0, tensorboard=False, resume_step=4)
    assert log.dropped_lines == 1
    log.log(5, {"loss": 0.5})
    log.close()
    recs = _lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[-1]["loss"] == 0.5  # the resumed run's value, not the old one
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_resume_past_end_keeps_everything_readable(tmp_path):
    _write_run(tmp_path / "metrics.jsonl", range(1, 4))
    with pytest.warns(UserWarning):
        MetricsLogger(tmp_path, rank=0, tensorboard=False, resume_step=100).close()
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_resume_without_file_and_untouched_file(tmp_path):
    MetricsLogger(tmp_path / "new", rank=0, tensorboard=False, resume_step=10).close()
    assert (tmp_path / "new" / "metrics.jsonl").read_text() == ""
    _write_run(tmp_path / "metrics.jsonl", range(1, 4), torn=False)
    before = (tmp_path / "metrics.jsonl").read_text()
    MetricsLogger(tmp_path, rank=0, tensorboard=False, resume_step=3).close()
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_fresh_run_moves_old_metrics_aside(tmp_path):
    _write_run(tmp_path / "metrics.jsonl", range(1, 4), torn=False)
    old = (tmp_path / "metrics.jsonl").read_text()
    for expected in ("metrics.jsonl.prev-1", "metrics.jsonl.prev-2"):
        with pytest.warns(UserWarning, match="moved"):
            log = MetricsLogger(tmp_path, rank=0, tensorboard=False)
        log.log(1, {"loss": 3.0})
        log.close()
        assert (tmp_path / expected).is_file()
    assert (tmp_path / "metrics.jsonl.prev-1").read_text() == old
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1]


def test_read_metrics_counts_bad_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1, "loss": 1}\n[1, 2]\n\n{"loss": 3}\n{"step": 2}\n{"st')
    records, bad = read_metrics(p)
    assert [r["step"] for r in records] == [1, 2] and bad == 3


def test_tensorboard_scalars_and_resume_purge(tmp_path):
    log = MetricsLogger(tmp_path, rank=0)
    for step in range(1, 6):
        log.log(step, {"loss": float(10 - step), "eval_loss": None if step < 5 else 4.5})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert _scalars(tmp_path, "loss") == {s: float(10 - s) for s in range(1, 6)}
    assert _scalars(tmp_path, "eval_loss") == {5: 4.5}  # None values are skipped

    # Resume from step 3: TensorBoard must forget the first run's steps 4 and 5.
    log = MetricsLogger(tmp_path, rank=0, resume_step=3)
    log.log(4, {"loss": 0.25})
    log.close()
    assert _scalars(tmp_path, "loss") == {1: 9.0, 2: 8.0, 3: 7.0, 4: 0.25}


def test_nonzero_rank_writes_nothing(tmp_path):
    run = tmp_path / "run"
    log = MetricsLogger(run, rank=1, resume_step=3)
    log.log(1, {"loss": 1.0})
    log.close()
    assert not run.exists()


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_rank0_tty_only(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not Progress(100, 0, rank=0).active  # not a terminal: no carriage-return spam
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    monkeypatch.delenv("TERM", raising=False)
    assert not Progress(100, 0, rank=1).active
    assert not Progress(100, 0, rank=0, enabled=False).active
    bar = Progress(100, 10, rank=0)
    assert bar.active
    bar.update(40, {"loss": 1.234567, "lr": 3e-4})
    bar.update(42)
    bar.close()
    out = tty.getvalue()
    assert "42/100" in out and "loss=1.235" in out


def test_step_timer_fractions():
    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])
    # step 1: two micro-batches each wait 0.5 s; the step takes 4 s in all
    for _ in range(2):
        timer.data_start()
        now[0] += 0.5
        timer.data_end()
        now[0] += 1.5
    s1 = timer.step_end()
    assert s1 == {"step_time_s": 4.0, "data_wait_s": 1.0, "data_wait_frac": 0.25}
    # step 2: 3 s waiting of 4 s
    timer.data_start()
    now[0] += 3.0
    timer.data_end()
    now[0] += 1.0
    assert timer.step_end()["data_wait_frac"] == 0.75
    win = timer.window()
    assert win == {"steps": 2, "step_time_s": 4.0, "data_wait_frac": 0.5}
    assert timer.window()["steps"] == 0  # the window restarted
    with pytest.raises(RuntimeError):
        timer.data_end()


def test_step_timer_reset_excludes_pauses():
    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])
    now[0] += 100.0  # e.g. evaluation or a checkpoint save
    timer.reset()
    now[0] += 2.0
    assert timer.step_end()["step_time_s"] == 2.0


def test_peak_memory_cpu_and_cuda(monkeypatch):
    torch.ones(1 << 20)  # at least a few MiB have been resident
    cpu = peak_memory_bytes("cpu")
    assert cpu is not None and cpu > 4 * 2**20
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123456789)
    assert peak_memory_bytes(torch.device("cuda", 0)) == 123456789
    assert peak_memory_bytes("meta") is None


def test_reexports_for_the_trainer():
    for name in ("model_flops_per_token", "peak_flops_per_second", "mfu"):
        assert callable(getattr(metrics, name))
