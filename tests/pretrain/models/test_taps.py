"""Taps (``pretrain.models.taps``): what BERT, RoBERTa and DeBERTa record for distillation.

Against HF's ``output_hidden_states`` / ``output_attentions`` (eager attention, weights
exported with each architecture's ``*_hf.export_hf``); recording leaves the losses unchanged;
the recorded logits are ``mlm_logits`` at the labelled positions; packed documents and
padding are masked at the dtype minimum in the recorded scores.
"""

from __future__ import annotations

import pytest
import torch

from pretrain.models import bert, bert_hf, deberta, deberta_hf, roberta, roberta_hf
from pretrain.models.taps import Taps
from pretrain.testing import TINY_ENCODER

transformers = pytest.importorskip("transformers")

V, T, LAYERS = 97, 24, 2
TINY = dict(TINY_ENCODER, vocab_size=V, num_hidden_layers=LAYERS)
ARCH = {  # module, conversion module, HF class, config fields of our own
    "bert": (bert, bert_hf, "BertForPreTraining", dict(type_vocab_size=2, pad_token_id=0)),
    "roberta": (
        roberta,
        roberta_hf,
        "RobertaForMaskedLM",
        dict(type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5),
    ),
    "deberta": (
        deberta,
        deberta_hf,
        "DebertaV2ForMaskedLM",
        dict(objective="mlm", position_buckets=8, pad_token_id=0),
    ),
}
HF_CASES = {  # name -> (architecture, config overrides); each has an HF twin
    "bert": ("bert", {}),
    "roberta": ("roberta", {}),
    "deberta": ("deberta", {}),  # log buckets: 8 per side, sequences of 24
    "deberta-separate-keys": ("deberta", {"share_att_key": False}),
    "deberta-no-buckets": ("deberta", {"position_buckets": -1, "max_relative_positions": 16}),
}
CASES = {  # + variants HF cannot run: flex attention (the plain path records), EMD
    **HF_CASES,
    "deberta-flex": ("deberta", {"attention_impl": "flex"}),
    "deberta-emd": ("deberta", {"emd": True}),
}


def ours(case: str):
    arch, kw = CASES[case]
    mod, _, _, own = ARCH[arch]
    torch.manual_seed(0)
    model = mod.Model(mod.Config(**{**TINY, **own, **kw})).eval()
    with torch.no_grad():  # biases and LayerNorms away from their initial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_twin(case: str, model, tmp_path):
    _, conv, cls, _ = ARCH[HF_CASES[case][0]]
    conv.export_hf(model, tmp_path / case)
    hf_cls = getattr(transformers, cls)
    return hf_cls.from_pretrained(tmp_path / case, attn_implementation="eager").eval()


def batch(pad: int, packed: bool = False):
    """Row 0 full, row 1 right-padded from 16, row 2 full; ~30 % of real tokens labelled.
    ``packed``: segment ids with two documents in rows 0 and 1 (padding 0), three in row 2."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, T), generator=g)
    attn = torch.ones_like(ids)
    ids[1, 16:], attn[1, 16:] = pad, 0
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & attn.bool(), ids, -100)
    labels[:, 2] = ids[:, 2]  # every row predicts something
    seg = None
    if packed:
        docs = [[1] * 10 + [2] * 14, [1] * 7 + [2] * 9 + [0] * 8, [1] * 8 + [2] * 8 + [3] * 8]
        seg = torch.tensor(docs)
    return ids, attn, labels, seg


def pad_of(model) -> int:
    return model.config.pad_token_id


def by_query(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, K) -> (B, T, H, K), so that a (B, T) query mask selects whole rows."""
    return x.transpose(1, 2)


@pytest.mark.parametrize("case", list(HF_CASES))
def test_scores_and_hidden_states_match_hf(case, tmp_path):
    model = ours(case)
    hf = hf_twin(case, model, tmp_path)
    ids, attn, labels, _ = batch(pad_of(model))
    taps = Taps(scores=True)
    with torch.no_grad():
        model(ids, attn, labels, taps=taps)
        ref = hf(
            input_ids=ids, attention_mask=attn, output_hidden_states=True, output_attentions=True
        )
    real = attn.bool()  # HF's padded query rows may differ (masking conventions): not read
    assert len(taps.hidden) == LAYERS + 1 == len(ref.hidden_states)
    for i, (h, r) in enumerate(zip(taps.hidden, ref.hidden_states, strict=True)):
        assert h.shape == r.shape
        torch.testing.assert_close(h[real], r[real], atol=2e-6, rtol=0, msg=f"hidden {i}")
    assert len(taps.attention) == LAYERS == len(ref.attentions)
    for i, (s, r) in enumerate(zip(taps.attention, ref.attentions, strict=True)):
        assert s.shape == r.shape == (3, 4, T, T)
        probs = by_query(s.softmax(-1))[real]  # scores are pre-softmax: HF's probabilities
        torch.testing.assert_close(probs, by_query(r)[real], atol=1e-6, rtol=0, msg=f"attn {i}")
        assert not torch.allclose(s.softmax(-1), s)  # really scores, not probabilities


def sums(model, ids, attn, labels, seg, taps):
    with torch.no_grad():
        return model(ids, attn, labels, seg, taps=taps)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_recording_does_not_change_the_sums(case, packed):
    model = ours(case)
    ids, attn, labels, seg = batch(pad_of(model), packed)
    plain = sums(model, ids, attn, labels, seg, None)
    quiet, loud = Taps(scores=False), Taps(scores=True)
    without_scores = sums(model, ids, attn, labels, seg, quiet)
    with_scores = sums(model, ids, attn, labels, seg, loud)
    assert plain.keys() == without_scores.keys() == with_scores.keys()
    assert {"mlm_loss_sum", "mlm_correct", "mlm_count"} <= plain.keys()
    for k in plain:  # scores=False: the same kernels (SDPA / flex), bit for bit
        assert torch.equal(without_scores[k], plain[k]), k
        # scores=True: the explicit path; integer counts must agree exactly
        torch.testing.assert_close(with_scores[k].float(), plain[k].float(), atol=1e-5, rtol=0)
    assert quiet.attention == []
    depth = LAYERS if getattr(model.config, "emd", False) else LAYERS + 1  # EMD: before the last
    assert len(quiet.hidden) == len(loud.hidden) == depth
    assert len(loud.attention) == depth - 1
    for a, b in zip(quiet.hidden, loud.hidden, strict=True):
        torch.testing.assert_close(a[attn.bool()], b[attn.bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("capacity", [None, 12])
@pytest.mark.parametrize("case", ["bert", "roberta", "deberta", "deberta-emd"])
def test_logits_and_targets_are_the_labelled_positions(case, capacity):
    model = ours(case)
    model.predict_capacity = capacity
    ids, attn, labels, seg = batch(pad_of(model), packed=True)
    sel = labels != -100
    taps = Taps()
    with torch.no_grad():
        out = model(ids, attn, labels, seg, taps=taps)
        full = model.mlm_logits(ids, attn, seg)  # (B, T, V)
    n = int(sel.sum())
    assert taps.logits is not None and taps.targets is not None
    if capacity is None:
        assert taps.logits.shape == (n, V) and taps.targets.shape == (n,)
        valid = torch.ones(n, dtype=torch.bool)
    else:  # fixed capacity: B * K rows, padding slots with target -100
        assert taps.logits.shape == (3 * capacity, V) and taps.targets.shape == (3 * capacity,)
        valid = taps.targets != -100
        assert int(valid.sum()) == n
    # row-major order: full[sel] walks rows, then positions
    torch.testing.assert_close(taps.logits[valid], full[sel], atol=1e-5, rtol=0)
    assert torch.equal(taps.targets[valid], labels[sel])
    assert out["mlm_count"].item() == n
    assert (taps.logits[valid] - full[sel].roll(1, 0)).abs().max() > 1e-3  # order matters


@pytest.mark.parametrize("case", ["bert", "roberta", "deberta", "deberta-flex"])
def test_packed_documents_and_padding_are_masked_at_the_minimum(case):
    model = ours(case)
    ids, attn, labels, seg = batch(pad_of(model), packed=True)
    taps = Taps(scores=True)
    with torch.no_grad():
        model(ids, attn, labels, seg, taps=taps)
    real = attn.bool()
    allowed = (seg[:, :, None] == seg[:, None, :]) & real[:, None, :]  # (B, Tq, Tk)
    assert allowed.any(-1)[real].all() and not allowed.all()  # the test masks something
    assert len(taps.attention) == LAYERS
    for i, s in enumerate(taps.attention):
        assert s.dtype == torch.float32
        low = by_query(s == torch.finfo(s.dtype).min)  # (B, Tq, H, Tk)
        want = ~allowed[:, :, None, :].expand_as(low)
        # real queries: minimum exactly where the key is another document's or padding
        assert torch.equal(low[real], want[real]), f"layer {i}"
        assert by_query(s).isfinite()[real].all(), f"layer {i}"
        # padding queries (never read): no real key is visible to them
        assert (low | ~real[:, None, None, :])[~real].all(), f"layer {i}"
        # and the probabilities of masked keys are exactly zero
        probs = by_query(s.softmax(-1))[real]
        assert (probs[want[real]] == 0).all() and (probs[~want[real]] > 0).all()
