"""The training loop on one rank (in-process): golden losses, exact resume, the fields and
values of ``metrics.jsonl``, non-finite steps, a global batch of 8,192 by accumulation, and
learning on the sample corpus, with the contents of its checkpoints.

Regenerate the golden losses (after an intended change of numerics) with
``PRETRAIN_UPDATE_GOLDEN=1 python -m pytest tests/pretrain/train/test_loop.py -k golden``.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import tag_for
from pretrain.config import load_config
from pretrain.metrics import read_metrics
from pretrain.optim import lr_multiplier
from pretrain.testing import debug_config, losses
from pretrain.train import NonFiniteLossError, train

GOLDEN = Path(__file__).parent / "golden"
ARCHS = ("roberta", "electra", "deberta", "bert", "albert")
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


TRAIN_FIELDS = {  # every training record of metrics.jsonl (README, "Metrics")
    "step",
    "loss",
    "mlm_loss",
    "mlm_acc",
    "samples",
    "tokens",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "data_wait_frac",
    "peak_mem",
    "packing_efficiency",
    "skipped_steps",
}
# mlm_loss is the generator's loss for RTD models; precision and recall are on replaced tokens.
RTD_FIELDS = {"rtd_loss", "rtd_acc", "rtd_precision", "rtd_recall", "rtd_replaced"}
RTD_WEIGHT = {"electra": 50.0, "deberta": 50.0}  # the debug presets' rtd_weight
PAIR_TASK = {"bert": "nsp", "albert": "sop"}  # the debug configs train on sentence pairs


@pytest.mark.parametrize("arch", ARCHS)
def test_metrics_records_have_the_documented_fields_and_sane_values(short_runs, arch):
    records, bad = read_metrics(short_runs / arch / "metrics.jsonl")
    assert bad == 0
    train_recs = [r for r in records if "loss" in r]
    eval_recs = [r for r in records if "eval_loss" in r]
    assert len(train_recs) + len(eval_recs) == len(records)
    rtd, task = arch in RTD_WEIGHT, PAIR_TASK.get(arch)
    pair = {f"{task}_loss", f"{task}_acc"} if task else set()
    assert all(set(r) == TRAIN_FIELDS | (RTD_FIELDS if rtd else pair) for r in train_recs)
    eval_keys = {"step", "eval_loss", "eval_mlm_loss", "eval_mlm_acc"}
    eval_keys |= {f"eval_{k}" for k in (RTD_FIELDS if rtd else pair)}
    if arch == "deberta":  # its RTD model's embedding-sharing diagnostics
        eval_keys |= {
            f"eval_{k}"
            for k in (
                "embedding_cosine",
                "generator_embedding_similarity",
                "discriminator_embedding_similarity",
            )
        }
    assert [r["step"] for r in eval_recs] == [3, 6] and all(set(r) == eval_keys for r in eval_recs)
    G, T = 8, 32  # SHORT: global batch, sequence length
    sched = lr_multiplier("linear", warmup_steps=2, total_steps=6)  # the debug config's
    assert [r["step"] for r in train_recs] == list(range(1, 7))  # logging.every_steps=1
    prev_tokens = 0
    for r in train_recs:
        step = r["step"]
        assert r["samples"] == step * G
        # One rank: the loader's packing efficiency is over exactly the rows trained on.
        assert r["tokens"] == round(r["packing_efficiency"] * r["samples"] * T)
        assert prev_tokens < r["tokens"] <= r["samples"] * T
        assert 0 < r["tokens"] - prev_tokens <= G * T
        prev_tokens = r["tokens"]
        assert r["lr"] == pytest.approx(1e-3 * sched(step - 1), rel=1e-12)
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert r["mfu"] is None  # no known peak FLOP/s on CPU
        assert 0.0 <= r["data_wait_frac"] <= 1.0
        assert isinstance(r["peak_mem"], int) and r["peak_mem"] > 2**20  # bytes (peak RSS)
        assert r["skipped_steps"] == 0
        assert 0.0 <= r["mlm_acc"] <= 1.0 and math.isfinite(r["mlm_loss"]) and r["mlm_loss"] > 0
        if rtd:
            assert 0.0 <= r["rtd_acc"] <= 1.0 and r["rtd_loss"] > 0
            want = r["mlm_loss"] + RTD_WEIGHT[arch] * r["rtd_loss"]
            assert r["loss"] == pytest.approx(want, rel=1e-12)
        elif task:  # MLM + NSP / SOP, each normalised by its own count
            assert 0.0 <= r[f"{task}_acc"] <= 1.0 and r[f"{task}_loss"] > 0
            assert r["loss"] == pytest.approx(r["mlm_loss"] + r[f"{task}_loss"], rel=1e-12)
        else:
            assert r["loss"] == r["mlm_loss"]
    assert [r["peak_mem"] for r in train_recs] == sorted(r["peak_mem"] for r in train_recs)


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


LEARN = [
    "max_steps=40",
    "data.seq_len=32",
    "batch.global_batch_size=16",
    "batch.micro_batch_size=16",
    "optimizer.lr=3e-3",
    "schedule.warmup_steps=3",
    "eval.every_steps=20",
    "eval.at_start=true",
    "eval.max_sequences=64",
    "checkpoint.every_steps=20",
    "logging.every_steps=10",
]


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    """40 steps of the debug RoBERTa on the sample corpus (shards with a tokenizer)."""
    run = tmp_path_factory.mktemp("learn")
    cfg = debug_config("roberta", corpus, run, *LEARN)
    train(cfg)
    return cfg, run


def test_validation_loss_falls_on_the_sample_corpus(corpus, corpus_run):
    _, run = corpus_run
    curve = losses(run, "eval_loss")
    vocab = json.loads((corpus / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert sorted(curve) == [0, 20, 40]
    assert abs(curve[0] - math.log(vocab)) < 0.5, curve  # untrained: about uniform
    # (byte-level BPE of 2,000 ids, RoBERTa's kind: 7.59 -> 7.05 -> 7.01 on 2026-12-04)
    assert curve[20] < curve[0] - 0.4 and curve[40] < min(curve[20], curve[0] - 0.5), curve
    assert (run / "hf" / "config.json").is_file()  # exported at the end


def test_checkpoints_hold_config_tokenizer_rank_state_and_marker(corpus, corpus_run):
    cfg, run = corpus_run
    root = run / "checkpoints"
    tags = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert tags == [tag_for(20), tag_for(40)]  # every 20 steps; keep_last=2
    assert (root / "latest").read_text().strip() == tag_for(40)
    assert load_config(run / "config.toml") == cfg  # the resolved config, parsed back
    tok_files = sorted(p.name for p in (corpus / "tokenizer").iterdir())
    assert "tokenizer.json" in tok_files
    for step, tag in zip((20, 40), tags, strict=True):
        d = root / tag
        assert load_config(d / "config.toml") == cfg
        assert (d / "config.toml").read_text() == (run / "config.toml").read_text()
        assert json.loads((d / "model.json").read_text())["arch"] == "roberta"
        assert sorted(p.name for p in (d / "tokenizer").iterdir()) == tok_files
        for name in tok_files:
            assert (d / "tokenizer" / name).read_bytes() == (
                corpus / "tokenizer" / name
            ).read_bytes()
        assert sorted(p.name for p in (d / "ranks").iterdir()) == ["rank00000.pt"]
        rank = torch.load(d / "ranks/rank00000.pt", map_location="cpu", weights_only=True)
        assert set(rank["rng"]) >= {"python", "numpy", "torch"}
        assert rank["loader"]["samples_consumed"] == 16 * step
        assert (d / "mp_rank_00_model_states.pt").is_file()  # DeepSpeed's engine state
        marker = json.loads((d / "COMPLETE").read_text())
        assert marker["step"] == step and marker["samples"] == 16 * step
        assert (marker["world_size"], marker["zero_stage"]) == (1, 0)
        assert marker["tokens"] == losses(run, "tokens")[step]
