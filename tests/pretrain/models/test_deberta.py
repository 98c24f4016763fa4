"""DeBERTa-v3 model: config, presets and parameter counts, EMD, GDES, packing, RTD sampling."""

import pytest
import torch

from pretrain.models import build_model, find_preset
from pretrain.models.common import sample_replacements
from pretrain.models.deberta import PRESETS, Config, Model, _document_first, param_counts
from pretrain.testing import random_masked_batch

V = 120
SMALL = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    position_buckets=8,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def model(**kw) -> Model:
    torch.manual_seed(0)
    m = Model(Config(**{**SMALL, **kw})).eval()
    with torch.no_grad():  # LayerNorms and biases away from their identity initialisation
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def batch(length=24, rows=3, rate=0.3, seed=1):
    return random_masked_batch(V, length, rows, rate, seed)


# ----------------------------------------------------------------------------- config, presets


def test_config_validation_and_defaults():
    c = Config(**SMALL)
    assert c.objective == "rtd" and c.generator_num_hidden_layers == 1
    assert c.generator_hidden_size == 32 and c.relative_range == 64
    with pytest.raises(TypeError, match="not_a_field"):
        Config(not_a_field=1)
    for kw, match in [
        ({"attention_impl": "flex", "attention_probs_dropout_prob": 0.1}, "dropout"),
        ({"generator_hidden_size": 16}, "GDES"),
        ({"objective": "electra"}, "objective"),
        ({"hidden_size": 30}, "divisible"),
        ({"position_buckets": 200}, "position_buckets"),
        ({"pad_token_id": V}, "pad_token_id"),
    ]:
        with pytest.raises(ValueError, match=match):
            Config(**{**SMALL, **kw})
    m = build_model("deberta", "deberta-debug", vocab_size=300)
    assert m.config.vocab_size == 300 and find_preset("deberta-v3-base")[0] == "deberta"


# Official microsoft/deberta-v3-* configs and their model cards' figures (backbone,
# embedding): only those within 0.5 % are asserted; the report shows the arithmetic.
CARDS = {
    "deberta-v3-xsmall": (22e6, 48e6),
    "deberta-v3-small": (44e6, 98e6),
    "deberta-v3-base": (86e6, 98e6),
    "deberta-v3-large": (304e6, 131e6),
}
WITHIN_HALF_PERCENT = {
    ("deberta-v3-small", "embedding"),
    ("deberta-v3-base", "embedding"),
    ("deberta-v3-large", "embedding"),
    ("deberta-v3-large", "backbone"),
}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_preset_counts_equal_hf_and_model_cards(name):
    transformers = pytest.importorskip("transformers")
    kw = PRESETS[name]
    with torch.device("meta"):
        ours = Model(Config(**kw))
    hf_kw = dict(
        vocab_size=128100,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=256,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    )
    hf_kw.update(kw)
    cfg = transformers.DebertaV2Config(**hf_kw)
    gen_cfg = transformers.DebertaV2Config(
        **{**hf_kw, "legacy": False, "num_hidden_layers": cfg.num_hidden_layers // 2}
    )
    with torch.device("meta"):
        hf_disc = transformers.DebertaV2Model(cfg)
        hf_gen = transformers.DebertaV2ForMaskedLM(gen_cfg)
    counts = param_counts(ours)
    n_disc = sum(p.numel() for p in hf_disc.parameters())
    assert counts["embedding"] == 128100 * cfg.hidden_size
    assert counts["embedding"] + counts["backbone"] == n_disc
    h = cfg.hidden_size
    rtd_head = h * h + h + 2 * h + h + 1  # dense, LayerNorm, classifier
    assert counts["total"] == n_disc + sum(p.numel() for p in hf_gen.parameters()) + rtd_head
    for i, key in enumerate(("backbone", "embedding")):
        if (name, key) in WITHIN_HALF_PERCENT:
            assert abs(counts[key] / CARDS[name][i] - 1) <= 0.005, (name, key, counts[key])


def test_debug_preset_runs_both_objectives():
    ids, mask, labels = batch()
    for objective in ("mlm", "rtd"):
        m = build_model("deberta", "deberta-debug", vocab_size=V, objective=objective)
        out = m(ids, mask, labels)
        assert out["mlm_count"] == (labels != -100).sum() and torch.isfinite(out["mlm_loss_sum"])
        if objective == "rtd":
            assert out["rtd_count"] == mask.sum()
        assert m.mlm_logits(ids, mask).shape == (*ids.shape, V)


# ----------------------------------------------------------------------------- EMD


def test_emd_changes_predictions_and_sparse_queries_match_full():
    m = model(objective="mlm", emd=True, max_position_embeddings=128)
    ids, mask, labels = batch(length=70, rate=0.15)  # > EMD_QUERY_MULTIPLE positions
    full = m.mlm_logits(ids, mask)  # EMD on every position
    assert (full - m.mlm_logits(ids, mask, emd=False)).abs().max() > 1e-2
    out = m(ids, mask, labels)  # EMD on the predicted positions only
    sel = labels != -100
    ref = torch.nn.functional.cross_entropy(full[sel], labels[sel], reduction="sum")
    torch.testing.assert_close(out["mlm_loss_sum"], ref, atol=1e-4, rtol=1e-5)
    none = m(ids, mask, torch.full_like(labels, -100))
    assert none["mlm_count"] == 0 and none["mlm_loss_sum"] == 0
    with pytest.raises(ValueError, match="without EMD"):
        model(objective="mlm").mlm_logits(ids, mask, emd=True)


def test_emd_trains_on_a_tiny_overfit():
    m = model(objective="mlm", emd=True).train()
    ids, mask, labels = batch(length=16, rows=4, rate=0.4)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = m(ids, mask, labels)
        loss = out["mlm_loss_sum"] / out["mlm_count"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert m.deberta.embeddings.position_embeddings.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("emd", [False, True])
def test_segments_keep_documents_apart(emd):
    m = model(objective="mlm", emd=emd)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(5, V, (7,), generator=g), torch.randint(5, V, (9,), generator=g)
    pad = torch.zeros(4, dtype=torch.long)
    ids = torch.cat([a, b, pad])[None]
    seg = torch.tensor([[1] * 7 + [2] * 9 + [0] * 4])
    mask = (seg > 0).long()
    packed = m.mlm_logits(ids, mask, seg)[0]
    alone_a = m.mlm_logits(a[None], torch.ones(1, 7, dtype=torch.long))[0]
    alone_b = m.mlm_logits(b[None], torch.ones(1, 9, dtype=torch.long))[0]
    # Relative attention is shift-invariant and EMD positions restart per document.
    torch.testing.assert_close(packed[:7], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[7:16], alone_b, atol=1e-5, rtol=0)
    changed = ids.clone()
    changed[0, 7:16] = torch.randint(5, V, (9,), generator=g)
    assert torch.equal(m.mlm_logits(changed, mask, seg)[0, :7], packed[:7])


# ----------------------------------------------------------------------------- RTD and GDES


def test_gdes_gradient_flow():
    m = model(objective="rtd", emd=True).train()
    ids, mask, labels = batch()
    gen_words = m.generator.deberta.embeddings.word_embeddings.weight
    delta = m.deberta.embeddings.word_embeddings_delta
    disc_layer = m.deberta.encoder.layer[0].attention.self.query_proj.weight
    gen_layer = m.generator.deberta.encoder.layer[0].attention.self.query_proj.weight

    def grads(loss_key):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        m(ids, mask, labels)[loss_key].backward()
        return [
            None if p.grad is None else p.grad.abs().sum().item()
            for p in (gen_words, delta, disc_layer, gen_layer)
        ]

    g_words, g_delta, g_disc, g_gen = grads("rtd_loss_sum")
    assert g_words in (None, 0.0) and g_gen in (None, 0.0)  # nothing reaches the generator
    assert g_delta > 0 and g_disc > 0
    g_words, g_delta, g_disc, g_gen = grads("mlm_loss_sum")
    assert g_words > 0 and g_gen > 0
    assert g_delta in (None, 0.0) and g_disc in (None, 0.0)
    fresh = Model(Config(**SMALL)).deberta.embeddings.word_embeddings_delta
    assert torch.count_nonzero(fresh) == 0  # GDES delta starts at zero


def test_rtd_replaces_only_predicted_positions():
    m = model(objective="rtd")
    ids, mask, labels = batch(length=30, rate=0.3)
    seen = {}

    def capture(module, args):
        seen["ids"] = args[0].clone()  # the discriminator's input

    hook = m.deberta.embeddings.register_forward_pre_hook(capture)
    torch.manual_seed(3)
    out = m(ids, mask, labels)
    disc_ids, sel = seen.pop("ids"), labels != -100
    assert torch.equal(disc_ids[~sel], ids[~sel])
    replaced = (disc_ids != labels) & sel
    assert out["replaced_count"] == (replaced & mask.bool()).sum()
    assert out["rtd_count"] == mask.sum() and 0 < out["replaced_count"] <= sel.sum()
    # A generator that always proposes token 9: every predicted position gets token 9 and
    # counts as replaced exactly when the original was not 9.
    with torch.no_grad():
        m.generator.lm_predictions.lm_head.bias[9] = 1e4
    labels[0, 0], ids[0, 0] = 9, 4
    out = m(ids, mask, labels)
    disc_ids = seen.pop("ids")
    hook.remove()
    assert torch.all(disc_ids[labels != -100] == 9)
    assert out["replaced_count"] == ((labels != -100) & (labels != 9)).sum()


def test_replacements_follow_the_generator_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = probs.clamp_min(1e-30).log().expand(20000, 4)
    freq = torch.bincount(sample_replacements(logits), minlength=4) / 20000
    assert torch.allclose(freq, probs, atol=0.015), freq


def test_document_first_token():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0, 0], [3, 3, 3, 3, 3, 3, 3]])
    assert _document_first(seg, 7, "cpu").tolist() == [[0, 0, 2, 2, 2, 5, 5], [0] * 7]
    assert _document_first(None, 4, "cpu").tolist() == [[0] * 4]


def test_bf16_forward_and_backward():
    m = model(objective="rtd", emd=True).to(torch.bfloat16).train()
    ids, mask, labels = batch()
    out = m(ids, mask, labels)
    assert all(torch.isfinite(out[k]) for k in ("mlm_loss_sum", "rtd_loss_sum"))
    (out["mlm_loss_sum"] + 50 * out["rtd_loss_sum"]).backward()
    assert m.deberta.embeddings.word_embeddings_delta.grad.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "objective,emd,fixed",
    [("mlm", False, False), ("mlm", False, True), ("mlm", True, False), ("rtd", False, True)],
)
def test_vocabulary_projection_sees_only_predicted_rows(objective, emd, fixed):
    """The MLM head (the generator's for RTD; after EMD when on) gets (N, C), not (B*T, C)."""
    m = model(objective=objective, emd=emd)
    ids, mask, labels = batch()
    per_row = (labels != -100).sum(1)
    if fixed:
        m.predict_capacity = int(per_row.max())
    rows = ids.shape[0] * m.predict_capacity if fixed else int(per_row.sum())
    seen = []
    head = m.mlm_part.lm_predictions.lm_head
    head.register_forward_hook(lambda mod, a, out: seen.append((a[0].shape, out.shape)))
    out = m(ids, mask, labels)
    assert seen == [((rows, SMALL["hidden_size"]), (rows, V))]
    assert rows < ids.numel() and out["mlm_count"] == per_row.sum()
