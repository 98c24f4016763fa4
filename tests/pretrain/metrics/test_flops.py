"""FLOP counting (formula vs hand counts vs torch's FlopCounterMode), device peaks and MFU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pretrain.metrics.flops import (
    flops_breakdown,
    mfu,
    model_flops_per_token,
    peak_flops_per_second,
)
from pretrain.models import arch_module, build_model


def fake_model(arch: str, **config):
    """An object shaped like ``pretrain.models.<arch>.Model`` as far as FLOP counting goes."""
    cls = type("Model", (), {"__module__": f"pretrain.models.{arch}"})
    model = cls()
    model.config = SimpleNamespace(**config)
    return model


BERT_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, intermediate_size=3072)


# ----------------------------------------------------------------------------- the formula


def test_roberta_base_by_hand():
    h, f, n, v, t, p = 768, 3072, 12, 50265, 512, 0.15
    per_layer = 3 * 2 * h * h + 2 * h * h + 2 * 2 * h * f + 2 * t * h + 2 * t * h
    head = p * (2 * h * h + 2 * h * v)
    expected = 3 * (n * per_layer + head)
    got = model_flops_per_token(fake_model("roberta", **BERT_BASE), t, p)
    assert got == pytest.approx(expected, rel=1e-12)
    # Cross-check with the usual approximation: 6 x (non-embedding weights) + attention + head.
    non_embedding_weights = n * (4 * h * h + 2 * h * f)
    approx = 6 * non_embedding_weights + 3 * n * 4 * t * h + 3 * head
    assert got == pytest.approx(approx, rel=1e-9)
    assert 5.9e8 < got < 6.1e8  # ~0.6 GFLOP per token for RoBERTa-base at 512


def test_sparse_head_scales_with_predicted_fraction():
    model = fake_model("roberta", **BERT_BASE)
    a = flops_breakdown(model, 128, 0.15)
    b = flops_breakdown(model, 128, 0.30)
    assert b["mlm_head"] == pytest.approx(2 * a["mlm_head"])
    assert {k: v for k, v in a.items() if k != "mlm_head"} == {
        k: v for k, v in b.items() if k != "mlm_head"
    }
    assert flops_breakdown(model, 128, 0.0)["mlm_head"] == 0.0


def test_electra_counts_generator_discriminator_and_rtd_head():
    cfg = dict(
        vocab_size=30522,
        hidden_size=256,
        num_hidden_layers=12,
        intermediate_size=1024,
        embedding_size=128,
        generator_hidden_size=64,
        generator_num_hidden_layers=12,
        generator_intermediate_size=256,
    )
    t, p = 128, 0.15
    br = flops_breakdown(fake_model("electra", **cfg), t, p)
    assert br["embed_proj"] == 2 * 128 * 256
    assert br["gen_embed_proj"] == 2 * 128 * 64
    assert br["gen_ffn"] == 12 * 4 * 64 * 256 and br["ffn"] == 12 * 4 * 256 * 1024
    assert br["gen_attn_scores"] == 12 * 4 * t * 64
    assert br["mlm_head"] == pytest.approx(p * (2 * 64 * 128 + 2 * 128 * 30522))
    assert br["rtd_head"] == 2 * 256 * 256 + 2 * 256
    # Same embedding and hidden size: no projection is counted.
    same = flops_breakdown(
        fake_model("electra", **{**cfg, "embedding_size": 256, "generator_hidden_size": 256}), t, p
    )
    assert "embed_proj" not in same and "gen_embed_proj" not in same


def _deberta(**kw):
    cfg = dict(
        BERT_BASE,
        vocab_size=128100,
        position_buckets=256,
        max_relative_positions=512,
        max_position_embeddings=512,
        objective="mlm",
        emd=False,
    )
    cfg.update(kw)
    return fake_model("deberta", **cfg)


def test_deberta_relative_terms_and_batch_amortisation():
    h, n, t = 768, 12, 512
    one = flops_breakdown(_deberta(), t, 0.15)
    assert one["rel_scores"] == n * 4 * (2 * 256) * h
    assert one["rel_proj"] == pytest.approx(n * 2 * 2 * (2 * 256) * h * h / t)
    eight = flops_breakdown(_deberta(), t, 0.15, micro_batch_size=8)
    assert eight["rel_proj"] == pytest.approx(one["rel_proj"] / 8)
    assert eight["rel_scores"] == one["rel_scores"]
    # Without buckets the span is max_relative_positions (HF pos_ebd_size).
    flat = flops_breakdown(_deberta(position_buckets=-1, max_relative_positions=128), t, 0.15)
    assert flat["rel_scores"] == n * 4 * (2 * 128) * h
    # DeBERTa-v3-base costs more than RoBERTa-base per token (relative attention).
    rob = model_flops_per_token(fake_model("roberta", **BERT_BASE), t, 0.15)
    assert model_flops_per_token(_deberta(vocab_size=50265), t, 0.15) > 1.1 * rob


def test_deberta_rtd_adds_generator_and_rtd_head():
    gen = dict(
        generator_hidden_size=768, generator_num_hidden_layers=6, generator_intermediate_size=3072
    )
    mlm = flops_breakdown(_deberta(**gen), 512, 0.15)
    rtd = flops_breakdown(_deberta(objective="rtd", **gen), 512, 0.15)
    assert rtd["gen_ffn"] == pytest.approx(mlm["ffn"] / 2)
    assert rtd["gen_rel_scores"] == pytest.approx(mlm["rel_scores"] / 2)
    assert rtd["mlm_head"] == mlm["mlm_head"]
    assert rtd["rtd_head"] == 2 * 768 * 768 + 2 * 768 and "rtd_head" not in mlm


def test_bad_arguments():
    with pytest.raises(ValueError, match="cannot count FLOPs"):
        model_flops_per_token(torch.nn.Linear(2, 2), 16, 0.15)
    model = fake_model("roberta", **BERT_BASE)
    with pytest.raises(ValueError, match="predicted_fraction"):
        model_flops_per_token(model, 16, 1.5)
    with pytest.raises(ValueError, match="positive"):
        model_flops_per_token(model, 0, 0.15)


# ----------------------------------------------------------------------------- independent count


def counted_flops_per_token(model, batch: int, seq_len: int, per_row: int) -> float:
    """Matmul FLOPs of one real forward + backward, counted by torch, per input token.

    ``per_row`` positions of every row carry a label. The math SDPA backend decomposes
    attention into ``bmm`` calls that FlopCounterMode sees (it does not count the fused
    CPU kernel).
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq_len), generator=gen)
    labels = torch.full_like(ids, -100)
    for row in range(batch):
        where = torch.randperm(seq_len, generator=gen)[:per_row]
        labels[row, where] = ids[row, where]
    pairs = {}
    if hasattr(model, "sentence_logits"):  # BERT / ALBERT: the NSP / SOP head on [CLS]
        pairs["sentence_labels"] = torch.randint(0, 2, (batch,), generator=gen)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(ids, torch.ones_like(ids), labels, **pairs)
        loss = out["mlm_loss_sum"] + out.get("rtd_loss_sum", 0.0)
        loss = loss + out.get("sentence_loss_sum", 0.0)
        loss.backward()
    return counter.get_total_flops() / (batch * seq_len)


def preset_model(arch, preset, **overrides):
    """A fake model holding the real ``Config`` of a preset (cheap: no weights)."""
    mod = arch_module(arch)
    return fake_model(arch, **vars(mod.Config(**{**mod.PRESETS[preset], **overrides})))


def _build(arch, preset, **overrides):
    torch.manual_seed(0)
    return build_model(arch, preset, **overrides)


# (arch, preset, overrides, batch, seq_len, labelled positions per row). With EMD, 64
# labels per row of 128 make the model's query padding (to a multiple of 64) a no-op.
DEBUG_CASES = [
    ("bert", "bert-debug", {}, 4, 32, 5),
    ("albert", "albert-debug", {}, 4, 32, 5),
    ("albert", "albert-debug", {"inner_group_num": 2}, 2, 64, 10),
    ("albert", "albert-debug", {"share": "ffn", "embedding_size": 64}, 2, 32, 5),
    ("roberta", "roberta-debug", {}, 4, 32, 5),
    ("roberta", "roberta-debug", {}, 2, 128, 32),
    ("electra", "electra-debug", {}, 4, 32, 5),
    ("electra", "electra-debug", {"embedding_size": 64, "generator_size": 1.0}, 2, 64, 10),
    ("deberta", "deberta-debug", {"objective": "mlm"}, 4, 32, 5),
    ("deberta", "deberta-debug", {"objective": "rtd"}, 4, 32, 5),
    ("deberta", "deberta-debug", {"objective": "mlm", "emd": True}, 2, 128, 64),
    ("deberta", "deberta-debug", {"objective": "rtd", "emd": True}, 2, 128, 64),
    ("deberta", "deberta-debug", {"position_buckets": -1, "max_relative_positions": 64}, 2, 32, 4),
]


@pytest.mark.parametrize("arch,preset,overrides,batch,seq_len,per_row", DEBUG_CASES)
def test_formula_equals_flop_counter_on_debug_models(
    arch, preset, overrides, batch, seq_len, per_row
):
    model = _build(arch, preset, vocab_size=1000, **overrides)
    expected = model_flops_per_token(model, seq_len, per_row / seq_len, micro_batch_size=batch)
    counted = counted_flops_per_token(model, batch, seq_len, per_row)
    assert counted == pytest.approx(expected, rel=1e-9)


# Base presets at their real widths: count at two depths with FlopCounterMode, extrapolate
# linearly to the preset's depth (every layer costs the same), compare with the formula on
# the full preset. The vocabulary is cut to 1,000 rows: the dense gradient of a 50-128 K
# row table costs seconds on CPU, and the vocabulary term is checked exactly above.
BASE_CASES = [
    ("roberta", "roberta-base", 1, 2),
    ("electra", "electra-base", 1, 2),
    ("deberta", "deberta-v3-base", 2, 4),  # RTD: generator depth = depth // 2
]


@pytest.mark.parametrize("arch,preset,depth_a,depth_b", BASE_CASES)
def test_formula_equals_flop_counter_on_base_presets(arch, preset, depth_a, depth_b):
    batch, seq_len, per_row = 1, 16, 3
    extra = {"vocab_size": 1000}
    counts = [
        counted_flops_per_token(
            _build(arch, preset, num_hidden_layers=d, **extra), batch, seq_len, per_row
        )
        for d in (depth_a, depth_b)
    ]
    full = preset_model(arch, preset, **extra)  # the full-depth preset's Config, not built
    depth = full.config.num_hidden_layers
    per_layer = (counts[1] - counts[0]) / (depth_b - depth_a)
    extrapolated = counts[0] + per_layer * (depth - depth_a)
    expected = model_flops_per_token(full, seq_len, per_row / seq_len, micro_batch_size=batch)
    assert extrapolated == pytest.approx(expected, rel=1e-9)


def test_real_presets_read_by_config():
    """Whole presets, full vocabularies, at their training shapes (no model built)."""
    rob = model_flops_per_token(preset_model("roberta", "roberta-base"), 512, 0.15)
    assert rob == pytest.approx(
        model_flops_per_token(fake_model("roberta", **BERT_BASE), 512, 0.15)
    )
    deb = flops_breakdown(
        preset_model("deberta", "deberta-v3-base"), 512, 0.15, micro_batch_size=32
    )
    # v3-base: RTD with a 6-layer generator of the same width; 256 buckets -> 512 rows.
    assert deb["rel_scores"] == 12 * 4 * 512 * 768 and deb["gen_rel_scores"] == 6 * 4 * 512 * 768
    assert deb["mlm_head"] == pytest.approx(0.15 * (2 * 768 * 768 + 2 * 768 * 128100))
    # Generator + discriminator cost ~1.5x + head: between 1.5x and 2.5x RoBERTa-base.
    assert 1.5 * rob < 3 * sum(deb.values()) < 2.5 * rob


# ----------------------------------------------------------------------------- peaks and MFU


@pytest.mark.parametrize(
    "name,dtype,tflops",
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),
        ("NVIDIA H100 80GB HBM3", torch.float16, 989.4),
        ("NVIDIA H200", torch.bfloat16, 989.4),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.5),
        ("NVIDIA H100 NVL", torch.bfloat16, 835.5),
        ("NVIDIA H800 PCIe", torch.bfloat16, 756.5),
        ("NVIDIA H20", torch.bfloat16, 148.0),  # not an H200
        ("NVIDIA A10", torch.float32, 31.2),  # not an A100
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA A100 80GB PCIe", torch.float32, 19.5),
        ("NVIDIA A10G", torch.bfloat16, 125.0),
        ("NVIDIA L4", torch.float16, 121.0),
        ("NVIDIA L40S", torch.bfloat16, 362.05),
        ("Tesla V100-SXM2-16GB", torch.float16, 125.0),
        ("Tesla V100-PCIE-32GB", torch.float16, 112.0),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, None),  # no bf16 tensor cores
        ("Tesla T4", torch.float32, 8.1),
        ("NVIDIA H100 80GB HBM3", torch.float64, None),
        ("NVIDIA GeForce GT 710", torch.float16, None),
    ],
)
def test_peak_table(monkeypatch, name, dtype, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    got = peak_flops_per_second(torch.device("cuda", 0), dtype)
    assert got == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_fp32_peak_follows_tf32_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert peak_flops_per_second("cuda", torch.float32) == pytest.approx(19.5e12)
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores on
        assert peak_flops_per_second("cuda", torch.float32) == pytest.approx(156e12)
    finally:
        torch.set_float32_matmul_precision(before)


def test_no_peak_on_cpu():
    assert peak_flops_per_second("cpu", torch.float32) is None
    assert peak_flops_per_second(torch.device("cpu"), torch.bfloat16) is None


def test_mfu_arithmetic():
    # 8 H100s at 40 % of 989.4 TFLOP/s each, with 6e8 FLOPs per token.
    tokens_per_s = 0.4 * 8 * 989.4e12 / 6e8
    assert mfu(tokens_per_s, 6e8, 8, 989.4e12) == pytest.approx(0.4)
    assert mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
    assert mfu(1000.0, 1e9, 1, None) is None
    assert mfu(1000.0, 1e9, 1, 0.0) is None
