"""RoBERTa: parity with transformers' RobertaForMaskedLM (logits, gradients, conversion),
sparse head, packed-document attention, config validation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pretrain.models import roberta, roberta_hf

transformers = pytest.importorskip("transformers")

VOCAB, PAD = 97, 1
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=PAD,
)


def hf_model(seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**TINY)).eval()
    with torch.no_grad():  # HF zero-initialises the bias: make the bias path observable
        model.lm_head.bias.normal_(0, 0.5)
    return model


@pytest.fixture
def hf_dir(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    return model, tmp_path / "hf"


def batch(seed: int = 1):
    """Three rows: full, right-padded, left-padded; ~30 % of real tokens labelled."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 16), generator=g)
    attn = torch.ones_like(ids)
    ids[1, 11:], attn[1, 11:] = PAD, 0
    ids[2, :5], attn[2, :5] = PAD, 0
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & attn.bool(), ids, -100)
    return ids, attn, labels


def test_logits_match_hf_with_padding(hf_dir):
    hf, path = hf_dir
    ours = roberta_hf.import_hf(path).eval()
    ids, attn, _ = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=attn).logits
        got = ours.mlm_logits(ids, attn)
    real = attn.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5
    assert (got - expected).abs().max() <= 1e-5  # padding rows too: same position ids and mask


def test_gradients_match_hf(hf_dir):
    hf, path = hf_dir
    ours = roberta_hf.import_hf(path).eval()
    ids, attn, labels = batch(2)
    out = ours(ids, attn, labels)
    out["mlm_loss_sum"].backward()
    logits = hf(input_ids=ids, attention_mask=attn).logits
    ref = F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), reduction="sum")
    ref.backward()
    assert abs(out["mlm_loss_sum"].item() - ref.item()) <= 1e-4
    assert out["mlm_count"].item() == (labels != -100).sum().item()
    checked = 0
    for name, p in ours.named_parameters():
        g_ref = hf.get_parameter(name).grad
        scale = max(1.0, g_ref.abs().max().item())
        assert (p.grad - g_ref).abs().max().item() <= 1e-5 * scale, name
        checked += 1
    assert checked == len(list(hf.parameters()))  # every HF parameter has a twin here


def test_sparse_head_equals_full_head():
    torch.manual_seed(3)
    model = roberta.Model(roberta.Config(**TINY)).eval()
    ids, attn, labels = batch(3)
    with torch.no_grad():
        out = model(ids, attn, labels)
        full = model.mlm_logits(ids, attn)
    sel = labels != -100
    ref = F.cross_entropy(full[sel], labels[sel], reduction="sum")
    assert torch.allclose(out["mlm_loss_sum"], ref, atol=1e-5, rtol=1e-6)
    assert out["mlm_correct"].item() == (full[sel].argmax(-1) == labels[sel]).sum().item()
    assert out["mlm_count"].item() == sel.sum().item()


def test_segment_ids_keep_packed_documents_apart():
    torch.manual_seed(4)
    model = roberta.Model(roberta.Config(**TINY)).eval()
    ids = torch.randint(3, VOCAB, (1, 12))
    attn = torch.ones_like(ids)
    seg = torch.tensor([[1] * 5 + [2] * 7])
    other = ids.clone()
    other[0, 5:] = torch.randint(3, VOCAB, (7,))
    with torch.no_grad():
        a, b = model.mlm_logits(ids, attn, seg), model.mlm_logits(other, attn, seg)
        c = model.mlm_logits(other, attn)  # without segments document 2 leaks into 1
        # One segment = the explicit-mask path; no segments, no padding = the mask-free
        # (flash-eligible) path: they must agree.
        single = model.mlm_logits(other, attn, torch.ones_like(seg))
    assert (single - c).abs().max() <= 1e-6
    assert torch.equal(a[0, :5], b[0, :5])
    assert not torch.allclose(a[0, 5:], b[0, 5:])
    assert not torch.allclose(a[0, :5], c[0, :5])


def test_export_loads_in_transformers_with_identical_logits(tmp_path):
    torch.manual_seed(5)
    model = roberta.Model(roberta.Config(**TINY)).eval()
    roberta_hf.export_hf(model, tmp_path / "out")
    hf = transformers.RobertaForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids, attn, _ = batch(5)
    with torch.no_grad():
        diff = hf(input_ids=ids, attention_mask=attn).logits - model.mlm_logits(ids, attn)
    assert diff.abs().max() <= 1e-5


def test_import_export_round_trip_is_identical(hf_dir, tmp_path):
    _, path = hf_dir
    roberta_hf.export_hf(roberta_hf.import_hf(path), tmp_path / "again")
    before, after = (
        load_file(path / "model.safetensors"),
        load_file(tmp_path / "again" / "model.safetensors"),
    )
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert cfg["model_type"] == "roberta" and cfg["architectures"] == ["RobertaForMaskedLM"]


def test_import_accepts_bare_encoder_and_legacy_tied_keys(tmp_path):
    torch.manual_seed(6)
    encoder = transformers.RobertaModel(transformers.RobertaConfig(**TINY))  # with pooler
    encoder.save_pretrained(tmp_path / "enc")
    with pytest.warns(UserWarning) as caught:
        model = roberta_hf.import_hf(tmp_path / "enc")
    messages = " | ".join(str(w.message) for w in caught)
    assert "lm_head initialised fresh" in messages and "dropped: pooler.dense.bias" in messages
    assert torch.equal(
        model.roberta.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight
    )
    # Older files carry the tied decoder copies; accepted when they really are tied.
    hf = hf_model()
    hf.save_pretrained(tmp_path / "legacy")
    state = load_file(tmp_path / "legacy" / "model.safetensors")
    state["lm_head.decoder.weight"] = state["roberta.embeddings.word_embeddings.weight"].clone()
    state["lm_head.decoder.bias"] = state["lm_head.bias"].clone()
    save_file(state, str(tmp_path / "legacy" / "model.safetensors"))
    roberta_hf.import_hf(tmp_path / "legacy")
    state["lm_head.decoder.weight"] += 1
    save_file(state, str(tmp_path / "legacy" / "model.safetensors"))
    with pytest.raises(ValueError, match="untied"):
        roberta_hf.import_hf(tmp_path / "legacy")


def test_import_rejects_unknown_missing_and_foreign(hf_dir):
    _, path = hf_dir
    file = path / "model.safetensors"
    state = load_file(file)
    save_file({**state, "roberta.extra.weight": torch.zeros(2)}, str(file))
    with pytest.raises(ValueError, match=r"unknown keys: roberta\.extra\.weight"):
        roberta_hf.import_hf(path)
    del state["roberta.encoder.layer.1.output.dense.bias"]
    save_file(state, str(file))
    with pytest.raises(
        ValueError, match=r"missing keys: roberta\.encoder\.layer\.1\.output\.dense\.bias"
    ):
        roberta_hf.import_hf(path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ValueError, match="expected 'roberta'"):
        roberta_hf.import_hf(path)


def test_import_overrides_and_shape_errors(hf_dir):
    _, path = hf_dir
    model = roberta_hf.import_hf(path, hidden_dropout_prob=0.0)
    assert model.config.hidden_dropout_prob == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        roberta_hf.import_hf(path, intermediate_size=48)
    with pytest.raises(TypeError, match="no_such_field"):
        roberta_hf.import_hf(path, no_such_field=1)


def test_config_validation_and_length_limit():
    with pytest.raises(ValueError, match="not divisible"):
        roberta.Config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="pad_token_id"):
        roberta.Config(vocab_size=10, pad_token_id=10)
    with pytest.raises(ValueError, match="hidden_dropout_prob"):
        roberta.Config(hidden_dropout_prob=1.5)
    model = roberta.Model(roberta.Config(**TINY))
    limit = TINY["max_position_embeddings"] - PAD - 1
    ids = torch.full((1, limit), 5)
    model.mlm_logits(ids, torch.ones_like(ids))  # the longest allowed sequence runs
    ids = torch.full((1, limit + 1), 5)
    with pytest.raises(ValueError, match="exceeds the model's maximum"):
        model.mlm_logits(ids, torch.ones_like(ids))


@pytest.mark.parametrize("fixed", [False, True])
def test_vocabulary_projection_sees_only_predicted_rows(fixed):
    """The head (dense -> LayerNorm -> tied projection) gets (N, C), never (B*T, C)."""
    model = roberta.Model(roberta.Config(**TINY))
    ids, attn, labels = batch(3)
    per_row = (labels != -100).sum(1)
    if fixed:  # static shapes: K = the most labels in a row, still < T
        model.predict_capacity = int(per_row.max())
    rows = ids.shape[0] * model.predict_capacity if fixed else int(per_row.sum())
    seen = []
    model.lm_head.register_forward_hook(lambda m, a, out: seen.append((a[0].shape, out.shape)))
    out = model(ids, attn, labels)
    assert seen == [((rows, TINY["hidden_size"]), (rows, VOCAB))]
    assert rows < ids.numel() and out["mlm_count"] == per_row.sum()
