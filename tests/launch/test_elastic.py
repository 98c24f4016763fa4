"""``launch/elastic.sh`` (torchrun ``--nnodes=1:2``, c10d rendezvous) on localhost, with real
membership changes, each followed by a resume at the new world size:

1. node A (1 rank) trains alone;
2. node B joins: torchrun stops A's worker (SIGTERM -> checkpoint), both restart as a world
   of 2 and resume from that checkpoint (ZeRO-1 written by 1 rank: universal conversion);
3. node B dies (SIGKILL of its agent and worker): A's worker fails its next collective, A
   restarts alone and resumes from the newest checkpoint written by the 2 ranks;
4. SIGUSR1 to A's elastic.sh: its worker checkpoints and everything exits 0;
5. the job restarts with 2 ranks per node and runs to the end, across an epoch boundary.

The losses equal an uninterrupted one-process run (up to reduction order), and the per-step
sample audit shows every row of the epoch consumed exactly once.
"""

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from pretrain.checkpoint import complete_tags, read_marker
from pretrain.testing import REPO, clean_env, debug_config, free_port, losses
from pretrain.train import audit, train

pytestmark = pytest.mark.slow
STEPS = 60  # one epoch of these shards is 58 global batches of 16 rows of 32 tokens
COMMON = [
    "data.seq_len=32",
    "batch.global_batch_size=16",
    "batch.micro_batch_size=4",
    "zero.stage=1",
    f"schedule.total_steps={STEPS}",
    "checkpoint.every_steps=4",
    "checkpoint.export_hf=false",
    "eval.every_steps=0",
    "eval.at_end=false",
    "model.overrides.hidden_dropout_prob=0.0",
    "model.overrides.attention_probs_dropout_prob=0.0",
    "logging.every_steps=1",
    "logging.tensorboard=false",
    "logging.audit_samples=true",
]


class Job:
    """elastic.sh "nodes" of one job on this machine."""

    def __init__(self, base: Path, shards: Path):
        self.base, self.run = base, base / "run"
        self.args = [
            "--config",
            str(REPO / "configs/debug-roberta.toml"),
            f"data.shard_dir={shards}",
            f"run_dir={self.run}",
            *COMMON,
        ]
        self.env = clean_env(
            NNODES="1:2",
            RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
            RDZV_ID="elastic-test",
            RDZV_CONF="last_call_timeout=1",
            MAX_RESTARTS="2",
            OMP_NUM_THREADS="1",
        )
        self.logs: list[Path] = []

    def node(self, nproc: int, *extra: str) -> subprocess.Popen:
        log = self.base / f"node{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen(
            ["bash", str(REPO / "launch/elastic.sh"), *self.args, *extra],
            env={**self.env, "NPROC_PER_NODE": str(nproc)},
            stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )

    def wait_for(self, what: str, cond, procs, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                tails = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in self.logs)
                raise AssertionError(f"waiting for {what}:\n{tails}")
            time.sleep(0.05)

    def step(self) -> int:
        return max(losses(self.run), default=0) if (self.run / "metrics.jsonl").exists() else 0

    def checkpoint_worlds(self) -> list[tuple[int, int]]:
        root = self.run / "checkpoints"
        return [(read_marker(root / t)["step"], read_marker(root / t)["world_size"])
                for t in complete_tags(root)]  # fmt: skip


def _kill_tree(proc: subprocess.Popen) -> None:
    """A node failure: the agent and its workers die at once."""
    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def test_nodes_join_and_leave_and_training_resumes_at_each_world_size(shards, tmp_path_factory):
    job = Job(tmp_path_factory.mktemp("elastic"), shards)
    pace = ["max_steps=1000", "debug.step_delay_s=0.1"]  # stopped by the test, step 4
    a = job.node(1, *pace)
    job.wait_for("node A training", lambda: job.step() >= 3, [a])
    b = job.node(1, *pace)
    job.wait_for(
        "a checkpoint by 2 ranks", lambda: 2 in dict(job.checkpoint_worlds()).values(), [a, b]
    )
    _kill_tree(b)
    after = max(s for s, _ in job.checkpoint_worlds())
    job.wait_for(
        "a checkpoint by 1 rank after the failure",
        lambda: any(s > after and w == 1 for s, w in job.checkpoint_worlds()),
        [a],
    )
    a.send_signal(signal.SIGUSR1)
    assert a.wait(timeout=120) == 0, job.logs[0].read_text()[-3000:]
    stopped = job.step()
    assert stopped < STEPS - 4, "the run went too fast for the last phase"
    c = job.node(2, f"max_steps={STEPS}")  # the same node, restarted with 2 ranks
    assert c.wait(timeout=300) == 0, job.logs[-1].read_text()[-3000:]
    log_a, log_c = job.logs[0].read_text(), job.logs[-1].read_text()
    assert "stopped by SIGTERM" in log_a  # the worker checkpointed when B joined
    assert "continuing on 2 (universal checkpoint)" in log_a  # 1 -> 2 ranks
    assert "continuing on 1 (universal checkpoint)" in log_a  # 2 -> 1 after B died
    assert f"stopped by SIGUSR1 after step {stopped}" in log_a
    assert "continuing on 2 (universal checkpoint)" in log_c
    worlds = {w for _, w in job.checkpoint_worlds()}
    assert worlds == {2}  # the last ones (keep_last) are the final 2-rank run's
    ref = job.base / "one-process"
    train(debug_config("roberta", shards, ref, *COMMON, f"max_steps={STEPS}"))
    for key in ("loss", "grad_norm"):
        got, want = losses(job.run, key), losses(ref, key)
        assert list(got) == list(range(1, STEPS + 1))
        for step in want:
            assert abs(got[step] - want[step]) <= 1e-5 * max(1.0, abs(want[step])), (key, step)
    report = audit.check(job.run)
    assert report["ok"], json.dumps(report)[:3000]
    epoch0 = report["epochs"][0]
    assert epoch0["complete"] and epoch0["repeated"] == epoch0["missing"] == 0
    assert report["epochs"][1]["steps"] == STEPS - epoch0["steps"]
