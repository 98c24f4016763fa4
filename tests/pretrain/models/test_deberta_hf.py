"""DeBERTa <-> HF transformers: parity of logits and gradients, export, import, round trips."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pretrain.models import deberta_hf, hf_module
from pretrain.models.deberta import Config, Model
from pretrain.models.deberta_hf import export_hf, import_hf

transformers = pytest.importorskip("transformers")
from transformers import DebertaV2Config, DebertaV2ForMaskedLM, DebertaV2Model  # noqa: E402

V3 = dict(
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
    type_vocab_size=0,
    layer_norm_eps=1e-7,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TINY = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def hf_mlm(legacy=False, **kw) -> DebertaV2ForMaskedLM:
    """Random HF model with every parameter perturbed (LayerNorms, biases and heads too)."""
    torch.manual_seed(0)
    cfg = DebertaV2Config(
        **{
            **TINY,
            **V3,
            "position_buckets": 8,
            "max_relative_positions": -1,
            "legacy": legacy,
            **kw,
        }
    )
    model = DebertaV2ForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(vocab=97, length=40):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    mask[2, 12:] = 0  # a mostly padded row
    labels = torch.full_like(ids, -100)
    pick = (torch.rand(ids.shape, generator=g) < 0.3) & mask.bool()
    labels[pick] = ids[pick]
    return ids, mask, labels


def ours(tmp_path, **cfg) -> Model:
    torch.manual_seed(2)
    model = Model(
        Config(
            **TINY,
            position_buckets=8,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **cfg,
        )
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize(
    "kw",
    [
        {},  # log buckets: 8 per side over a 64-position range, sequences of 40
        {"position_buckets": -1, "max_relative_positions": 16},  # plain clamp, no buckets
        {"share_att_key": False},  # v1/v2: the relative table's own W_q,r and W_k,r
    ],
)
def test_logits_and_gradients_match_hf(tmp_path, kw):
    hf = hf_mlm(**kw)
    hf.save_pretrained(tmp_path)
    model = import_hf(tmp_path).eval()
    assert model.config.objective == "mlm" and not model.config.emd
    assert model.config.share_att_key == kw.get("share_att_key", True)
    ids, mask, labels = batch()
    # Every position, padding included: our masked softmax is HF's.
    diff = (model.mlm_logits(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits).abs()
    assert diff.max() <= 1e-5

    out = model(ids, mask, labels)
    (out["mlm_loss_sum"] / out["mlm_count"]).backward()
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    ours_grads = dict(model.named_parameters())
    for name, p in hf.named_parameters():
        assert name in ours_grads, name
        torch.testing.assert_close(ours_grads[name].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_legacy_head_and_bare_encoder_import(tmp_path):
    hf = hf_mlm(legacy=True)  # HF's default head: cls.predictions.*, decoder tied to embeddings
    hf.save_pretrained(tmp_path / "legacy")
    model = import_hf(tmp_path / "legacy").eval()
    ids, mask, _ = batch()
    diff = model.mlm_logits(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits
    assert diff.abs().max() <= 1e-5
    # A bare DebertaV2Model (keys without "deberta."): the MLM head is initialised fresh.
    hf.deberta.save_pretrained(tmp_path / "bare")
    with pytest.warns(UserWarning, match="initialised fresh: lm_predictions"):
        bare = import_hf(tmp_path / "bare").eval()
    assert torch.equal(bare.encode(ids, mask), model.encode(ids, mask))


@pytest.mark.parametrize("emd", [False, True])
def test_mlm_export_loads_in_hf_and_round_trips(tmp_path, emd):
    model = ours(tmp_path, objective="mlm", emd=emd)
    export_hf(model, tmp_path / "hf")
    hf, info = DebertaV2ForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert not info["unexpected_keys"]  # the EMD table is a key HF ignores by design
    ids, mask, _ = batch()
    ref = model.mlm_logits(ids, mask, emd=False)  # HF has no EMD
    assert (hf.eval()(input_ids=ids, attention_mask=mask).logits - ref).abs().max() <= 1e-5
    if emd:
        assert (model.mlm_logits(ids, mask) - ref).abs().max() > 1e-3

    again = import_hf(tmp_path / "hf")
    assert again.config.emd == emd
    export_hf(again, tmp_path / "hf2")
    a = load_file(tmp_path / "hf" / "model.safetensors")
    b = load_file(tmp_path / "hf2" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_import_export_round_trip_is_bitwise(tmp_path):
    hf = hf_mlm()
    hf.save_pretrained(tmp_path / "in")
    export_hf(import_hf(tmp_path / "in"), tmp_path / "out")
    a = load_file(tmp_path / "in" / "model.safetensors")
    b = load_file(tmp_path / "out" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["legacy"] is False and cfg["architectures"] == ["DebertaV2ForMaskedLM"]


def test_rtd_export_discriminator_generator_and_round_trip(tmp_path):
    model = ours(tmp_path, objective="rtd", emd=True, generator_num_hidden_layers=1)
    export_hf(model, tmp_path / "hf")
    ids, mask, _ = batch()

    disc, info = DebertaV2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    hidden = disc.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (hidden - model.encode(ids, mask)).abs().max() <= 1e-5
    gen_words = model.generator.deberta.embeddings.word_embeddings.weight
    delta = model.deberta.embeddings.word_embeddings_delta
    assert torch.equal(disc.embeddings.word_embeddings.weight, gen_words + delta)

    gen, info = DebertaV2ForMaskedLM.from_pretrained(
        tmp_path / "hf" / "generator", output_loading_info=True
    )
    assert not info["missing_keys"] and gen.config.num_hidden_layers == 1
    logits = gen.eval()(input_ids=ids, attention_mask=mask).logits
    assert (logits - model.mlm_logits(ids, mask, emd=False)).abs().max() <= 1e-5

    again = import_hf(tmp_path / "hf")
    assert again.config.objective == "rtd" and again.config.emd
    assert again.config.generator_num_hidden_layers == 1
    mine, back = model.state_dict(), again.state_dict()
    assert mine.keys() == back.keys() and all(torch.equal(mine[k], back[k]) for k in mine)
    export_hf(again, tmp_path / "hf2")
    for f in ("model.safetensors", "rtd_state.safetensors", "generator/model.safetensors"):
        a, b = load_file(tmp_path / "hf" / f), load_file(tmp_path / "hf2" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    torch.manual_seed(3)
    x = model.eval()(ids, mask, batch()[2])
    torch.manual_seed(3)
    y = again.eval()(ids, mask, batch()[2])
    assert all(torch.allclose(x[k].float(), y[k].float(), atol=1e-5) for k in x)


def test_microsoft_generator_file_and_discriminator_only(tmp_path):
    model = ours(tmp_path, objective="rtd", generator_num_hidden_layers=1)
    export_hf(model, tmp_path / "hf")
    # microsoft's hub layout: generator weights as pytorch_model.generator.bin, no heads.
    gen_state = load_file(tmp_path / "hf" / "generator" / "model.safetensors")
    torch.save(gen_state, tmp_path / "hf" / "pytorch_model.generator.bin")
    for f in ("generator/config.json", "generator/model.safetensors", "rtd_state.safetensors"):
        (tmp_path / "hf" / f).unlink()
    with pytest.warns(UserWarning, match="initialised fresh: mask_predictions"):
        again = import_hf(tmp_path / "hf")
    assert again.config.generator_num_hidden_layers == 1
    ids, mask, _ = batch()
    assert torch.allclose(again.eval().encode(ids, mask), model.encode(ids, mask), atol=1e-6)
    # Discriminator alone: MLM needs nothing else, RTD says what is missing.
    (tmp_path / "hf" / "pytorch_model.generator.bin").unlink()
    with pytest.raises(ValueError, match="needs a generator"):
        import_hf(tmp_path / "hf", objective="rtd")
    with pytest.warns(UserWarning, match="initialised fresh: lm_predictions"):
        assert import_hf(tmp_path / "hf").config.objective == "mlm"


def test_import_errors(tmp_path):
    hf = hf_mlm()
    hf.save_pretrained(tmp_path / "ok")
    with pytest.raises(TypeError, match="no_such_field"):
        import_hf(tmp_path / "ok", no_such_field=1)
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    for field, value, match in [
        ("conv_kernel_size", 3, "conv_kernel_size=3"),
        ("position_biased_input", True, "position_biased_input"),
        ("model_type", "roberta", "expected 'deberta-v2'"),
    ]:
        d = tmp_path / field
        hf.save_pretrained(d)
        (d / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ValueError, match=match):
            import_hf(d)
    state = load_file(tmp_path / "ok" / "model.safetensors")
    from safetensors.torch import save_file

    for name, edit, match in [
        ("extra", {**state, "deberta.pooler.dense.weight": torch.zeros(2)}, "unknown weight"),
        (
            "missing",
            {k: v for k, v in state.items() if "layer.1.output.dense" not in k},
            r"missing weights.*layer\.1\.output\.dense\.bias",
        ),
    ]:
        d = tmp_path / name
        hf.save_pretrained(d)
        save_file(edit, str(d / "model.safetensors"))
        with pytest.raises(ValueError, match=match):
            import_hf(d)
    with pytest.raises(ValueError, match="shape"):
        import_hf(tmp_path / "ok", position_buckets=16)
    assert hf_module("deberta") is deberta_hf  # the registry resolves the conversion


def test_import_emd_override_and_stale_delta(tmp_path):
    hf_mlm().save_pretrained(tmp_path / "plain")
    with pytest.warns(UserWarning, match="fresh: deberta.embeddings.position_embeddings"):
        assert import_hf(tmp_path / "plain", emd=True).config.emd
    model = ours(tmp_path, objective="rtd", generator_num_hidden_layers=1)
    export_hf(model, tmp_path / "rtd")
    from safetensors.torch import save_file

    state = load_file(tmp_path / "rtd" / "model.safetensors")
    state["deberta.embeddings.word_embeddings.weight"][5] += 1.0  # edited after export
    save_file(state, str(tmp_path / "rtd" / "model.safetensors"))
    with pytest.warns(UserWarning, match="does not reproduce"):
        again = import_hf(tmp_path / "rtd")
    words = again.deberta.embeddings.word_weight(
        again.generator.deberta.embeddings.word_embeddings.weight
    )
    torch.testing.assert_close(words, state["deberta.embeddings.word_embeddings.weight"])


def test_rtd_import_of_a_plain_hf_layout_and_its_export(tmp_path):
    """A discriminator as ``DebertaV2Model.save_pretrained`` writes it (keys without
    ``deberta.``) + ``generator/`` (``DebertaV2ForMaskedLM``, HF's legacy head), no
    ``rtd_state.safetensors``: the export has exactly our normal export's files and keys; every
    tensor is the input's, except the discriminator embedding gen + (disc - gen), which fp32
    rounding moves by at most 2^-24 (|disc - gen| (1 + 2^-24) + |disc|) per element (README);
    from that export on, import -> export is byte-identical."""
    plain = tmp_path / "plain"
    hf_mlm(legacy=True, num_hidden_layers=1).save_pretrained(plain / "generator")
    torch.manual_seed(1)
    disc = DebertaV2Model(DebertaV2Config(**{**TINY, **V3, "position_buckets": 8})).eval()
    with torch.no_grad():
        for p in disc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    disc.save_pretrained(plain)
    with pytest.warns(UserWarning, match="initialised fresh: mask_predictions"):
        model = import_hf(plain)
    assert model.config.objective == "rtd" and model.config.generator_num_hidden_layers == 1
    export_hf(model, tmp_path / "out")
    export_hf(ours(tmp_path, objective="rtd", generator_num_hidden_layers=1), tmp_path / "ref")
    files = ("model.safetensors", "rtd_state.safetensors", "generator/model.safetensors")
    out = {f: load_file(tmp_path / "out" / f) for f in files}
    for f in files:
        assert out[f].keys() == load_file(tmp_path / "ref" / f).keys(), f
    for f in ("config.json", "generator/config.json"):
        a, b = (json.loads((tmp_path / d / f).read_text()) for d in ("out", "ref"))
        assert a == b, f
    d_in = {f"deberta.{k}": v for k, v in load_file(plain / "model.safetensors").items()}
    g_in = load_file(plain / "generator" / "model.safetensors")
    g_in = {
        k.replace("cls.predictions.transform.", "lm_predictions.lm_head."): v
        for k, v in g_in.items()
    }
    g_in["lm_predictions.lm_head.bias"] = g_in.pop("cls.predictions.bias")
    g_in = {k: v for k, v in g_in.items() if not k.startswith("cls.predictions.decoder.")}
    assert out["generator/model.safetensors"].keys() == g_in.keys()
    assert all(torch.equal(out["generator/model.safetensors"][k], v) for k, v in g_in.items())
    words = "deberta.embeddings.word_embeddings.weight"
    assert out["model.safetensors"].keys() == d_in.keys()
    assert all(torch.equal(out["model.safetensors"][k], v) for k, v in d_in.items() if k != words)
    a, gen, b = d_in[words].double(), g_in[words].double(), out["model.safetensors"][words].double()
    assert torch.all((b - a).abs() <= 2**-24 * ((a - gen).abs() * (1 + 2**-24) + a.abs()))
    assert not torch.equal(a, b)  # the rounding is real, not hypothetical
    delta = out["rtd_state.safetensors"]["deberta.embeddings.word_embeddings_delta"]
    assert torch.equal(delta, d_in[words] - g_in[words])
    export_hf(import_hf(tmp_path / "out"), tmp_path / "again")
    for f in files:
        x, y = out[f], load_file(tmp_path / "again" / f)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f


def test_separate_relative_projections_export_and_absent_key_means_separate(tmp_path):
    """share_att_key = false exports with its own pos_query_proj / pos_key_proj and loads in
    HF with identical logits; a config without the key is HF's default (separate)."""
    model = ours(tmp_path, objective="mlm", share_att_key=False)
    names = {n for n, _ in model.named_parameters()}
    assert any(n.endswith("attention.self.pos_key_proj.weight") for n in names)
    export_hf(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["share_att_key"] is False
    hf = DebertaV2ForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        diff = model.mlm_logits(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits
    assert diff.abs().max() <= 1e-5
    del cfg["share_att_key"]
    (tmp_path / "out" / "config.json").write_text(json.dumps(cfg))
    assert import_hf(tmp_path / "out").config.share_att_key is False
