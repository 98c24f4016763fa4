"""Training-time parity with transformers (issue "Training quality at equal compute"): what
the quality bench ruled out as causes of a gap stays ruled out.

- with dropout on, the same weights and the same RNG state give the same loss and gradients
  as ``RobertaForMaskedLM`` (same dropout sites, same draws);
- our initialisation has HF's statistics (N(0, 0.02) matrices, zero biases and padding rows,
  unit LayerNorms, zero MLM bias), parameter by parameter;
- weight decay excludes exactly what the HF Trainer excludes (biases, LayerNorm weights);
- our linear schedule is HF's ``get_linear_schedule_with_warmup`` one step earlier during
  warm-up (our first step trains at lr/W, HF's at 0) and identical after it.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from pretrain.models import roberta, roberta_hf
from pretrain.optim import lr_multiplier, param_groups

transformers = pytest.importorskip("transformers")

KW = dict(roberta.PRESETS["roberta-debug"], vocab_size=300, pad_token_id=1)


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    ours = roberta.Model(roberta.Config(**KW))
    with tempfile.TemporaryDirectory() as d:
        roberta_hf.export_hf(ours, d)
        hf = transformers.RobertaForMaskedLM.from_pretrained(d)
    return ours.train(), hf.train()  # from_pretrained returns eval mode: dropout off


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (4, 48), generator=g)
    ids[:, 0] = 0
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, -100)
    labels[:, 0] = -100
    return ids, torch.ones_like(ids), labels


def test_training_step_with_dropout_matches_hf():
    ours, hf = _pair()
    ids, attn, labels = _batch()
    torch.manual_seed(123)
    out = ours(ids, attn, labels)
    loss_ours = out["mlm_loss_sum"] / out["mlm_count"]
    loss_ours.backward()
    torch.manual_seed(123)
    loss_hf = hf(input_ids=ids, attention_mask=attn, labels=labels).loss
    loss_hf.backward()
    torch.testing.assert_close(loss_ours, loss_hf, rtol=1e-5, atol=1e-6)
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_initialisation_statistics_match_hf():
    torch.manual_seed(0)
    ours = roberta.Model(roberta.Config(**KW))
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(
        transformers.RobertaConfig(**roberta_hf.hf_config(ours.config))
    )
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        q = theirs[name].detach()
        assert p.shape == q.shape, name
        if p.ndim == 1:  # biases, LayerNorms: constants, equal exactly
            assert torch.equal(p.detach(), q), name
        else:  # N(0, 0.02) on both sides: compare each with it (sampling error ~ 1/sqrt(n))
            tol = 0.01 + 4 / p.numel() ** 0.5
            for t in (p.detach(), q):
                assert t.std().item() == pytest.approx(0.02, rel=tol), name
                assert abs(t.mean().item()) < 0.02 * tol, name
    for table in ("word_embeddings", "position_embeddings"):
        pad = getattr(ours.roberta.embeddings, table).weight[1]
        assert torch.equal(pad, torch.zeros_like(pad)), table


def test_weight_decay_excludes_what_the_hf_trainer_excludes():
    ours, _ = _pair()
    groups = param_groups(ours, 0.01)
    no_decay = {id(p) for p in groups[1]["params"]}
    for name, p in ours.named_parameters():
        hf_excludes = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        assert (id(p) in no_decay) == hf_excludes, name


def test_linear_schedule_is_hf_one_step_earlier_in_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = transformers.get_linear_schedule_with_warmup(
        opt, num_warmup_steps=10, num_training_steps=100
    )
    theirs = []
    for _ in range(101):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        hf.step()
    ours = lr_multiplier("linear", 10, 100)
    for s in range(10):
        assert ours(s) == pytest.approx(theirs[s + 1])
    for s in range(10, 101):
        assert ours(s) == pytest.approx(theirs[s], abs=1e-12)
