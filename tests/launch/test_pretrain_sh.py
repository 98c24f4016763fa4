"""``launch/pretrain.sh``: the same file runs under bash and as DeepSpeed's ``python -u SCRIPT
--local_rank=N ARGS``. (Real two-rank training through it: tests/pretrain/test_distributed.py.)"""

import subprocess
import sys

import pytest

from pretrain.testing import REPO, clean_env, deepspeed_command, losses

SCRIPT = REPO / "launch" / "pretrain.sh"
ARGS = [
    "--config",
    str(REPO / "configs" / "debug-roberta.toml"),
    "--dry-run",
    "batch.micro_batch_size=4",
]


@pytest.mark.parametrize(
    "argv",
    [["bash", str(SCRIPT)], [sys.executable, "-u", str(SCRIPT), "--local_rank=0"]],
    ids=["bash", "deepspeed-launcher-form"],
)
def test_both_interpreters_reach_the_train_command(argv, tmp_path):
    env = clean_env(PATH=f"{sys.executable.rsplit('/', 1)[0]}:{clean_env()['PATH']}")
    res = subprocess.run(
        [*argv, *ARGS], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "gradient accumulation = 4  (16 = 1 x 4 x 4)" in res.stdout


def test_a_config_error_is_one_line_and_status_2(tmp_path):
    res = subprocess.run(
        ["bash", str(SCRIPT), *ARGS, "optimizer.lrr=1"],
        cwd=tmp_path,
        env=clean_env(PATH=f"{sys.executable.rsplit('/', 1)[0]}:{clean_env()['PATH']}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert (
        res.stderr.strip().splitlines()[-1] == "error: optimizer.lrr: unknown key; did you mean lr?"
    )


def test_the_script_is_strict_bash_and_parses_as_both_languages():
    text = SCRIPT.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and lines[1] == "''':'"
    bash_part = text[: text.index('exec "$PYTHON" -m pretrain train "$@"')]
    assert "set -euo pipefail" in bash_part
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr  # the Python part is one quoted word for bash
    compile(text, str(SCRIPT), "exec")


@pytest.mark.slow
@pytest.mark.parametrize("arch,stage", [("bert", 1), ("albert", 3)])
def test_pair_models_train_through_the_launcher(arch, stage, shards, tmp_path):
    """``deepspeed --num_gpus 2 launch/pretrain.sh --config configs/debug-<arch>.toml``:
    BERT (NSP) and ALBERT (SOP, one set of layer parameters used by every layer, at ZeRO-3)
    train on sentence pairs, 2 ranks, and export."""
    task = "sop" if arch == "albert" else "nsp"
    cmd = deepspeed_command(
        shards,
        tmp_path / "run",
        "max_steps=3",
        "data.seq_len=32",
        "batch.global_batch_size=8",
        "batch.micro_batch_size=2",
        f"zero.stage={stage}",
        "eval.every_steps=0",
        "eval.max_sequences=8",
        arch=arch,
    )
    res = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]
    assert len(losses(tmp_path / "run", f"{task}_acc")) == 3
    assert len(losses(tmp_path / "run", f"eval_{task}_acc")) == 1  # eval.at_end
