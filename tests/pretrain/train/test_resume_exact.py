"""Exact resume with DataLoader workers: for ``num_workers`` 0, 1 and 2, the per-step training
losses and the validation losses of (a) an unbroken run, (b) a run stopped and resumed and
(c) a run killed with SIGKILL (its whole process group, workers included) and resumed are
bit-identical, and identical across worker counts. Dropout is on, so any shift of the
training process's RNG (e.g. a DataLoader drawing its worker seed from it) would show."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from pretrain.testing import (
    clean_env,
    debug_config,
    losses,
    train_command,
)
from pretrain.train import train

STEPS = 8
RUN = [
    f"max_steps={STEPS}",
    "data.seq_len=32",
    "batch.global_batch_size=8",
    "batch.micro_batch_size=4",  # 2 micro-batches a step: workers interleave them
    "checkpoint.every_steps=2",
    "checkpoint.export_hf=false",
    "eval.every_steps=3",  # the validation loader starts its own workers at every eval
    "eval.max_sequences=16",
    "eval.at_end=false",
    f"schedule.total_steps={STEPS}",  # a run stopped early keeps the same schedule
]


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """The unbroken run without workers: its training and validation losses."""
    run = tmp_path_factory.mktemp("reference")
    train(debug_config("roberta", shards, run, *RUN, "data.num_workers=0"))
    return record(run)


def record(run) -> dict:
    return {"loss": losses(run), "eval": losses(run, "eval_loss")}


def config(shards, run, workers: int, *extra: str):
    return debug_config("roberta", shards, run, *RUN, f"data.num_workers={workers}", *extra)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_unbroken_and_stopped_runs_equal_the_reference(shards, reference, workers, tmp_path):
    assert sorted(reference["loss"]) == list(range(1, STEPS + 1))
    assert sorted(reference["eval"]) == [3, 6]
    unbroken = tmp_path / "unbroken"
    train(config(shards, unbroken, workers))
    assert record(unbroken) == reference  # identical for any worker count
    stopped = tmp_path / "stopped"
    train(config(shards, stopped, workers, "max_steps=5"))  # stops after the step-4 save
    resumed = train(config(shards, stopped, workers))
    assert resumed.resumed_from.step == 5  # max_steps always saves
    assert record(stopped) == reference


def _wait_for_step(metrics, step: int, proc, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if metrics.is_file():
            steps = [json.loads(ln).get("step", 0) for ln in metrics.read_text().splitlines()[:-1]]
            if max(steps, default=0) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_run_killed_with_sigkill_resumes_bit_identically(shards, reference, workers, tmp_path):
    run = tmp_path / "killed"
    cmd = train_command(
        shards,
        run,
        *RUN,
        f"data.num_workers={workers}",
        "debug.step_delay_s=0.4",  # time to land the kill between steps 5 and 7
    )
    proc = subprocess.Popen(
        cmd,
        env=clean_env(),
        start_new_session=True,  # its own process group: the kill takes the workers too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_step(run / "metrics.jsonl", 5 + workers % 2, proc)  # after a checkpoint
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    resumed = train(config(shards, run, workers))
    assert resumed.resumed_from is not None and 4 <= resumed.resumed_from.step < STEPS
    assert record(run) == reference
