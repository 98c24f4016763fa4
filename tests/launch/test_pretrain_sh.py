"""``launch/pretrain.sh``: the same file runs under bash and as DeepSpeed's ``python -u SCRIPT
--local_rank=N ARGS``. (Real two-rank training through it: tests/pretrain/test_distributed.py.)"""

import subprocess
import sys

import pytest

from pretrain.testing import REPO, clean_env

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
