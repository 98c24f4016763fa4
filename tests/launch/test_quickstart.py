"""README command 1, ``launch/quickstart.sh``, end to end at a reduced size: sample corpus ->
tokenizer -> shards -> inspect -> 2-rank training -> resume -> export -> fill-mask, and the
validation loss check that ends it (the script exits non-zero when the loss does not fall)."""

import json
import subprocess

import pytest

from pretrain.testing import REPO, clean_env

pytestmark = pytest.mark.slow


def test_quickstart_runs_the_whole_chain_and_is_rerunnable(tmp_path):
    work = tmp_path / "qs"
    env = clean_env(K="60", VOCAB="1000", NGPU="2")
    cmd = ["bash", str(REPO / "launch/quickstart.sh"), str(work)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "verification ok" in out  # inspect --verify ran on the fresh shards
    assert "resuming from" in out and "step_00000060" in out  # the second call resumed
    rows = [json.loads(x) for x in (work / "run/metrics.jsonl").read_text().splitlines()]
    train_steps = sorted(r["step"] for r in rows if "loss" in r)
    assert train_steps[-1] == 120
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < 0.9 * evals[0]
    assert (work / "hf/model.safetensors").is_file() and "mask 1:" in out
    # Run twice: every finished step is skipped, training finds nothing left to do.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
