"""Two gloo ranks on CPU: ZeRO 0-3 match one rank, exact resume after SIGTERM and after an
in-process stop, rank 0's clock agreed for time-based checkpoints, and a 2-rank ZeRO
checkpoint resumed on 1 rank through DeepSpeed's universal format.

Process start-up is the cost, so the module runs three launches in one fixture: the
DeepSpeed launcher twice (``deepspeed --num_gpus 2 launch/pretrain.sh``: SIGTERM, then
resume) and torchrun once for all the other two-rank runs (``python -m pretrain.testing``).
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pretrain.checkpoint import complete_tags
from pretrain.testing import REPO, clean_env, debug_config, losses, synthetic_shards
from pretrain.trainer import train

pytestmark = pytest.mark.slow
STEPS = 8
COMMON = [
    "data.seq_len=32",
    "batch.global_batch_size=16",
    "batch.micro_batch_size=4",
    f"max_steps={STEPS}",
    f"schedule.total_steps={STEPS}",
    "checkpoint.every_steps=3",
    "checkpoint.export_hf=false",
    "eval.every_steps=4",
    "eval.max_sequences=16",
    "model.overrides.hidden_dropout_prob=0.0",
    "model.overrides.attention_probs_dropout_prob=0.0",
    "logging.every_steps=1",
]
KEYS = ("loss", "mlm_acc", "grad_norm", "eval_loss")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(shards, run_dir, *extra):
    return [f"data.shard_dir={shards}", f"run_dir={run_dir}", *COMMON, *extra]


def _deepspeed(shards, run_dir, *extra):
    cmd = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        str(_port()),
        str(REPO / "launch/pretrain.sh"),
        "--config",
        str(REPO / "configs/debug-roberta.toml"),
        *_overrides(shards, run_dir, *extra),
    ]
    return subprocess.Popen(
        cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _sigterm_when_step_logged(proc, run_dir: Path, timeout: float = 240.0) -> None:
    """Send SIGTERM to both rank processes as soon as step 1 is in metrics.jsonl."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and losses(run_dir):
            ranks = [
                p
                for p in psutil.Process(proc.pid).children(recursive=True)
                if any(a.startswith("--local_rank=") for a in p.cmdline())
            ]
            assert len(ranks) == 2, [p.cmdline() for p in ranks]
            for p in ranks:
                p.terminate()
            return
        time.sleep(0.02)
    raise AssertionError(f"no step logged in time: {proc.communicate()[0][-3000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    shards = synthetic_shards(tmp_path_factory.getbasetemp() / "synthetic-shards")
    base = tmp_path_factory.mktemp("dist")
    # 1. Preemption: SIGTERM mid-run (schedule fixed at STEPS; max_steps far beyond it).
    proc = _deepspeed(shards, base / "sigterm", "max_steps=1000")
    _sigterm_when_step_logged(proc, base / "sigterm")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    first = max(losses(base / "sigterm"))
    tags_at_stop = complete_tags(base / "sigterm/checkpoints")
    # 2. The same command (with the intended max_steps) continues it.
    proc = _deepspeed(shards, base / "sigterm")
    out2 = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out2[-3000:]
    # 3. All other two-rank runs in one torchrun launch.
    cfg = str(REPO / "configs/debug-roberta.toml")
    spec = [
        {"config": cfg, "overrides": _overrides(shards, base / "zero0")},
        {
            "config": cfg,
            "overrides": _overrides(
                shards, base / "zero1", "zero.stage=1", "checkpoint.keep_last=3"
            ),
        },
        {
            "config": cfg,
            "overrides": _overrides(
                shards,
                base / "zero2",
                "zero.stage=2",
                "checkpoint.every_steps=0",
                "checkpoint.every_minutes=1e-9",
                "checkpoint.keep_last=2",
            ),
        },
        {"config": cfg, "overrides": _overrides(shards, base / "zero3", "zero.stage=3")},
        {
            "config": cfg,
            "overrides": _overrides(
                shards, base / "zero3-resumed", "zero.stage=3", "max_steps=3", "eval.at_end=false"
            ),
        },
        {"config": cfg, "overrides": _overrides(shards, base / "zero3-resumed", "zero.stage=3")},
    ]
    (base / "spec.json").write_text(json.dumps(spec))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pretrain.testing",
            str(base / "spec.json"),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    # 4. One rank, same global batch, in this process.
    train(debug_config("roberta", shards, base / "one-rank", *COMMON))
    return {
        "base": base,
        "shards": shards,
        "stopped_at": first,
        "tags_at_stop": tags_at_stop,
        "launcher_log": out + out2,
    }


def _assert_close(a: dict, b: dict, tol: float) -> None:
    assert list(a) == list(b)
    for step in a:
        assert abs(a[step] - b[step]) <= tol * max(1.0, abs(b[step])), (step, a[step], b[step])


@pytest.mark.parametrize("run", ["zero0", "zero1", "zero2", "zero3", "sigterm"])
def test_two_ranks_match_one_rank(runs, run):
    one, two = runs["base"] / "one-rank", runs["base"] / run
    assert sorted(losses(two)) == list(range(1, STEPS + 1))
    for key in KEYS:  # grad_norm too: Adam would hide a wrong 1/W gradient scale in the loss
        _assert_close(losses(two, key), losses(one, key), 1e-5)


def test_sigterm_saves_exits_zero_and_resume_is_bit_exact(runs):
    base = runs["base"]
    assert 1 <= runs["stopped_at"] < STEPS, "SIGTERM arrived too late to test a resume"
    assert f"after step {runs['stopped_at']}; checkpoint saved" in runs["launcher_log"]
    assert runs["tags_at_stop"][-1] == f"step_{runs['stopped_at']:08d}"
    for key in KEYS:
        assert losses(base / "sigterm", key) == losses(base / "zero0", key), key


def test_in_process_stop_and_resume_is_bit_exact_at_zero3(runs):
    base = runs["base"]
    for key in KEYS:
        assert losses(base / "zero3-resumed", key) == losses(base / "zero3", key), key


def test_time_based_checkpoints_are_agreed_by_all_ranks(runs):
    # every_minutes ~ 0 on rank 0's clock: a save after every step, none skipped or hung.
    tags = complete_tags(runs["base"] / "zero2/checkpoints")
    assert tags == [f"step_{STEPS - 1:08d}", f"step_{STEPS:08d}"]  # keep_last=2


def test_two_rank_zero_checkpoint_resumes_on_one_rank(runs, tmp_path):
    """World-size change: DeepSpeed's universal checkpoint, same global batch, same losses."""
    ckpt = runs["base"] / "zero1/checkpoints/step_00000003"
    s = train(
        debug_config("roberta", runs["shards"], tmp_path, *COMMON, "zero.stage=1"), resume=str(ckpt)
    )
    assert s.resumed_from.step == 3 and (ckpt / "universal").is_dir()
    got = losses(tmp_path)
    assert sorted(got) == list(range(4, STEPS + 1))
    _assert_close(got, {k: v for k, v in losses(runs["base"] / "zero1").items() if k > 3}, 1e-5)
