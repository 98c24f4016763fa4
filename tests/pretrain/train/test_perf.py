"""Performance knobs (pretrain.train.perf): every fast path matches the plain one.

- the fixed-capacity gather selects exactly the rows ``nonzero`` selects, in the same order;
- the capacity "auto" derives from the masking is a real bound on the loader's masks;
- each model's forward and gradients with a fixed capacity equal the exact path's (RTD
  sampling made deterministic, since the two paths draw different random numbers);
- torch.compile'd blocks give the eager outputs and gradients.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from data_pipeline.masking import MaskingConfig, mask_batch, row_keys
from pretrain.models import build_model, common, deberta, electra
from pretrain.train.perf import (
    PerfConfig,
    apply_perf,
    compile_available,
    compile_modules,
    predict_capacity,
    set_predict_capacity,
)

VOCAB = 300


def _batch(seed: int, b: int = 3, t: int = 48, p: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < p, ids, -100)
    labels[0] = -100  # a row with nothing to predict
    attn = torch.ones_like(ids)
    attn[1, t - 9 :] = 0  # padding
    labels[1, t - 9 :] = -100
    seg = torch.ones_like(ids)
    seg[:, t // 2 :] = 2  # two packed documents per row
    return ids, attn, labels, seg


def test_fixed_gather_equals_nonzero_gather():
    ids, _, labels, _ = _batch(0)
    hidden = torch.randn(*ids.shape, 8)
    h, t = common.gather_predicted(hidden, labels)
    cap = int((labels != -100).sum(1).max()) + 3
    hf, tf, pos, valid = common.gather_predicted_fixed(hidden, labels, cap)
    assert hf.shape == (ids.shape[0] * cap, 8) and pos.shape == valid.shape == (3, cap)
    keep = tf != -100
    assert torch.equal(hf[keep], h) and torch.equal(tf[keep], t)
    assert int(valid.sum()) == len(t)
    # Padding slots point at unlabelled positions, so scattering back changes nothing there.
    assert not (labels.gather(1, pos) != -100)[~valid].any()


def test_fixed_gather_refuses_overflow():
    _, _, labels, _ = _batch(1)
    most = int((labels != -100).sum(1).max())
    with pytest.raises(ValueError, match="predict_capacity"):
        common.gather_predicted_fixed(torch.zeros(*labels.shape, 4), labels, most - 1)


@pytest.mark.parametrize("mask_prob", [0.15, 0.25, 0.4, 1.0])
@pytest.mark.parametrize("seq", [37, 128, 512])
def test_auto_capacity_bounds_the_masking(mask_prob, seq):
    cfg = MaskingConfig(mask_prob=mask_prob)
    rng = np.random.default_rng(seq)
    rows = 256
    ids = rng.integers(5, 1000, size=(rows, seq))
    maskable = np.ones_like(ids, dtype=bool)
    maskable[:, 0] = False  # [cls]
    ws = np.ones_like(maskable)
    out = mask_batch(ids, ws, maskable, row_keys(7, 0, np.arange(rows)), cfg, 4, np.arange(5, 1000))
    _, labels = out
    assert (labels != -100).sum(1).max() <= predict_capacity(cfg, seq)
    assert predict_capacity(MaskingConfig(kind="wwm"), seq) is None


def test_apply_perf_and_config():
    model = build_model("roberta", "roberta-debug", vocab_size=VOCAB)
    auto = PerfConfig(predict_capacity="auto")
    info = apply_perf(model, auto, MaskingConfig(mask_prob=0.15), 128)
    assert info == {"predict_capacity": 20, "compiled_modules": 0}
    assert model.predict_capacity == 20
    apply_perf(model, auto, MaskingConfig(kind="span"), 128)
    assert model.predict_capacity is None  # no bound: the exact path
    apply_perf(model, PerfConfig(), MaskingConfig(), 128)  # the default: exact path
    assert model.predict_capacity is None
    with pytest.raises(ValueError, match="predict_capacity"):
        PerfConfig(predict_capacity="always")
    with pytest.raises(ValueError, match="compile_mode"):
        PerfConfig(compile_mode="fast")


def _pair(arch: str, **overrides):
    torch.manual_seed(0)
    kw = dict(vocab_size=VOCAB, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    plain = build_model(arch, f"{arch}-debug", **kw, **overrides)
    fast = copy.deepcopy(plain)
    return plain, fast


def _run(model, batch, seed: int = 5):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(*batch)
    loss = out["mlm_loss_sum"] + out.get("rtd_loss_sum", 0.0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def _assert_same(a, b, atol=1e-5):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert out_a.keys() == out_b.keys()
    for k in out_a:
        torch.testing.assert_close(out_a[k].double(), out_b[k].double(), rtol=1e-5, atol=atol)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-4, atol=atol, msg=n)


def _argmax_sampling(monkeypatch):
    """The two paths draw different random numbers: make RTD replacements deterministic."""
    pick = torch.no_grad()(lambda logits: logits.float().argmax(-1))
    monkeypatch.setattr(electra, "sample_replacements", pick)
    monkeypatch.setattr(deberta, "sample_replacements", pick)


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("roberta", {}),
        ("electra", {}),
        ("deberta", {"objective": "mlm"}),
        ("deberta", {"objective": "mlm", "emd": True}),
        ("deberta", {"objective": "rtd"}),
    ],
    ids=["roberta", "electra", "deberta-mlm", "deberta-emd", "deberta-rtd"],
)
def test_fixed_capacity_matches_exact_path(arch, overrides, monkeypatch):
    _argmax_sampling(monkeypatch)
    plain, fast = _pair(arch, **overrides)
    batch = _batch(2)
    set_predict_capacity(fast, int((batch[2] != -100).sum(1).max()) + 2)
    for segments in (batch, batch[:3]):  # packed documents, and whole-row attention
        _assert_same(_run(plain, segments), _run(fast, segments))


@pytest.mark.skipif(not compile_available()[0], reason=compile_available()[1] or "no compiler")
@pytest.mark.parametrize("arch, overrides", [("roberta", {}), ("deberta", {"objective": "rtd"})])
def test_compiled_blocks_match_eager(arch, overrides, monkeypatch):
    """Inductor on CPU (~15 s per architecture on a cold cache): same outputs and gradients."""
    _argmax_sampling(monkeypatch)
    eager, compiled = _pair(arch, **overrides)
    batch = _batch(3)
    cap = int((batch[2] != -100).sum(1).max())
    set_predict_capacity(eager, cap)
    set_predict_capacity(compiled, cap)
    assert compile_modules(compiled) > 0
    assert compile_modules(compiled) == 0  # idempotent: nothing compiled twice
    _assert_same(_run(eager, batch), _run(compiled, batch), atol=1e-4)
    # Parameter names (checkpoints, HF export) are untouched by compilation.
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_training_with_the_perf_table_keeps_the_losses(tmp_path):
    """``[perf]`` in a run config reaches the session's model; same losses as the exact path."""
    from pretrain.config import ConfigError
    from pretrain.testing import debug_config, losses, synthetic_shards
    from pretrain.train import train

    shards = synthetic_shards(tmp_path / "shards")
    common = [
        "max_steps=3",
        "checkpoint.export_hf=false",
        "eval.every_steps=0",
        "eval.at_end=false",
        "logging.every_steps=1",
        "model.overrides.hidden_dropout_prob=0.0",
        "model.overrides.attention_probs_dropout_prob=0.0",
    ]
    exact = train(debug_config("roberta", shards, tmp_path / "exact", *common))
    fixed = train(
        debug_config("roberta", shards, tmp_path / "fixed", *common, "perf.predict_capacity=auto")
    )
    assert exact.perf["predict_capacity"] is None
    assert fixed.perf == {"predict_capacity": 10, "compiled_modules": 0}  # 15 % of 64, + 1
    want, got = losses(tmp_path / "exact"), losses(tmp_path / "fixed")
    assert list(got) == [1, 2, 3]
    for step in want:  # same terms, another summation order
        assert abs(got[step] - want[step]) <= 1e-6 * abs(want[step])
    with pytest.raises(ConfigError, match="perf.compile_mode must be one of"):
        debug_config("roberta", shards, tmp_path / "bad", "perf.compile_mode=fast")
