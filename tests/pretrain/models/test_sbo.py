"""SpanBERT's span boundary objective: the head's math, what it reads, its rows' order, the
HF export without it, and that it learns spans fixed by their boundaries."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.models import bert, bert_hf, roberta, roberta_hf
from pretrain.models.common import IGNORE_INDEX
from pretrain.models.sbo import boundary_inputs, sbo_forward
from pretrain.testing import TINY_ENCODER

ARCH = {
    "bert": (bert, bert_hf, dict(type_vocab_size=2, pad_token_id=0)),
    "roberta": (roberta, roberta_hf, dict(type_vocab_size=1, pad_token_id=1)),
}


def model(arch: str, seed: int = 0, **kw):
    mod, _, own = ARCH[arch]
    torch.manual_seed(seed)
    return mod.Model(mod.Config(**{**TINY_ENCODER, **own, "sbo": True, **kw})).eval()


def batch():
    """Two rows of 12: spans at 3-5 and 8 (row 0), 1-2 and 10-11 (row 1, at the row end)."""
    torch.manual_seed(1)
    ids = torch.randint(5, 97, (2, 12))
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r, spans in ((0, [(3, 5), (8, 8)]), (1, [(1, 2), (10, 11)])):
        for s, e in spans:
            labels[r, s : e + 1] = ids[r, s : e + 1]
    left = torch.full_like(ids, -1)
    right = torch.full_like(ids, -1)
    for r, spans in ((0, [(3, 5), (8, 8)]), (1, [(1, 2), (10, 11)])):
        for s, e in spans:
            left[r, s : e + 1] = s - 1
            right[r, s : e + 1] = e + 1 if e + 1 < 12 else -1  # the row end: no boundary
    return ids, torch.ones_like(ids), labels, left, right


def test_head_math_equals_a_direct_reimplementation():
    m = model("roberta")
    ids, att, labels, left, right = batch()
    h = torch.randn(2, 12, 32)
    out = sbo_forward(m, h, labels, left, right, m.roberta.embeddings.word_embeddings.weight)
    head, words = m.sbo, m.roberta.embeddings.word_embeddings.weight
    total, correct = 0.0, 0
    for r, i in (labels != IGNORE_INDEX).nonzero().tolist():
        lo, hi = int(left[r, i]), int(right[r, i])
        hl = h[r, lo] if lo >= 0 else torch.zeros(32)
        hr = h[r, hi] if hi >= 0 else torch.zeros(32)
        x = torch.cat([hl, hr, head.position_embeddings.weight[i - lo]])
        x = F.layer_norm(
            F.gelu(x @ head.dense1.weight.T + head.dense1.bias),
            (32,),
            head.layer_norm1.weight,
            head.layer_norm1.bias,
            1e-5,
        )
        x = F.layer_norm(
            F.gelu(x @ head.dense2.weight.T + head.dense2.bias),
            (32,),
            head.layer_norm2.weight,
            head.layer_norm2.bias,
            1e-5,
        )
        logits = x @ words.T + head.bias
        total += F.cross_entropy(logits[None], labels[r, i][None]).item()
        correct += int(logits.argmax() == labels[r, i])
    torch.testing.assert_close(out["sbo_loss_sum"].item(), total, rtol=1e-5, atol=1e-5)
    assert int(out["sbo_correct"]) == correct


def test_the_head_reads_only_the_boundaries():
    """The masked tokens' own states (and every other non-boundary state) get no gradient."""
    m = model("bert")
    ids, att, labels, left, right = batch()
    h = torch.randn(2, 12, 32, requires_grad=True)
    sbo_forward(m, h, labels, left, right, m.bert.embeddings.word_embeddings.weight)[
        "sbo_loss_sum"
    ].backward()
    touched = h.grad.abs().sum(-1) > 0  # (2, 12)
    boundary = torch.zeros(2, 12, dtype=torch.bool)
    for r in range(2):
        for at in torch.cat([left[r], right[r]]).tolist():
            if at >= 0:
                boundary[r, at] = True
    assert torch.equal(touched, boundary)
    assert not touched[labels != IGNORE_INDEX].any()


def test_fixed_capacity_rows_are_the_exact_rows_in_the_same_order():
    ids, att, labels, left, right = batch()
    h = torch.randn(2, 12, 32)
    exact = boundary_inputs(h, labels, left, right)
    fixed = boundary_inputs(h, labels, left, right, capacity=6)
    keep = fixed[3] != IGNORE_INDEX
    assert int(keep.sum()) == len(exact[3])
    for a, b in zip(exact, fixed, strict=True):
        torch.testing.assert_close(b[keep], a)
    assert exact[2].tolist() == [1, 2, 3, 1, 1, 2, 1, 2]  # places in the span, 1-based


def test_model_forward_adds_sbo_sums_and_refuses_batches_without_boundaries():
    m = model("bert")
    ids, att, labels, left, right = batch()
    out = m(ids, att, labels, span_left=left, span_right=right)
    assert out["sbo_loss_sum"] > 0 and out["mlm_count"] == 8
    with pytest.raises(ValueError, match="masking.boundaries = true"):
        m(ids, att, labels)
    plain = model("bert", sbo=False)
    assert "sbo_loss_sum" not in plain(ids, att, labels)
    assert not any(k.startswith("sbo.") for k in plain.state_dict())


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_export_is_the_backbone_and_reimports_with_identical_logits(arch, tmp_path):
    m = model(arch)
    _, conv, _ = ARCH[arch]
    conv.export_hf(m, tmp_path)
    back = conv.import_hf(tmp_path).eval()
    assert back.config.sbo is False and not hasattr(back, "sbo")
    ids, att, *_ = batch()
    torch.testing.assert_close(back.mlm_logits(ids, att), m.mlm_logits(ids, att))
    again = conv.import_hf(tmp_path, sbo=True)  # init_from with SBO: a fresh head
    assert again.sbo.bias.abs().sum() == 0


def test_sbo_learns_spans_fixed_by_their_boundaries():
    """Rows `<s> a x1 x2 x3 b` where x_k = f(a, b, k): the masked span is predictable from its
    boundaries alone, so the SBO loss falls close to zero."""
    torch.manual_seed(0)
    m = model("roberta", seed=0).train()
    steps = 400
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    losses = []
    for _ in range(steps):
        a = torch.randint(10, 20, (16,))
        b = torch.randint(20, 30, (16,))
        span = torch.stack([a + 40, b + 40, a + 60], dim=1)  # x_k from (a, b, k) only
        ids = torch.cat([torch.full((16, 1), 2), a[:, None], span, b[:, None]], dim=1)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, 2:5] = ids[:, 2:5]
        masked = ids.clone()
        masked[:, 2:5] = 4  # the mask id: the span's content is hidden
        left = torch.full_like(ids, -1)
        right = torch.full_like(ids, -1)
        left[:, 2:5], right[:, 2:5] = 1, 5
        out = m(masked, torch.ones_like(ids), labels, span_left=left, span_right=right)
        loss = out["sbo_loss_sum"] / out["mlm_count"]
        opt.zero_grad()
        (loss + out["mlm_loss_sum"] / out["mlm_count"]).backward()
        opt.step()
        decay.step()
        losses.append(loss.item())
    assert losses[0] > 3.0 and sum(losses[-10:]) / 10 < 0.05, (losses[0], losses[-10:])
