"""Checkpoints: COMPLETE marker + ``latest`` written last, keep-last-K, RNG states, resume
after a kill in the middle of a save, ``load_run_model``, ``--resume never``; the universal
conversion for world-size changes (cached, atomic, race-safe), refused ZeRO-stage changes;
weights-only reads: fp32 master weights at ZeRO 0/1/3, code-running files refused."""

import argparse
import json
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.common import CommandError
from pretrain import checkpoint as ck
from pretrain import engine as eng
from pretrain.engine import universal as uv
from pretrain.engine import zero_files
from pretrain.testing import (
    CONFIGS,
    clean_env,
    debug_config,
    losses,
    train_command,
)
from pretrain.train import train

TINY = [
    "max_steps=6",
    "data.seq_len=32",
    "batch.global_batch_size=8",
    "batch.micro_batch_size=4",
    "checkpoint.every_steps=2",
    "checkpoint.export_hf=false",
    "eval.at_end=false",
    "eval.every_steps=0",
]


class FakeEngine:
    """The slice of ``pretrain.engine.Engine`` the checkpointer uses, writing one file."""

    rank, world_size, zero_stage = 0, 1, 0

    def barrier(self):
        pass

    def save(self, root, tag, client_state):
        (Path(root) / tag).mkdir(parents=True, exist_ok=True)
        torch.save(client_state, Path(root) / tag / "mp_rank_00_model_states.pt")


def test_latest_is_written_last_and_only_complete_checkpoints_count(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    c = ck.Checkpointer(
        tmp_path / "run",
        FakeEngine(),
        keep_last=2,
        files={"config.toml": "x = 1\n"},
        tokenizer_dir=tok,
    )
    for step in range(1, 6):
        c.save(step, {"step": step}, {"samples_consumed": step})
    root = tmp_path / "run" / "checkpoints"
    assert ck.complete_tags(root) == ["step_00000004", "step_00000005"]  # keep_last=2
    assert (root / "latest").read_text().strip() == "step_00000005"
    tag = root / "step_00000005"
    assert (tag / "config.toml").read_text() == "x = 1\n" and (
        tag / "tokenizer/tokenizer.json"
    ).exists()
    assert json.loads((tag / "COMPLETE").read_text())["step"] == 5
    # An interrupted save: files but no marker, and even a `latest` naming it.
    (root / "step_00000006").mkdir()
    (root / "step_00000006" / "mp_rank_00_model_states.pt").write_text("partial")
    (root / "latest").write_text("step_00000006\n")
    assert ck.latest_tag(root) == "step_00000005"
    point = ck.find_resume(tmp_path / "run", "auto")
    assert (point.tag, point.step) == ("step_00000005", 5)
    assert ck.find_resume(tmp_path / "run", "never") is None
    assert ck.find_resume(tmp_path, str(tag)).tag == "step_00000005"  # a checkpoint path
    assert ck.find_resume(tmp_path, str(tmp_path / "run")).tag == "step_00000005"  # a run path
    with pytest.raises(ck.RunDirError, match="no complete checkpoint"):
        ck.find_resume(tmp_path, str(tmp_path / "tok"))
    c.save(7, {"step": 7}, {})  # the next save removes the older incomplete debris
    assert not (root / "step_00000006").exists()
    assert ck.complete_tags(root) == ["step_00000005", "step_00000007"]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    torch.save(ck.rng_state(), path)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(torch.load(path, weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_kill_during_a_save_leaves_the_previous_checkpoint_and_resume_is_exact(shards, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = train(debug_config("roberta", shards, ref_dir, *TINY))
    # A separate process hard-exits (status 137) in the middle of saving step 4.
    cmd = train_command(shards, run_dir, *TINY, "debug.exit_during_save_step=4")
    res = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 137, res.stderr[-2000:]
    root = run_dir / "checkpoints"
    assert (root / "step_00000004").is_dir() and ck.read_marker(root / "step_00000004") is None
    assert (root / "latest").read_text().strip() == "step_00000002"
    resumed = train(debug_config("roberta", shards, run_dir, *TINY))
    assert resumed.resumed_from.step == 2
    assert losses(run_dir) == losses(ref_dir)  # bit for bit, steps 1..6
    assert ck.read_marker(root / "step_00000004") is not None
    # load_run_model: the newest checkpoint's consolidated weights = the trained model's.
    model, tok_dir = ck.load_run_model(run_dir)
    live = ref.engine.module.state_dict()
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())
    assert not model.training and Path(tok_dir).name == "tokenizer"


def test_resume_never_refuses_a_run_with_checkpoints_unless_overwrite(shards, tmp_path):
    from pretrain.commands.train import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [
        "--config",
        str(CONFIGS / "debug-roberta.toml"),
        f"data.shard_dir={shards}",
        f"run_dir={tmp_path}",
        *TINY[1:],
        "max_steps=3",
        "--resume",
        "never",
    ]
    assert main(parser.parse_args(argv)) == 0
    with pytest.raises(CommandError, match="has checkpoints; --resume never refuses"):
        main(parser.parse_args(argv))
    (tmp_path / "checkpoints" / "step_00000002" / "marker-of-old-run").write_text("")
    assert main(parser.parse_args([*argv, "--overwrite"])) == 0
    assert not (tmp_path / "checkpoints" / "step_00000002" / "marker-of-old-run").exists()
    assert ck.complete_tags(tmp_path / "checkpoints") == ["step_00000002", "step_00000003"]
    with pytest.raises(ck.RunDirError, match="not a run directory"):
        ck.load_run_model(tmp_path / "checkpoints")


# ----------------------------------------------------------------------------- universal


@pytest.fixture(scope="module")
def zero1_tag(shards, tmp_path_factory):
    """A (one-rank) ZeRO-1 checkpoint: partitioned optimizer state, convertible."""
    run = tmp_path_factory.mktemp("zero1")
    train(
        debug_config(
            "roberta", shards, run, *TINY, "max_steps=2", "schedule.warmup_steps=1", "zero.stage=1"
        )
    )
    return run / "checkpoints" / "step_00000002"


def _copy(tag: Path, dest: Path) -> Path:
    shutil.copytree(tag, dest, ignore=shutil.ignore_patterns(uv.UNIVERSAL))
    return dest


def test_universal_conversion_is_cached_and_leaves_no_debris(zero1_tag, tmp_path, monkeypatch):
    tag = _copy(zero1_tag, tmp_path / "step_00000002")
    assert uv.partitioned(tag) and uv.needs_universal(tag, 2, 1)
    assert not uv.needs_universal(tag, 1, 1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    debris = [tag / f".universal.{kind}-{socket.gethostname()}-{dead}" for kind in ("tmp", "src")]
    for d in debris:  # a conversion on this host that crashed
        (d / "zero").mkdir(parents=True)
    out = uv.ensure_universal(tag)
    assert out == tag / "universal" and uv.is_converted(tag)
    assert (out / "zero" / "optimizer_state.pt").is_file()
    assert not any(d.exists() for d in debris) and not (tag / "latest_universal").exists()
    # Cached: a second resume at yet another world size converts nothing.
    monkeypatch.setattr(uv, "ds_to_universal", lambda *a: pytest.fail("converted twice"))
    assert uv.ensure_universal(tag) == out


def test_a_failed_conversion_leaves_nothing_that_looks_complete(zero1_tag, tmp_path, monkeypatch):
    tag = _copy(zero1_tag, tmp_path / "step_00000002")

    def crash(src, dst):  # killed half-way: some files written, then an error
        (Path(dst) / "zero").mkdir(parents=True)
        (Path(dst) / "zero" / "optimizer_state.pt").write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(uv, "ds_to_universal", crash)
    with pytest.raises(RuntimeError, match="conversion to a universal checkpoint failed: No sp"):
        uv.ensure_universal(tag)
    assert not uv.is_converted(tag) and not (tag / "universal").exists()
    assert not list(tag.glob(".universal.tmp-*"))


def test_a_conversion_that_loses_the_race_keeps_the_winners_copy(zero1_tag, tmp_path):
    tag = _copy(zero1_tag, tmp_path / "step_00000002")
    elsewhere = tag / ".universal.tmp-another-host-7"  # in progress on another node
    elsewhere.mkdir()
    shutil.copy(tag / "mp_rank_00_model_states.pt", elsewhere)
    out = uv.ensure_universal(tag)
    first = (out / uv.DONE).stat().st_ino
    uv.convert_to_universal(tag, out)  # a second process that converted at the same time
    assert (out / uv.DONE).stat().st_ino == first
    assert [p.name for p in tag.glob(".universal.*")] == [elsewhere.name]  # not ours to remove


def test_zero_stage_changes_that_deepspeed_cannot_load_are_refused(tmp_path):
    point = ck.ResumePoint(tmp_path, "step_00000004", {"step": 4, "zero_stage": 3})
    with pytest.raises(ck.RunDirError, match="zero.stage=3, cannot be resumed with zero.stage=1"):
        ck.check_zero_stage(point, 1)
    ck.check_zero_stage(point, 3)
    ck.check_zero_stage(ck.ResumePoint(tmp_path, "t", {"zero_stage": 1}), 2)  # same layout
    with pytest.raises(ck.RunDirError, match="stages 1 and 2 are interchangeable"):
        ck.check_zero_stage(ck.ResumePoint(tmp_path, "t", {"zero_stage": 0}), 2)


def test_on_rank0_in_one_process_returns_and_raises_as_is():
    assert eng.on_rank0(lambda: 41 + 1, "sum") == 42
    with pytest.raises(ZeroDivisionError):
        eng.on_rank0(lambda: 1 / 0, "division")


# ----------------------------------------------------------------------------- weights-only


class Payload:
    """Unpickling this runs ``touch PATH`` (what a malicious checkpoint would do)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _weights_only_loads(monkeypatch) -> list:
    """Make every ``torch.load`` of the code under test fail unless it is weights-only."""
    real, calls = torch.load, []

    def guarded(*args, **kwargs):
        assert kwargs.get("weights_only") is True, f"full unpickle of {args[:1]}"
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)
    return calls


def _zero_to_fp32(tag_dir: Path) -> dict:
    """DeepSpeed's own consolidation (full unpickle: only for files this test wrote)."""
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return {k: v.contiguous() for k, v in state.items()}


@pytest.mark.parametrize(
    "arch,stage,dtype", [("electra", 0, "bf16"), ("roberta", 1, "fp32"), ("electra", 3, "bf16")]
)
def test_load_run_model_reads_the_fp32_weights_weights_only(
    arch, stage, dtype, shards, tmp_path, monkeypatch
):
    """ZeRO 0 (the wrapper's fp32 masters of a bf16 module), 1 and 3 (partitions): the
    consolidated weights are the fp32 master weights, every file read weights-only."""
    run = tmp_path / "run"
    args = (*TINY, "max_steps=2", "schedule.warmup_steps=1", f"zero.stage={stage}")
    session = train(debug_config(arch, shards, run, *args, f"precision.dtype={dtype}"))
    calls = _weights_only_loads(monkeypatch)
    model, _ = ck.load_run_model(run)
    monkeypatch.undo()
    tag = run / "checkpoints" / "step_00000002"
    assert calls and all(Path(c).parent == tag for c in calls)
    got = model.state_dict()
    if stage == 0:  # the live optimizer wrapper's fp32 copies, not the bf16 module
        opt, names = session.engine.ds.optimizer, dict(session.engine.module.named_parameters())
        by_id = {id(p): n for n, p in names.items()}
        masters = {
            by_id[id(p)]: m
            for lp, hp in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
            for p, m in zip(lp, hp, strict=True)
        }
        assert len(masters) == len(names)
        assert all(torch.equal(got[k], v) for k, v in masters.items())
        assert not all(torch.equal(got[k], names[k].float()) for k in masters)  # not bf16
        assert all(torch.equal(got[k].bfloat16(), names[k]) for k in masters)
        # fp16 + fused Adam (GPU only) keeps one flat fp32 tensor per group instead.
        flat = {
            "fp32_groups_flat": [torch.cat([t.reshape(-1) for t in g]) for g in opt.fp32_groups]
        }
        module = {k: v.detach().bfloat16() for k, v in session.engine.module.state_dict().items()}
        again = zero_files._zero0_weights(module, flat, model, tag)
        assert all(torch.equal(again[k], v) for k, v in masters.items())
    else:
        expected = _zero_to_fp32(tag)
        assert set(expected) <= set(got) and all(torch.equal(got[k], expected[k]) for k in expected)
    if arch == "electra":  # tied embeddings restored under both names
        assert torch.equal(
            got["generator.electra.embeddings.word_embeddings.weight"],
            got["discriminator.electra.embeddings.word_embeddings.weight"],
        )


@pytest.mark.parametrize(
    "poisoned,legacy",
    [
        ("mp_rank_00_model_states.pt", False),
        ("zero_pp_rank_0_mp_rank_00_optim_states.pt", False),
        ("zero_pp_rank_0_mp_rank_00_optim_states.pt", True),  # a bare pickle, not torch's zip
    ],
)
def test_a_checkpoint_that_would_run_code_is_refused(
    zero1_tag, shards, poisoned, legacy, tmp_path, capsys
):
    """export --run, fill-mask --model RUN and resuming refuse it in one line; nothing runs."""
    from pretrain.cli import main as cli

    run = tmp_path / "run"
    shutil.copytree(zero1_tag.parents[1], run, ignore=shutil.ignore_patterns(uv.UNIVERSAL))
    marker = tmp_path / "PAYLOAD_RAN"
    bad = run / "checkpoints" / "step_00000002" / poisoned
    payload = {"module": {}, "optimizer_state_dict": Payload(marker)}
    if legacy:
        bad.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, bad)
    with pytest.raises(ck.RunDirError, match=f"{poisoned}: refused to load: "):
        ck.load_run_model(run)
    for argv in (
        ["export", "--run", str(run), "--out", str(tmp_path / "hf")],
        ["fill-mask", "--model", str(run), "a <mask>"],
    ):
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and str(bad) in err, err
    cfg = debug_config("roberta", shards, run, *TINY, "zero.stage=1", "schedule.warmup_steps=1")
    with pytest.raises(ck.RunDirError, match="refused to load"):  # before DeepSpeed reads it
        train(cfg)
    assert not marker.exists()
    pickle.loads(bad.read_bytes()) if legacy else torch.load(bad, weights_only=False)
    assert marker.exists()  # the file really is a payload: a full unpickle runs it
