"""BERT: parity with transformers' BertForPreTraining (MLM and next-sentence logits, losses,
gradients), conversion (export, import, BertForMaskedLM / BertModel directories, legacy keys),
preset sizes, the sparse and fixed-capacity MLM paths and the next-sentence sums."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pretrain.models import bert, bert_hf

transformers = pytest.importorskip("transformers")

VOCAB, PAD = 97, 0
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=PAD,
)
TIED = {  # HF's tied copies: not parameters of ours, not in HF's files
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def our_model(seed: int = 0) -> bert.Model:
    """A tiny model whose zero/one-initialised tensors (biases, LayerNorms) are perturbed, so
    that every parameter influences the outputs observably."""
    torch.manual_seed(seed)
    model = bert.Model(bert.Config(**TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_twin(model: bert.Model):
    """transformers.BertForPreTraining holding exactly our weights (strict load)."""
    hf = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
    state = model.state_dict()
    state.update({k: state[v] for k, v in TIED.items()})
    hf.load_state_dict(state, strict=True)
    return hf


def batch(seed: int = 1):
    """Four rows: full, right-padded, short, full; sentence pairs (types 0 then 1, padding 0);
    ~30 % of real tokens labelled; next-sentence labels 0, 1, -100 (no pair), 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (4, 16), generator=g)
    attn = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    for row, (split, end) in enumerate([(7, 16), (5, 11), (3, 6), (9, 16)]):
        ids[row, end:], attn[row, end:] = PAD, 0
        types[row, split:end] = 1
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & attn.bool(), ids, -100)
    labels[:, 1] = ids[:, 1]  # every row predicts something
    return ids, attn, types, labels, torch.tensor([0, 1, -100, 1])


def test_logits_match_hf_with_padding_and_token_types():
    model = our_model()
    hf = hf_twin(model)
    ids, attn, types, _, _ = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=attn, token_type_ids=types)
        mlm = model.mlm_logits(ids, attn, token_type_ids=types)
        nsp = model.sentence_logits(ids, attn, token_type_ids=types)
        # token_type_ids=None is all type 0 (a broadcast add of row 0 in our embeddings)
        ref0 = hf(input_ids=ids, attention_mask=attn)
        mlm0 = model.mlm_logits(ids, attn)
        nsp0 = model.sentence_logits(ids, attn)
    assert mlm.shape == (4, 16, VOCAB) and nsp.shape == (4, 2)
    assert (mlm - ref.prediction_logits).abs().max() <= 1e-5  # padding positions too
    assert (nsp - ref.seq_relationship_logits).abs().max() <= 1e-5
    assert (mlm0 - ref0.prediction_logits).abs().max() <= 1e-5
    assert (nsp0 - ref0.seq_relationship_logits).abs().max() <= 1e-5
    assert (mlm - mlm0).abs().max() > 1e-3  # the type embedding really is used


def test_loss_sums_and_gradients_match_hf():
    model = our_model(2)
    hf = hf_twin(model)
    ids, attn, types, labels, nsp_labels = batch(2)
    out = model(ids, attn, labels, token_type_ids=types, sentence_labels=nsp_labels)
    loss = out["mlm_loss_sum"] / out["mlm_count"] + out["sentence_loss_sum"] / out["sentence_count"]
    loss.backward()
    ref = hf(
        input_ids=ids,
        attention_mask=attn,
        token_type_ids=types,
        labels=labels,
        next_sentence_label=nsp_labels,
    )
    ref.loss.backward()  # HF: mean MLM cross-entropy + mean NSP cross-entropy
    mlm_ref = F.cross_entropy(
        ref.prediction_logits.view(-1, VOCAB), labels.view(-1), reduction="sum"
    )
    nsp_ref = F.cross_entropy(ref.seq_relationship_logits, nsp_labels, reduction="sum")
    assert abs(out["mlm_loss_sum"].item() - mlm_ref.item()) <= 1e-4
    assert abs(out["sentence_loss_sum"].item() - nsp_ref.item()) <= 1e-5
    assert abs(loss.item() - ref.loss.item()) <= 1e-5
    assert out["mlm_count"].item() == (labels != -100).sum().item()
    assert out["sentence_count"].item() == 3  # the -100 row counts nothing
    pred = ref.seq_relationship_logits.argmax(-1)
    assert out["sentence_correct"].item() == (pred == nsp_labels).sum().item()
    checked = 0
    for name, p in model.named_parameters():
        g_ref = hf.get_parameter(name).grad
        scale = max(1.0, g_ref.abs().max().item())
        assert (p.grad - g_ref).abs().max().item() <= 1e-5 * scale, name
        checked += 1
    assert checked == len(list(hf.parameters()))  # every HF parameter has a twin here


def test_sparse_and_fixed_capacity_paths_equal_full_logits():
    model = our_model(3)
    ids, attn, types, labels, nsp_labels = batch(3)
    with torch.no_grad():
        sparse = model(ids, attn, labels, token_type_ids=types, sentence_labels=nsp_labels)
        model.predict_capacity = int((labels != -100).sum(1).max()) + 2  # padding slots too
        fixed = model(ids, attn, labels, token_type_ids=types, sentence_labels=nsp_labels)
        model.predict_capacity = None
        full = model.mlm_logits(ids, attn, token_type_ids=types)
    sel = labels != -100
    ref = F.cross_entropy(full[sel], labels[sel], reduction="sum")
    assert torch.allclose(sparse["mlm_loss_sum"], ref, atol=1e-5, rtol=1e-6)
    assert sparse["mlm_correct"].item() == (full[sel].argmax(-1) == labels[sel]).sum().item()
    assert sorted(fixed) == sorted(sparse)
    for key in sparse:
        assert torch.allclose(fixed[key].float(), sparse[key].float(), atol=1e-5), key


def test_sentence_sums_only_when_labelled_and_ignore_empty_rows():
    model = our_model(4)
    ids, attn, types, labels, _ = batch(4)
    with torch.no_grad():
        out = model(ids, attn, labels, token_type_ids=types)
        assert not any(k.startswith("sentence_") for k in out)
        logits = model.sentence_logits(ids, attn, token_type_ids=types)
        nsp_labels = torch.tensor([1, -100, 0, -100])
        out = model(ids, attn, labels, token_type_ids=types, sentence_labels=nsp_labels)
        # Rows 1 and 3 carry -100: whatever they hold, they add nothing.
        other = ids.clone()
        other[[1, 3], 2:] = torch.randint(3, VOCAB, (2, 14))
        again = model(other, attn, labels, token_type_ids=types, sentence_labels=nsp_labels)
    kept = torch.tensor([0, 2])
    ref = F.cross_entropy(logits[kept], nsp_labels[kept], reduction="sum")
    assert torch.allclose(out["sentence_loss_sum"], ref, atol=1e-6)
    assert out["sentence_count"].item() == 2
    assert out["sentence_correct"].item() == (logits[kept].argmax(-1) == nsp_labels[kept]).sum()
    assert torch.equal(out["sentence_loss_sum"], again["sentence_loss_sum"])


def test_segment_ids_keep_packed_documents_apart():
    model = our_model(5)
    ids = torch.randint(3, VOCAB, (1, 12))
    attn = torch.ones_like(ids)
    seg = torch.tensor([[1] * 5 + [2] * 7])
    other = ids.clone()
    other[0, 5:] = torch.randint(3, VOCAB, (7,))
    with torch.no_grad():
        a, b = model.mlm_logits(ids, attn, seg), model.mlm_logits(other, attn, seg)
        c = model.mlm_logits(other, attn)
    assert torch.equal(a[0, :5], b[0, :5])
    assert not torch.allclose(a[0, :5], c[0, :5])


def test_export_loads_in_transformers_with_identical_logits(tmp_path):
    model = our_model(6)
    bert_hf.export_hf(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForPreTraining"] and cfg["model_type"] == "bert"
    pre, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # AutoModelForMaskedLM -> BertForMaskedLM: no pooler, no NSP head; nothing else differs.
    mlm, info = transformers.AutoModelForMaskedLM.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert type(mlm).__name__ == "BertForMaskedLM" and not info["missing_keys"]
    assert info["unexpected_keys"] == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    }
    ids, attn, types, _, _ = batch(6)
    with torch.no_grad():
        ours = model.mlm_logits(ids, attn, token_type_ids=types)
        nsp = model.sentence_logits(ids, attn, token_type_ids=types)
        ref = pre.eval()(input_ids=ids, attention_mask=attn, token_type_ids=types)
        ref_mlm = mlm.eval()(input_ids=ids, attention_mask=attn, token_type_ids=types).logits
    assert (ref.prediction_logits - ours).abs().max() <= 1e-5
    assert (ref.seq_relationship_logits - nsp).abs().max() <= 1e-5
    assert (ref_mlm - ours).abs().max() <= 1e-5


def test_import_export_round_trip_is_identical(tmp_path):
    torch.manual_seed(7)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**TINY))
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    bert_hf.export_hf(bert_hf.import_hf(tmp_path / "hf"), tmp_path / "again")
    before = load_file(tmp_path / "hf" / "model.safetensors")
    after = load_file(tmp_path / "again" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key


def test_import_masked_lm_and_bare_encoder_get_fresh_parts(tmp_path):
    torch.manual_seed(8)
    mlm = transformers.BertForMaskedLM(transformers.BertConfig(**TINY))
    mlm.save_pretrained(tmp_path / "mlm")
    with pytest.warns(
        UserWarning,
        match="no pooler and no next-sentence head in the checkpoint; "
        "bert.pooler, cls.seq_relationship initialised fresh",
    ):
        model = bert_hf.import_hf(tmp_path / "mlm")
    theirs = mlm.state_dict()
    for name, p in model.state_dict().items():
        if name.startswith(("bert.pooler.", "cls.seq_relationship.")):
            assert name not in theirs
        else:
            assert torch.equal(p, theirs[name]), name
    assert model.cls.seq_relationship.weight.std() > 0  # initialised, not left empty
    ids, attn, types, _, _ = batch(8)
    model.eval()
    with torch.no_grad():
        diff = (
            model.mlm_logits(ids, attn, token_type_ids=types)
            - mlm.eval()(input_ids=ids, attention_mask=attn, token_type_ids=types).logits
        )
    assert diff.abs().max() <= 1e-5

    encoder = transformers.BertModel(transformers.BertConfig(**TINY))  # no prefix, with pooler
    encoder.save_pretrained(tmp_path / "enc")
    with pytest.warns(UserWarning, match="no MLM head and no next-sentence head in the checkpoint"):
        model = bert_hf.import_hf(tmp_path / "enc")
    assert torch.equal(model.bert.pooler.dense.weight, encoder.pooler.dense.weight)
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight
    )


def test_import_accepts_legacy_keys(tmp_path):
    """Old files: tied decoder copies (accepted only if really tied), LayerNorm gamma/beta,
    position-id buffers."""
    torch.manual_seed(9)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**TINY))
    hf.save_pretrained(tmp_path / "legacy")
    file = tmp_path / "legacy" / "model.safetensors"
    state = load_file(file)
    legacy = {}
    for key, value in state.items():
        if key.endswith("LayerNorm.weight"):
            key = key.removesuffix("weight") + "gamma"
        elif key.endswith("LayerNorm.bias"):
            key = key.removesuffix("bias") + "beta"
        legacy[key] = value
    legacy.update({k: state[v].clone() for k, v in TIED.items()})
    legacy["bert.embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    save_file(legacy, str(file))
    model = bert_hf.import_hf(tmp_path / "legacy")
    assert sorted(model.state_dict()) == sorted(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    legacy["cls.predictions.decoder.bias"] += 1
    save_file(legacy, str(file))
    with pytest.raises(ValueError, match="cls.predictions.decoder.bias differs.*untied"):
        bert_hf.import_hf(tmp_path / "legacy")


def test_import_rejects_foreign_configs_and_mismatched_keys(tmp_path):
    model = our_model(10)
    bert_hf.export_hf(model, tmp_path / "out")
    path = tmp_path / "out"
    cfg = json.loads((path / "config.json").read_text())
    for change, message in [
        ({"model_type": "roberta"}, "model_type is 'roberta', expected 'bert'"),
        ({"hidden_act": "relu"}, "hidden_act='relu' is not supported"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ]:
        (path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=message):
            bert_hf.import_hf(path)
    (path / "config.json").write_text(json.dumps(cfg))
    assert bert_hf.import_hf(path, hidden_dropout_prob=0.0).config.hidden_dropout_prob == 0.0
    state = load_file(path / "model.safetensors")
    save_file({**state, "classifier.weight": torch.zeros(2, 32)}, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unknown keys: classifier\.weight"):
        bert_hf.import_hf(path)
    del state["bert.encoder.layer.1.output.dense.bias"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys: bert\.encoder\.layer\.1\.output\.dense"):
        bert_hf.import_hf(path)


# Exact counts (vocab 30,522), equal to transformers' BertForPreTraining:
#   bert-base  110,106,428 = BertModel 109,482,240 + MLM transform 592,128 + bias 30,522
#              + NSP 1,538  (paper "110M": +0.10 %)
#   bert-large 336,226,108 = BertModel 335,141,888 + 1,051,648 + 30,522 + 2,050
#              (paper "340M": -1.11 %; the paper's figure is rounded generously)
@pytest.mark.parametrize(
    "preset,exact,paper",
    [("bert-base", 110_106_428, 110e6), ("bert-large", 336_226_108, 340e6)],
)
def test_preset_counts_equal_transformers_and_the_paper(preset, exact, paper):
    kwargs = bert.PRESETS[preset]
    with torch.device("meta"):
        ours = bert.param_counts(bert.Model(bert.Config(**kwargs)))
        ref = transformers.BertForPreTraining(transformers.BertConfig(**kwargs)).num_parameters()
    assert ours["total"] == ref == exact
    assert ours["embedding"] + ours["backbone"] == ours["total"]
    hidden = kwargs.get("hidden_size", 768)
    assert ours["embedding"] == (30522 + 512 + 2) * hidden + 2 * hidden  # rows + LayerNorm
    assert abs(ours["total"] - paper) / paper <= 0.02
    assert bert.PAPER_PARAMS[preset] == f"{round(paper / 1e6)}M"


def test_debug_preset_trains_on_both_objectives():
    torch.manual_seed(0)
    model = bert.Model(bert.Config(**bert.PRESETS["bert-debug"], vocab_size=120))
    ids = torch.randint(5, 120, (4, 32))
    types = (torch.arange(32) >= 16).long().expand(4, -1)
    labels = torch.where(torch.rand(ids.shape) < 0.15, ids, -100)
    labels[:, 0] = ids[:, 0]
    nsp_labels = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = model(ids, torch.ones_like(ids), labels, None, types, nsp_labels)
        loss = out["mlm_loss_sum"] / out["mlm_count"]
        loss = loss + out["sentence_loss_sum"] / out["sentence_count"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_config_validation_and_length_limit():
    assert bert.Config().vocab_size == 30522 and bert.Config().type_vocab_size == 2
    with pytest.raises(ValueError, match="bert config: type_vocab_size must be >= 1"):
        bert.Config(type_vocab_size=0)
    with pytest.raises(TypeError, match="hiden_size"):
        bert.Config(hiden_size=3)
    model = bert.Model(bert.Config(**TINY))
    limit = TINY["max_position_embeddings"]
    ids = torch.full((1, limit), 5)
    model.mlm_logits(ids, torch.ones_like(ids))  # the longest allowed sequence runs
    ids = torch.full((1, limit + 1), 5)
    with pytest.raises(ValueError, match="exceeds the model's maximum 40"):
        model.sentence_logits(ids, torch.ones_like(ids))
