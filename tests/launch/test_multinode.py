"""Two "nodes" on localhost through DeepSpeed's launcher with a hostfile (``--no_ssh
--node_rank N`` started once per node), a rank killed with SIGKILL mid-run, and the restart.

One scenario, so that DeepSpeed's start-up is paid twice only: the two-node run is killed
(rank 1, after the step-3 checkpoint); both nodes' launchers must exit within a bounded time
with a failure; the same command restarted on both nodes resumes from the last complete
checkpoint and ends with the losses of an uninterrupted one-process run.
"""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pretrain.checkpoint import complete_tags
from pretrain.testing import REPO, clean_env, debug_config, free_port, losses, short_run
from pretrain.train import train

pytestmark = pytest.mark.slow
STEPS = 8
COMMON = short_run(STEPS, checkpoint_every=3)  # commands append their own max_steps
KILL_DEADLINE_S = 60


def _nodes(hostfile: Path, port: int, overrides: list[str]) -> list[subprocess.Popen]:
    """Both nodes' ``deepspeed`` commands, node 1 first (rank 0 hosts the store)."""
    procs = []
    for node in (1, 0):
        cmd = [
            str(Path(sys.executable).parent / "deepspeed"),
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--node_rank",
            str(node),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(REPO / "launch/pretrain.sh"),
            "--config",
            str(REPO / "configs/debug-roberta.toml"),
            *overrides,
        ]
        env = clean_env(OMP_NUM_THREADS="1")  # two "nodes" share this machine's cores
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


def _rank_process(launcher: subprocess.Popen) -> psutil.Process:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p in psutil.Process(launcher.pid).children(recursive=True):
            if any(a.startswith("--local_rank=") for a in p.cmdline()):
                return p
        time.sleep(0.05)
    raise AssertionError("no rank process started")


def test_hostfile_example_parses():
    from deepspeed.launcher.runner import fetch_hostfile

    assert list(fetch_hostfile(str(REPO / "launch/hostfile.example")).values()) == [8, 8]


def test_two_nodes_a_killed_rank_ends_the_job_and_the_restart_resumes(shards, tmp_path_factory):
    base = tmp_path_factory.mktemp("multinode")
    hostfile = base / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    run = base / "run"
    overrides = [f"data.shard_dir={shards}", f"run_dir={run}", *COMMON]
    # 1. Both nodes train (max_steps far away, a slow pace); kill rank 1 after step 4.
    procs = _nodes(hostfile, free_port(), [*overrides, "max_steps=1000", "debug.step_delay_s=0.2"])
    victim = _rank_process(procs[0])
    deadline = time.monotonic() + 240
    while not (complete_tags(run / "checkpoints") and max(losses(run), default=0) >= 4):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    outs = [p.communicate(timeout=KILL_DEADLINE_S)[0] for p in procs]
    took = time.monotonic() - killed_at
    assert took < KILL_DEADLINE_S
    assert all(p.returncode != 0 for p in procs), [o[-2000:] for o in outs]
    assert re.search(r"Connection (closed|reset) by peer", outs[1])  # rank 0 failed at once
    last = complete_tags(run / "checkpoints")[-1]
    # 2. The same command on both nodes (now with the intended max_steps) resumes.
    procs = _nodes(hostfile, free_port(), [*overrides, f"max_steps={STEPS}"])
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outs]
    assert re.search(rf"resuming from \S+/{last} ", outs[1]), outs[1][-3000:]
    ref = base / "one-process"
    train(debug_config("roberta", shards, ref, *COMMON, f"max_steps={STEPS}"))
    for key in ("loss", "grad_norm", "eval_loss"):
        got, want = losses(run, key), losses(ref, key)
        assert list(got) == list(want)
        for step in want:
            assert abs(got[step] - want[step]) <= 1e-5 * max(1.0, abs(want[step])), (key, step)
