"""``launch/slurm/pretrain.sbatch`` without Slurm: its logic runs on localhost with fake
SLURM_* variables and stub ``srun``/``scontrol`` on PATH (the stub srun starts SLURM_NTASKS
local tasks with per-task SLURM variables and forwards signals, as srun does).

Checked: the command lines; SIGUSR1 to the batch shell (``--signal=B:USR1@...``) ->
forwarded to the ranks -> checkpoint -> exit 0 -> ``scontrol requeue``; the requeued job
resumes and finishes with the losses of an uninterrupted run; failure requeues are bounded.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.checkpoint import complete_tags
from pretrain.testing import REPO, clean_env, debug_config, free_port, losses
from pretrain.train import train

SCRIPT = REPO / "launch/slurm/pretrain.sbatch"
STEPS = 8
COMMON = [
    "data.seq_len=32",
    "batch.global_batch_size=16",
    "batch.micro_batch_size=4",
    f"schedule.total_steps={STEPS}",
    "checkpoint.every_steps=3",
    "checkpoint.export_hf=false",
    "eval.at_end=false",
    "model.overrides.hidden_dropout_prob=0.0",
    "model.overrides.attention_probs_dropout_prob=0.0",
    "logging.every_steps=1",
]

SRUN = r"""#!/usr/bin/env bash
# stub srun: SLURM_NTASKS local tasks with the variables srun gives each task
echo "srun $*" >> "$STUB_LOG"
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done   # options (all --opt=value)
n="${SLURM_NTASKS:-1}"
pids=()
for ((i = 0; i < n; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 SLURM_STEP_ID=0 \
    SLURM_STEP_NUM_TASKS=$n SLURM_STEP_TASKS_PER_NODE=$n \
    SLURM_STEP_NODELIST="$SLURM_JOB_NODELIST" "$@" &
    pids+=($!)
done
forward() { echo "srun forwards $1" >> "$STUB_LOG"; kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
status=0
for p in "${pids[@]}"; do
    while :; do
        wait "$p" && s=0 || s=$?
        kill -0 "$p" 2>/dev/null || break
    done
    if [ "$s" -gt "$status" ]; then status=$s; fi
done
exit "$status"
"""

SCONTROL = r"""#!/usr/bin/env bash
echo "scontrol $*" >> "$STUB_LOG"
if [ "$1 $2" = "show hostnames" ]; then echo "$3" | tr ',' '\n'; fi
"""


@pytest.fixture
def slurm(tmp_path):
    """(environment, stub log) of a fake 2-task, 1-node job."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    log = tmp_path / "stub.log"
    env = clean_env(
        PATH=f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="localhost",
        SLURM_NNODES="1",
        SLURM_NTASKS="2",
        SLURM_SUBMIT_DIR=str(REPO),
        STUB_LOG=str(log),
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
    )
    return env, log


def _sbatch(env, *args, **kwargs):
    return subprocess.Popen(
        ["bash", str(SCRIPT), *map(str, args)],
        cwd=env["SLURM_SUBMIT_DIR"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_usr1_checkpoints_requeues_and_the_requeued_job_resumes(
    shards, slurm, tmp_path, tmp_path_factory
):
    env, log = slurm
    run = tmp_path / "run"
    args = ["--config", REPO / "configs/debug-roberta.toml", f"data.shard_dir={shards}"]
    args += [f"run_dir={run}", *COMMON]
    proc = _sbatch(env, *args, "max_steps=1000", "debug.step_delay_s=0.1")
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or not losses(run):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # to the batch shell only, as --signal=B: does
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    stopped = max(losses(run))
    assert 1 <= stopped < STEPS, "the signal arrived too late to test a resume"
    assert f"stopped by SIGUSR1 after step {stopped}; checkpoint saved" in out
    assert complete_tags(run / "checkpoints")[-1] == f"step_{stopped:08d}"
    calls = log.read_text().splitlines()
    assert calls[0] == "scontrol show hostnames localhost"
    srun = [c for c in calls if c.startswith("srun --")][0]
    assert srun.startswith("srun --kill-on-bad-exit=1 --ntasks=2 ")
    assert " -u -m pretrain train --config " in srun and "max_steps=1000" in srun
    assert calls[-2:] == ["srun forwards USR1", "scontrol requeue 4242"]
    # The requeued job: same script, same arguments (here with the intended max_steps).
    env = {**env, "SLURM_RESTART_COUNT": "1"}
    proc = _sbatch(env, *args, f"max_steps={STEPS}")
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from {run}/checkpoints/step_{stopped:08d}" in out
    assert log.read_text().count("scontrol requeue") == 1  # finished: not requeued again
    ref = tmp_path / "ref"
    train(debug_config("roberta", shards, ref, *COMMON, f"max_steps={STEPS}"))
    got, want = losses(run), losses(ref)
    assert list(got) == list(range(1, STEPS + 1))
    for step in want:  # 2 ranks vs 1: only the reduction order differs
        assert abs(got[step] - want[step]) <= 1e-5 * abs(want[step]), step


def test_failures_requeue_only_max_failure_requeues_times(slurm, tmp_path):
    env, log = slurm
    fake = tmp_path / "fake-python"
    fake.write_text("#!/usr/bin/env bash\nexit 3\n")
    fake.chmod(0o755)
    env = {**env, "PYTHON": str(fake), "MAX_FAILURE_REQUEUES": "1"}
    first = _sbatch(env, "--config", "x.toml")
    assert first.communicate(timeout=60)[0] and first.returncode == 0
    assert log.read_text().splitlines()[-1] == "scontrol requeue 4242"
    again = _sbatch({**env, "SLURM_RESTART_COUNT": "1"}, "--config", "x.toml")
    out = again.communicate(timeout=60)[0]
    assert again.returncode == 3, out
    assert log.read_text().count("scontrol requeue") == 1


def test_the_batch_script_asks_for_the_signal_and_requeue_and_parses():
    text = SCRIPT.read_text()
    assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text
    assert "set -euo pipefail" in text
    for script in (SCRIPT, REPO / "launch/elastic.sh", REPO / "launch/pretrain.sh"):
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, (script, res.stderr)
