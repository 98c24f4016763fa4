"""The training loop on one rank (in-process): golden losses, exact resume, non-finite
steps, a global batch of 8,192 by accumulation, and learning on the sample corpus.

Regenerate the golden losses (after an intended change of numerics) with
``PRETRAIN_UPDATE_GOLDEN=1 python -m pytest tests/pretrain/test_trainer.py -k golden``.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import tag_for
from pretrain.metrics import read_metrics
from pretrain.session import NonFiniteLossError
from pretrain.testing import corpus_shards, debug_config, losses, synthetic_shards
from pretrain.trainer import train

GOLDEN = Path(__file__).parent / "golden"
ARCHS = ("roberta", "electra", "deberta")
SHORT = [
    "max_steps=6",
    "data.seq_len=32",
    "batch.global_batch_size=8",
    "batch.micro_batch_size=4",
    "checkpoint.every_steps=3",
    "checkpoint.export_hf=false",
    "eval.every_steps=3",
    "eval.max_sequences=8",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return synthetic_shards(tmp_path_factory.getbasetemp() / "synthetic-shards")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return corpus_shards(tmp_path_factory.getbasetemp() / "sample-corpus")


@pytest.fixture(scope="module")
def short_runs(shards, tmp_path_factory):
    """Uninterrupted 6-step runs of every debug config (dropout on, RTD sampling on)."""
    base = tmp_path_factory.mktemp("short")
    for arch in ARCHS:
        train(debug_config(arch, shards, base / arch, *SHORT))
    return base


@pytest.mark.parametrize("arch", ARCHS)
def test_golden_losses(short_runs, arch):
    got = {str(k): v for k, v in losses(short_runs / arch).items()}
    path = GOLDEN / f"debug-{arch}.json"
    if os.environ.get("PRETRAIN_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps({"overrides": SHORT, "losses": got}, indent=1) + "\n")
    want = json.loads(path.read_text())
    assert want["overrides"] == SHORT, "golden file made with other settings: regenerate it"
    assert list(got) == list(want["losses"])
    for step, loss in want["losses"].items():  # tolerance: other CPUs round differently
        assert got[step] == pytest.approx(loss, rel=1e-4), f"step {step}"


def test_resume_is_bit_exact_with_dropout_and_rtd_sampling(shards, short_runs, tmp_path):
    first = train(
        debug_config("electra", shards, tmp_path, *SHORT, "max_steps=3", "schedule.total_steps=6")
    )
    assert first.state.step == 3
    second = train(debug_config("electra", shards, tmp_path, *SHORT))
    assert second.resumed_from.step == 3
    for key in ("loss", "rtd_acc", "grad_norm", "eval_loss"):
        assert losses(tmp_path, key) == losses(short_runs / "electra", key), key
    records, _ = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]  # none repeated on resume


def _ckpt_state(run_dir, step):
    path = Path(run_dir) / "checkpoints" / tag_for(step) / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def test_nonfinite_loss_skips_the_step_then_stops_after_too_many(shards, tmp_path):
    opts = [
        *SHORT,
        "max_steps=3",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=3",
        "debug.poison_loss_steps=[2]",
        "logging.every_steps=1",
    ]
    s = train(debug_config("roberta", shards, tmp_path / "skip", *opts))
    assert s.state.nonfinite_total == 1 and s.state.nonfinite_in_row == 0
    one, two, three = (_ckpt_state(tmp_path / "skip", k) for k in (1, 2, 3))
    for name, w in one["module"].items():  # step 2 changed no parameter ...
        assert torch.equal(w, two["module"][name]), name
    st1, st2 = one["optimizer"]["state"], two["optimizer"]["state"]
    for i in st1:  # ... and no optimizer moment or step count
        assert all(torch.equal(st1[i][k], st2[i][k]) for k in st1[i])
    assert any(not torch.equal(w, three["module"][n]) for n, w in two["module"].items())
    lr = losses(tmp_path / "skip", "lr")
    assert lr[3] == lr[2]  # like DeepSpeed's own overflow skips: the schedule waits
    assert losses(tmp_path / "skip", "skipped_steps") == {1: 0, 2: 1, 3: 1}

    bad = [*SHORT, "debug.poison_loss_steps=[2, 3, 4]", "max_nonfinite_steps=3"]
    with pytest.raises(NonFiniteLossError, match=r"step 4: 3 consecutive steps with a non-finite"):
        train(debug_config("roberta", shards, tmp_path / "stop", *bad))


def test_global_batch_of_8192_sequences_runs_by_accumulation(corpus, tmp_path):
    s = train(
        debug_config(
            "roberta",
            corpus,
            tmp_path,
            "max_steps=1",
            "data.seq_len=8",
            "batch.global_batch_size=8192",
            "batch.micro_batch_size=512",
            "model.overrides.num_hidden_layers=1",
            "eval.at_end=false",
            "eval.every_steps=0",
            "checkpoint.export_hf=false",
            "schedule.kind=constant",
            "schedule.warmup_steps=0",
        )
    )
    assert s.engine.grad_accum == 16
    assert losses(tmp_path, "samples") == {1: 8192}
    assert 8192 * 4 < losses(tmp_path, "tokens")[1] <= 8192 * 8  # packed rows: mostly full
    assert s.loader.state_dict()["samples_consumed"] == 8192
    assert math.isfinite(losses(tmp_path)[1])


def test_validation_loss_falls_on_the_sample_corpus(corpus, tmp_path):
    train(
        debug_config(
            "roberta",
            corpus,
            tmp_path,
            "max_steps=40",
            "data.seq_len=32",
            "batch.global_batch_size=16",
            "batch.micro_batch_size=16",
            "optimizer.lr=3e-3",
            "schedule.warmup_steps=3",
            "eval.every_steps=20",
            "eval.at_start=true",
            "eval.max_sequences=64",
            "checkpoint.every_steps=0",
            "logging.every_steps=10",
        )
    )
    curve = losses(tmp_path, "eval_loss")
    vocab = json.loads((corpus / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert sorted(curve) == [0, 20, 40]
    assert abs(curve[0] - math.log(vocab)) < 0.5, curve  # untrained: about uniform
    assert curve[20] < curve[0] - 0.4 and curve[40] < curve[0] - 0.6, curve
    assert (tmp_path / "hf" / "config.json").is_file()  # exported at the end
