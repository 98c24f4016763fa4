"""DeBERTa-v3's embedding sharing for RTD: ES, NES, GDES (config, parameters, gradient flow,
the embedding-cosine diagnostic, parameter counts, HF export/import)."""

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pretrain.models.deberta import Config, Model, param_counts
from pretrain.models.deberta_hf import export_hf, import_hf
from pretrain.models.deberta_rtd import embedding_cosine, sharing_diagnostics, within_table_cosine
from pretrain.testing import TINY_ENCODER, random_masked_batch

V = 120
SMALL = dict(TINY_ENCODER, vocab_size=V, position_buckets=8, generator_num_hidden_layers=1)
MODES = ("es", "nes", "gdes")
NARROW = dict(generator_hidden_size=16, generator_intermediate_size=32)  # NES only
WORDS = "deberta.embeddings.word_embeddings.weight"
DELTA = "deberta.embeddings.word_embeddings_delta"


def model(perturb=True, **kw) -> Model:
    torch.manual_seed(0)
    m = Model(Config(**{**SMALL, **kw})).eval()
    if perturb:  # LayerNorms, biases and the GDES delta away from their initialisation
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return m


def batch(length=24, rows=3, rate=0.3, seed=1):
    return random_masked_batch(V, length, rows, rate, seed)


def tables(m: Model):
    """(generator's table, the discriminator's own table or None, the GDES delta or None)."""
    emb = m.deberta.embeddings
    return (
        m.generator.deberta.embeddings.word_embeddings.weight,
        None if emb.word_embeddings is None else emb.word_embeddings.weight,
        getattr(emb, "word_embeddings_delta", None),
    )


# ----------------------------------------------------------------------------- config, names


def test_config_validation():
    assert Config(**SMALL).embedding_sharing == "gdes"
    with pytest.raises(ValueError, match="'es', 'nes' or 'gdes', got 'shared'"):
        Config(**SMALL, embedding_sharing="shared")
    for mode in ("es", "gdes"):
        with pytest.raises(ValueError, match=f"{mode.upper()} shares the token embedding"):
            Config(**SMALL, **NARROW, embedding_sharing=mode)
    c = Config(**SMALL, **NARROW, embedding_sharing="nes")
    assert c.generator_config().hidden_size == 16
    # Only RTD shares: an MLM model with a narrower (unused) generator width is valid.
    Config(**SMALL, **NARROW, objective="mlm")


def test_parameter_names_per_mode():
    names = {
        mode: {n for n, _ in model(embedding_sharing=mode).named_parameters()} for mode in MODES
    }
    gen_words = "generator." + WORDS
    assert all(gen_words in n for n in names.values())
    assert WORDS not in names["es"] and DELTA not in names["es"]
    assert WORDS in names["nes"] and DELTA not in names["nes"]
    assert DELTA in names["gdes"] and WORDS not in names["gdes"]
    # The modes differ only in where the discriminator's table lives.
    assert names["nes"] - {WORDS} == names["es"] == names["gdes"] - {DELTA}


def test_es_is_gdes_with_a_zero_delta_in_the_forward():
    ids, mask, labels = batch()
    out = {}
    for mode in ("es", "gdes"):
        torch.manual_seed(3)
        out[mode] = model(perturb=False, embedding_sharing=mode)(ids, mask, labels)
    assert all(torch.equal(out["es"][k], out["gdes"][k]) for k in out["es"])


# ----------------------------------------------------------------------------- gradient flow


def grads(m: Model, which: str):
    """Gradients of (generator table, discriminator table, delta) for one forward/backward of
    ``which``: "mlm", "rtd" or "total" = mlm_loss_sum + rtd_weight * rtd_loss_sum."""
    ids, mask, labels = batch()
    m.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same replacements in every call
    out = m.train()(ids, mask, labels)
    loss = {
        "mlm": out["mlm_loss_sum"],
        "rtd": out["rtd_loss_sum"],
        "total": out["mlm_loss_sum"] + m.config.rtd_weight * out["rtd_loss_sum"],
    }[which]
    loss.backward()
    return [None if p is None or p.grad is None else p.grad.clone() for p in tables(m)]


def none_or_zero(g) -> bool:
    return g is None or not g.any()


def assert_sum(total, mlm, rtd, weight):
    torch.testing.assert_close(total, (0 if mlm is None else mlm) + weight * rtd)


def test_es_gradient_flow():
    m = model(embedding_sharing="es")
    w = m.config.rtd_weight
    (g_rtd, disc, delta), (g_mlm, _, _), (g_total, _, _) = (
        grads(m, k) for k in ("rtd", "mlm", "total")
    )
    assert disc is None and delta is None  # no separate table: the generator's is the only one
    assert g_rtd.abs().sum() > 0 and g_mlm.abs().sum() > 0  # both losses train it
    assert_sum(g_total, g_mlm, g_rtd, w)


def test_nes_gradient_flow():
    m = model(embedding_sharing="nes")
    w = m.config.rtd_weight
    (gen_rtd, disc_rtd, delta), (gen_mlm, disc_mlm, _), (gen_total, disc_total, _) = (
        grads(m, k) for k in ("rtd", "mlm", "total")
    )
    assert delta is None
    assert none_or_zero(gen_rtd) and disc_rtd.abs().sum() > 0  # RTD: only the own table
    assert none_or_zero(disc_mlm) and gen_mlm.abs().sum() > 0  # MLM: only the generator's
    torch.testing.assert_close(gen_total, gen_mlm)
    torch.testing.assert_close(disc_total, w * disc_rtd)


def test_nes_gradient_flow_with_a_narrower_generator():
    m = model(embedding_sharing="nes", **NARROW)
    gen, disc, _ = tables(m)
    assert gen.shape == (V, 16) and disc.shape == (V, 32)
    gen_rtd, disc_rtd, _ = grads(m, "rtd")
    assert none_or_zero(gen_rtd) and disc_rtd.abs().sum() > 0


def test_gdes_gradient_flow():
    m = model(embedding_sharing="gdes")
    w = m.config.rtd_weight
    (gen_rtd, disc, delta_rtd), (gen_mlm, _, delta_mlm), (gen_total, _, delta_total) = (
        grads(m, k) for k in ("rtd", "mlm", "total")
    )
    assert disc is None
    assert none_or_zero(gen_rtd) and delta_rtd.abs().sum() > 0  # stop-gradient + delta
    assert none_or_zero(delta_mlm) and gen_mlm.abs().sum() > 0
    torch.testing.assert_close(gen_total, gen_mlm)
    torch.testing.assert_close(delta_total, w * delta_rtd)


# ----------------------------------------------------------------------------- diagnostic


def reference_cosine(m: Model) -> float:
    gen, _, _ = tables(m)
    disc = m.deberta.embeddings.word_weight(gen)
    keep = torch.arange(V) != m.config.pad_token_id
    return F.cosine_similarity(gen[keep].double(), disc[keep].double(), dim=-1).mean().item()


def test_embedding_cosine_per_mode():
    fresh = {mode: model(perturb=False, embedding_sharing=mode) for mode in MODES}
    assert embedding_cosine(fresh["es"]) == 1.0
    assert embedding_cosine(fresh["gdes"]) == 1.0  # zero delta
    assert abs(embedding_cosine(fresh["nes"])) < 0.05  # independent random tables
    trained = {mode: model(embedding_sharing=mode) for mode in MODES}  # perturbed: delta != 0
    assert embedding_cosine(trained["es"]) == 1.0
    for mode in ("nes", "gdes"):
        assert embedding_cosine(trained[mode]) == pytest.approx(reference_cosine(trained[mode]))
    assert embedding_cosine(trained["gdes"]) < 1.0
    # One optimiser step moves GDES's delta, never ES's single table apart.
    for mode in ("es", "gdes"):
        m = model(perturb=False, embedding_sharing=mode)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        out = m.train()(*batch())
        (out["mlm_loss_sum"] + m.config.rtd_weight * out["rtd_loss_sum"]).backward()
        opt.step()
        cos = embedding_cosine(m)
        assert cos == 1.0 if mode == "es" else cos < 1.0


def test_embedding_cosine_refuses_what_it_cannot_compare():
    with pytest.raises(ValueError, match="objective is 'mlm'"):
        embedding_cosine(model(objective="mlm"))
    with pytest.raises(ValueError, match="one width"):
        embedding_cosine(model(embedding_sharing="nes", **NARROW))


# ----------------------------------------------------------------------------- param counts


def test_param_counts_per_mode():
    counts = {mode: param_counts(model(embedding_sharing=mode)) for mode in MODES}
    table = V * SMALL["hidden_size"]
    for mode, c in counts.items():
        assert c["embedding"] == table  # the shipped discriminator's (effective) table
        assert c["backbone"] == counts["gdes"]["backbone"], mode
    assert counts["es"]["total"] == counts["gdes"]["total"] - table  # no delta
    assert counts["nes"]["total"] == counts["gdes"]["total"]  # own table instead of the delta
    for mode in MODES:
        m = model(embedding_sharing=mode)
        assert counts[mode]["total"] == sum(p.numel() for p in m.parameters())
    narrow = model(embedding_sharing="nes", **NARROW)
    gen = narrow.generator
    own = (
        table
        + counts["gdes"]["backbone"]
        + sum(p.numel() for p in narrow.mask_predictions.parameters())
    )
    assert param_counts(narrow)["total"] == own + sum(p.numel() for p in gen.parameters())


# ----------------------------------------------------------------------------- HF export/import


def sharing_recorded(path) -> str | None:
    with safe_open(str(path / "rtd_state.safetensors"), "pt") as f:
        return (f.metadata() or {}).get("embedding_sharing")


@pytest.mark.parametrize(
    "mode,kw",
    [("es", {}), ("nes", {}), ("nes", NARROW), ("gdes", {}), ("gdes", {"emd": True})],
)
def test_export_import_round_trip_per_mode(tmp_path, mode, kw):
    transformers = pytest.importorskip("transformers")
    m = model(embedding_sharing=mode, **kw)
    export_hf(m, tmp_path / "hf")
    assert sharing_recorded(tmp_path / "hf") == mode
    disc_file = load_file(tmp_path / "hf" / "model.safetensors")
    gen_words, _, _ = tables(m)
    assert torch.equal(disc_file[WORDS], m.deberta.embeddings.word_weight(gen_words))
    extra = load_file(tmp_path / "hf" / "rtd_state.safetensors")
    assert (DELTA in extra) == (mode == "gdes")
    ids, mask, labels = batch()
    hf = transformers.DebertaV2Model.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        hidden = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (hidden - m.encode(ids, mask)).abs().max() <= 1e-5

    again = import_hf(tmp_path / "hf").eval()
    assert again.config.embedding_sharing == mode
    assert again.config.generator_hidden_size == m.config.generator_hidden_size
    mine, back = m.state_dict(), again.state_dict()
    assert mine.keys() == back.keys() and all(torch.equal(mine[k], back[k]) for k in mine)
    torch.manual_seed(3)
    x = m(ids, mask, labels)
    torch.manual_seed(3)
    y = again(ids, mask, labels)
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert torch.equal(again.mlm_logits(ids, mask), m.mlm_logits(ids, mask))
    assert torch.equal(again.encode(ids, mask), m.encode(ids, mask))


def test_import_switches_modes_and_reads_old_exports(tmp_path):
    m = model(embedding_sharing="gdes")
    export_hf(m, tmp_path / "hf")
    gen_words, _, delta = tables(m)
    effective = m.deberta.embeddings.word_weight(gen_words)
    ids, mask, _ = batch()
    # GDES -> NES: the effective table becomes the discriminator's own; same encoder.
    nes = import_hf(tmp_path / "hf", embedding_sharing="nes")
    assert torch.equal(tables(nes)[1], effective)
    assert torch.equal(nes.eval().encode(ids, mask), m.encode(ids, mask))
    # GDES -> ES: the delta is lost, which the import says.
    with pytest.warns(UserWarning, match="embedding_sharing='es' uses the generator's"):
        es = import_hf(tmp_path / "hf", embedding_sharing="es")
    assert DELTA not in es.state_dict() and WORDS not in es.state_dict()
    # NES -> GDES: delta = difference of the tables.
    export_hf(nes, tmp_path / "nes")
    gdes = import_hf(tmp_path / "nes", embedding_sharing="gdes")
    torch.testing.assert_close(tables(gdes)[2], delta)
    # An export from before the modes (no metadata) continues as GDES, delta bit for bit.
    extra = load_file(tmp_path / "hf" / "rtd_state.safetensors")
    save_file(extra, str(tmp_path / "hf" / "rtd_state.safetensors"), metadata={"format": "pt"})
    old = import_hf(tmp_path / "hf")
    assert old.config.embedding_sharing == "gdes" and torch.equal(tables(old)[2], delta)
    # A narrower generator imports only as NES.
    export_hf(model(embedding_sharing="nes", **NARROW), tmp_path / "narrow")
    with pytest.raises(ValueError, match="generator hidden_size=16 differs"):
        import_hf(tmp_path / "narrow", embedding_sharing="gdes")


def test_within_table_cosine_is_the_mean_over_pairs_of_different_tokens():
    torch.manual_seed(0)
    table = torch.randn(40, 8)
    table[0] = 0  # the padding row: excluded
    u = torch.nn.functional.normalize(table[1:], dim=-1)
    pairs = u @ u.T
    n = u.shape[0]
    want = float((pairs.sum() - pairs.diagonal().sum()) / (n * (n - 1)))
    assert within_table_cosine(table, 0) == pytest.approx(want, abs=1e-6)
    same = torch.ones(10, 4)
    assert within_table_cosine(same, 0) == pytest.approx(1.0)  # collapsed: every pair 1
    d = sharing_diagnostics(model(embedding_sharing="es"))
    assert d["embedding_cosine"] == 1.0
    assert d["generator_embedding_similarity"] == d["discriminator_embedding_similarity"]
