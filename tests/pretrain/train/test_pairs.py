"""BERT (MLM + NSP) and ALBERT (MLM + SOP) trained on sentence pairs: the pair task is learnt
on the sample corpus, metrics carry its loss and accuracy (training and validation), and a
stopped and resumed run is bit-identical to an unbroken one."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.loader import LoaderConfig, PretrainLoader
from data_pipeline.masking import MaskingConfig
from data_pipeline.synthetic import SPECIAL_IDS
from pretrain.metrics import read_metrics
from pretrain.models import build_model
from pretrain.testing import debug_config, losses
from pretrain.train import train

# The sample corpus (Python's documentation, WordPiece) at 64 tokens: a tiny BERT learns NSP
# within a few hundred steps (0.52 / 0.69 / 0.75 validation accuracy at steps 200 / 400 / 600,
# 2026-12-04). SOP takes thousands of steps at this size (ALBERT: chance until ~3,500, 0.73 at
# 5,000; docs/loader.md), too long for a test: the SOP runs here check the mechanics.
LEARN = [
    "data.seq_len=64",
    "batch.global_batch_size=64",
    "batch.micro_batch_size=64",
    "optimizer.lr=2e-3",
    "schedule.warmup_steps=40",
    "eval.every_steps=200",
    "eval.max_sequences=512",
    "logging.every_steps=50",
    "checkpoint.every_steps=0",
    "checkpoint.export_hf=false",
]


@pytest.mark.slow
def test_nsp_is_learnt_on_the_sample_corpus(bert_corpus, tmp_path):
    train(debug_config("bert", bert_corpus, tmp_path, *LEARN, "max_steps=600"))
    records, _ = read_metrics(tmp_path / "metrics.jsonl")
    evals = [r["eval_nsp_acc"] for r in records if "eval_nsp_acc" in r]
    assert len(evals) == 3 and evals[-1] > 0.65 and evals[-1] > evals[0], evals
    first = next(r for r in records if "nsp_acc" in r)
    assert first["nsp_loss"] == pytest.approx(0.693, abs=0.05)  # chance at the start
    assert records[-1]["eval_mlm_acc"] > 0.15  # and the MLM side learns alongside


SHORT = [
    "max_steps=6",
    "data.seq_len=32",
    "batch.global_batch_size=8",
    "batch.micro_batch_size=4",
    "checkpoint.every_steps=3",
    "checkpoint.export_hf=false",
    "eval.every_steps=3",
    "eval.max_sequences=8",
    "logging.every_steps=1",
]


@pytest.mark.parametrize("arch,task", [("bert", "nsp"), ("albert", "sop")])
def test_pair_run_resumes_bit_exactly_and_logs_the_pair_task(shards, tmp_path, arch, task):
    whole = tmp_path / "whole"
    train(debug_config(arch, shards, whole, *SHORT))
    part = tmp_path / "part"
    train(debug_config(arch, shards, part, *SHORT, "max_steps=3", "schedule.total_steps=6"))
    assert train(debug_config(arch, shards, part, *SHORT)).resumed_from.step == 3
    for key in ("loss", "mlm_loss", f"{task}_loss", f"{task}_acc", "grad_norm", "eval_loss"):
        assert losses(part, key) == losses(whole, key), key
    records, _ = read_metrics(whole / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    for r in steps:
        assert r["loss"] == pytest.approx(r["mlm_loss"] + r[f"{task}_loss"], rel=1e-9)
        assert 0.0 <= r[f"{task}_acc"] <= 1.0
    evals = [r for r in records if "eval_loss" in r]
    assert evals and all(f"eval_{task}_acc" in r for r in evals)
    other = "sop" if task == "nsp" else "nsp"
    assert not any(k.startswith((other, f"eval_{other}", "rtd")) for r in records for k in r)


@pytest.mark.parametrize("arch,task", [("bert", "nsp"), ("albert", "sop")])
def test_the_pair_head_fits_one_batch_of_loader_pairs(shards, arch, task):
    """The pair head and its gradient path work end to end on the loader's rows: a debug
    model fits the labels of one batch (memorising them)."""
    loader = PretrainLoader(
        LoaderConfig(str(shards), seq_len=32, packing="pairs", pair_task=task, num_workers=0),
        MaskingConfig(),
        16,
        16,
    )
    batch = next(iter(loader))
    loader.close()
    torch.manual_seed(0)
    model = build_model(arch, f"{arch}-debug", vocab_size=500, pad_token_id=SPECIAL_IDS["pad"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    keys = ("input_ids", "attention_mask", "labels", "token_type_ids", "sentence_labels")
    for _ in range(120):
        out = model(**{k: batch[k] for k in keys})
        loss = out["sentence_loss_sum"] / out["sentence_count"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(out["sentence_correct"]) == int(out["sentence_count"]) > 8
