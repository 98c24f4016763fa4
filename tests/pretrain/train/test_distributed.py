"""Two gloo ranks on CPU: ZeRO 0-3 match one rank, under every launcher (the DeepSpeed
launcher, torchrun, ``mpirun``); exact resume after SIGTERM and after an in-process stop
(ELECTRA with dropout and RTD sampling: every rank's own RNG streams restored);
rank 0's clock agreed for time-based checkpoints; and world-size changes: 2 ranks -> 1 rank
-> 2 ranks at ZeRO 1 and 3 (DeepSpeed's universal format) with losses of the uninterrupted
run and a per-step sample audit showing nothing lost or repeated; stages 0 and 2 on 1 rank.

Process start-up is the cost, so the module runs five launches in one fixture: the
DeepSpeed launcher twice (``deepspeed --num_gpus 2 launch/pretrain.sh``: SIGTERM, then
resume), torchrun once for all the other two-rank runs (``python -m pretrain.testing``), and
``mpirun`` twice (``python -m pretrain train``; the chains' last two-rank phase).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from pretrain.checkpoint import complete_tags
from pretrain.testing import (
    REPO,
    clean_env,
    debug_config,
    deepspeed_command,
    free_port,
    losses,
    short_run,
    torchrun_specs,
)
from pretrain.train import audit, train

pytestmark = pytest.mark.slow
STEPS = 8
COMMON = short_run(STEPS, checkpoint_every=3)
KEYS = ("loss", "mlm_acc", "grad_norm", "eval_loss")
CHAIN = [
    "logging.audit_samples=true",
    "eval.every_steps=0",
    "eval.at_end=false",
    "checkpoint.keep_last=5",
]
CHAIN_STAGES = (1, 3)  # world-size change 2 -> 1 -> 2 ranks at these ZeRO stages
# ELECTRA, dropout on (after COMMON's zeros): the ranks draw dropout masks and replacement
# samples from different RNG streams, so each must get its own back on resume.
ELECTRA = [
    "max_steps=4",
    "checkpoint.keep_last=3",
    "model.overrides.hidden_dropout_prob=0.1",
    "model.overrides.attention_probs_dropout_prob=0.1",
]
ELECTRA_STOP = 2
# BERT (NSP) and ALBERT (SOP) on sentence pairs; ALBERT shares one layer's parameters across
# all layers (a parameter used N times in one forward), which ZeRO-3 must gather and reduce
# right. The SOP classifier's dropout is off, as every other dropout here.
PAIR_RUNS = (("albert", 1), ("albert", 3), ("bert", 3))
PAIRS = {"albert": ["model.overrides.classifier_dropout_prob=0.0"], "bert": []}


def _overrides(shards, run_dir, *extra):
    return [f"data.shard_dir={shards}", f"run_dir={run_dir}", *COMMON, *extra]


def _deepspeed(shards, run_dir, *extra):
    cmd = deepspeed_command(shards, run_dir, *COMMON, *extra)
    return subprocess.Popen(
        cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _mpirun(args: list[str]) -> subprocess.CompletedProcess:
    """``mpirun -n 2 python ARGS`` (the venv's MPICH; ranks from mpi4py, our port)."""
    mpirun = str(Path(sys.executable).parent / "mpirun")
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cmd = [mpirun, "-n", "2", sys.executable, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


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
def runs(shards, tmp_path_factory):
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
        *(  # world-size chains, phase 1: 2 ranks, steps 1-3
            {
                "config": cfg,
                "overrides": _overrides(
                    shards, base / f"chain{z}", f"zero.stage={z}", "max_steps=3", *CHAIN
                ),
            }
            for z in CHAIN_STAGES
        ),
        {
            "config": cfg,
            "overrides": _overrides(
                shards, base / "zero3-resumed", "zero.stage=3", "max_steps=3", "eval.at_end=false"
            ),
        },
        {"config": cfg, "overrides": _overrides(shards, base / "zero3-resumed", "zero.stage=3")},
        *(  # sentence pairs; ALBERT's layers are one set of parameters used in every layer
            {
                "config": str(REPO / f"configs/debug-{arch}.toml"),
                "overrides": _overrides(
                    shards, base / f"{arch}-zero{z}", f"zero.stage={z}", *PAIRS[arch]
                ),
            }
            for arch, z in PAIR_RUNS
        ),
        *(  # ELECTRA: uninterrupted; stopped after ELECTRA_STOP steps; resumed
            {
                "config": str(REPO / "configs/debug-electra.toml"),
                "overrides": _overrides(shards, base / run, *ELECTRA, *extra),
            }
            for run, extra in (
                ("electra", ()),
                ("electra-resumed", (f"max_steps={ELECTRA_STOP}", "eval.at_end=false")),
                ("electra-resumed", ()),
            )
        ),
    ]
    res = torchrun_specs(spec, base / "spec.json")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    # 4. One rank, same global batch, in this process; the chains' phase 2 (steps 4-5).
    train(debug_config("roberta", shards, base / "one-rank", *COMMON))
    for arch in {arch for arch, _ in PAIR_RUNS}:
        train(debug_config(arch, shards, base / f"{arch}-one-rank", *COMMON, *PAIRS[arch]))
    for z in CHAIN_STAGES:
        extra = (f"zero.stage={z}", "max_steps=5", *CHAIN)
        train(debug_config("roberta", shards, base / f"chain{z}", *COMMON, *extra))
    # 5. mpirun: the same training as zero0; then the chains' phase 3 (2 ranks, steps 6-8).
    res = _mpirun(["-m", "pretrain", "train", "--config", cfg, *_overrides(shards, base / "mpi")])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    spec = [
        {
            "config": cfg,
            "overrides": _overrides(shards, base / f"chain{z}", f"zero.stage={z}", *CHAIN),
        }
        for z in CHAIN_STAGES
    ]
    (base / "chains.json").write_text(json.dumps(spec))
    res = _mpirun(["-m", "pretrain.testing", str(base / "chains.json")])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
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


@pytest.mark.parametrize("run", ["zero0", "zero1", "zero2", "zero3", "sigterm", "mpi"])
def test_two_ranks_match_one_rank(runs, run):
    one, two = runs["base"] / "one-rank", runs["base"] / run
    assert sorted(losses(two)) == list(range(1, STEPS + 1))
    for key in KEYS:  # grad_norm too: Adam would hide a wrong 1/W gradient scale in the loss
        _assert_close(losses(two, key), losses(one, key), 1e-5)


@pytest.mark.parametrize("arch,stage", PAIR_RUNS)
def test_pair_models_and_shared_layers_two_ranks_match_one_rank(runs, arch, stage):
    one, two = runs["base"] / f"{arch}-one-rank", runs["base"] / f"{arch}-zero{stage}"
    assert sorted(losses(two)) == list(range(1, STEPS + 1))
    task = "sop" if arch == "albert" else "nsp"
    for key in (*KEYS, f"{task}_loss", f"{task}_acc", f"eval_{task}_loss"):
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


def test_in_process_stop_and_resume_is_bit_exact_with_per_rank_rng_streams(runs):
    """ELECTRA on 2 ranks, dropout on: stopped after step 2, resumed, equal to the
    uninterrupted run at every step (restoring another rank's RNG file would not be)."""
    base = runs["base"]
    ref, resumed = base / "electra", base / "electra-resumed"
    stop = resumed / "checkpoints" / f"step_{ELECTRA_STOP:08d}"
    marker = json.loads((stop / "COMPLETE").read_text())
    assert (marker["step"], marker["world_size"]) == (ELECTRA_STOP, 2)
    rng = [
        torch.load(stop / f"ranks/rank{r:05d}.pt", weights_only=True)["rng"]["torch"]
        for r in (0, 1)
    ]
    assert not torch.equal(rng[0], rng[1])  # the ranks' streams differ: a swap would show
    assert not list(resumed.glob("metrics.jsonl.prev-*"))  # continued, not started afresh
    assert sorted(losses(resumed)) == [1, 2, 3, 4]
    for key in ("loss", "mlm_loss", "mlm_acc", "rtd_loss", "rtd_acc", "grad_norm", "eval_loss"):
        assert losses(resumed, key) == losses(ref, key), key


def test_time_based_checkpoints_are_agreed_by_all_ranks(runs):
    # every_minutes ~ 0 on rank 0's clock: a save after every step, none skipped or hung.
    tags = complete_tags(runs["base"] / "zero2/checkpoints")
    assert tags == [f"step_{STEPS - 1:08d}", f"step_{STEPS:08d}"]  # keep_last=2


@pytest.mark.parametrize("stage", CHAIN_STAGES)
def test_world_size_2_1_2_continues_the_run_and_the_sample_sequence(runs, stage):
    """2 ranks (steps 1-3) -> 1 rank (4-5) -> 2 ranks under mpirun (6-8), ZeRO 1 and 3."""
    chain, ref = runs["base"] / f"chain{stage}", runs["base"] / f"zero{stage}"
    for key in ("loss", "mlm_acc", "grad_norm"):
        _assert_close(losses(chain, key), losses(ref, key), 1e-5)
    tags = chain / "checkpoints"
    assert (tags / "step_00000003/universal/UNIVERSAL_COMPLETE").is_file()  # 2 -> 1
    assert (tags / "step_00000005/universal/UNIVERSAL_COMPLETE").is_file()  # 1 -> 2
    assert not list(tags.glob("*/.universal.tmp-*")) and not list(tags.glob("*/latest_universal"))
    report = audit.check(chain)
    assert report["ok"], report["problems"]
    assert report["steps"] == STEPS and report["epochs"] == {
        0: {
            "steps": STEPS,
            "rows": 16 * STEPS,  # rows 0..127, each exactly once, in global-batch order
            "repeated": 0,
            "missing": 0,
            "misplaced": 0,
            "empty": 0,
            "complete": False,
        }
    }
    worlds = [
        json.loads(line)["world_size"]
        for f in sorted((chain / "audit").glob("rank*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert sorted(worlds) == sorted([2] * 6 + [1] * 2 + [2] * 6)


@pytest.mark.parametrize(("run", "step"), [("zero0", 6), ("zero1", 3), ("zero2", 7)])
def test_two_rank_checkpoint_resumes_on_one_rank_at_stages_0_1_2(runs, tmp_path, run, step):
    """Stage 0 loads as it is (no partitioned state); stages 1-2 through the universal format."""
    ckpt = runs["base"] / f"{run}/checkpoints/step_{step:08d}"
    cfg = debug_config("roberta", runs["shards"], tmp_path, *COMMON, f"zero.stage={run[-1]}")
    s = train(cfg, resume=str(ckpt))
    assert s.resumed_from.step == step and (ckpt / "universal").is_dir() == (run != "zero0")
    got = losses(tmp_path)
    assert sorted(got) == list(range(step + 1, STEPS + 1))
    want = {k: v for k, v in losses(runs["base"] / run).items() if k > step}
    _assert_close(got, want, 1e-5)
