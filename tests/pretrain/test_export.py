"""`python -m pretrain export` and `export_model`: HF directories with tokenizer files that
transformers' standard classes load (RoBERTa, ELECTRA, DeBERTa), round trips, one-line
errors, and HF weight files that would run code refused."""

from __future__ import annotations

import os
import pickle
from pydoc_data.topics import topics

import pytest
import torch
from safetensors.torch import load_file

from data_pipeline.common import UnsafeFileError
from data_pipeline.tokenizer import Tokenizer
from pretrain import export
from pretrain.cli import main as cli
from pretrain.export import export_model
from pretrain.models import albert, bert, deberta, deberta_hf, electra, roberta, roberta_hf

transformers = pytest.importorskip("transformers")

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    Tokenizer.train(list(topics.values()), path, 800, kind="bytelevel", family="roberta")
    return path


@pytest.fixture(scope="module")
def spm_tok_dir(tmp_path_factory):
    """A DeBERTa-v3-like tokenizer: sentencepiece-style BPE with [CLS]/[SEP]/[MASK]."""
    path = tmp_path_factory.mktemp("spm")
    Tokenizer.train(list(topics.values()), path, 800, kind="spm-bpe", family="bert")
    return path


@pytest.fixture(scope="module")
def wordpiece_tok_dir(tmp_path_factory):
    """BERT's kind of tokenizer: WordPiece with [CLS]/[SEP]/[MASK]."""
    path = tmp_path_factory.mktemp("wordpiece")
    Tokenizer.train(list(topics.values()), path, 800, kind="wordpiece", family="bert")
    return path


def tiny_roberta(tok: Tokenizer, seed: int = 0) -> roberta.Model:
    torch.manual_seed(seed)
    return roberta.Model(
        roberta.Config(
            **roberta.PRESETS["roberta-debug"], vocab_size=tok.vocab_size, pad_token_id=tok.pad_id
        )
    ).eval()


def tiny_electra(tok: Tokenizer, seed: int = 0) -> electra.Model:
    torch.manual_seed(seed)
    return electra.Model(
        electra.Config(
            **electra.PRESETS["electra-debug"], vocab_size=tok.vocab_size, pad_token_id=tok.pad_id
        )
    ).eval()


def ids_of(tok: Tokenizer, text: str) -> torch.Tensor:
    return torch.as_tensor(tok.encode_for_model(text))[None]


def test_roberta_export_loads_with_auto_classes(tok_dir, tmp_path):
    tok = Tokenizer.load(tok_dir)
    model = tiny_roberta(tok)
    out = export_model(model, tok_dir, tmp_path / "hf")
    assert TOKENIZER_FILES <= {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "RobertaForMaskedLM"
    assert (hf.config.bos_token_id, hf.config.eos_token_id) == (tok.cls_id, tok.sep_id)
    text = "Return the value of the named attribute of <mask>."
    ids = ids_of(tok, text)
    assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        diff = hf(input_ids=ids).logits - model.mlm_logits(ids, torch.ones_like(ids))
    assert diff.abs().max() <= 1e-5


def test_electra_export_writes_both_networks_with_tokenizer(tok_dir, tmp_path):
    tok = Tokenizer.load(tok_dir)
    model = tiny_electra(tok)
    out = export_model(model, tok_dir, tmp_path / "hf")
    assert TOKENIZER_FILES <= {p.name for p in (out / "generator").iterdir()}
    disc = transformers.ElectraForPreTraining.from_pretrained(out).eval()
    gen = transformers.AutoModelForMaskedLM.from_pretrained(out / "generator").eval()
    ids = ids_of(tok, "The <mask> statement is executed.")
    ones = torch.ones_like(ids)
    with torch.no_grad():
        assert (disc(input_ids=ids).logits - model.rtd_logits(ids, ones)).abs().max() <= 1e-5
        assert (gen(input_ids=ids).logits - model.mlm_logits(ids, ones)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "mod,cls,share",
    [(bert, "BertForPreTraining", "all"), (albert, "AlbertForPreTraining", "all"),
     (albert, "AlbertForPreTraining", "ffn")],
)  # fmt: skip
def test_pair_model_export_loads_in_pretraining_and_masked_lm_classes(
    mod, cls, share, wordpiece_tok_dir, tmp_path
):
    """BERT / ALBERT (ALBERT's FFN-only sharing exported unrolled): the *ForPreTraining class
    gives our MLM and NSP/SOP logits, AutoModelForMaskedLM our MLM logits, AutoTokenizer our
    ids; re-exporting the directory reproduces it."""
    tok = Tokenizer.load(wordpiece_tok_dir)
    arch = mod.__name__.rsplit(".", 1)[-1]
    extra = {"share": share} if arch == "albert" else {}
    torch.manual_seed(0)
    model = mod.Model(
        mod.Config(
            **mod.PRESETS[f"{arch}-debug"],
            vocab_size=tok.vocab_size,
            pad_token_id=tok.pad_id,
            **extra,
        )  # fmt: skip
    ).eval()
    out = export_model(model, wordpiece_tok_dir, tmp_path / "hf")
    text = "Return the value of the named attribute of [MASK]."
    ids = ids_of(tok, text)
    assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids[0].tolist()
    pre = getattr(transformers, cls).from_pretrained(out).eval()
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    ones = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    types[0, ids.shape[1] // 2 :] = 1
    with torch.no_grad():
        ref = model.mlm_logits(ids, ones, token_type_ids=types)
        hf = pre(input_ids=ids, token_type_ids=types)
        assert (hf.prediction_logits - ref).abs().max() <= 1e-5
        pair = hf.seq_relationship_logits if arch == "bert" else hf.sop_logits
        assert (pair - model.sentence_logits(ids, ones, token_type_ids=types)).abs().max() <= 1e-5
        assert (mlm(input_ids=ids).logits - model.mlm_logits(ids, ones)).abs().max() <= 1e-5
    assert cli(["export", "--model-dir", str(out), "--out", str(tmp_path / "again")]) == 0
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "again/model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("build", [tiny_roberta, tiny_electra])
def test_cli_reexport_from_model_dir_is_identical(build, tok_dir, tmp_path):
    model = build(Tokenizer.load(tok_dir))
    first = export_model(model, tok_dir, tmp_path / "first")
    assert cli(["export", "--model-dir", str(first), "--out", str(tmp_path / "second")]) == 0
    for sub in ["", "generator"] if build is tiny_electra else [""]:
        a = load_file(first / sub / "model.safetensors")
        b = load_file(tmp_path / "second" / sub / "model.safetensors")
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
        for name in TOKENIZER_FILES:
            assert (first / sub / name).read_bytes() == (
                tmp_path / "second" / sub / name
            ).read_bytes()


def test_cli_export_of_a_run_goes_through_load_run_model(tok_dir, tmp_path, monkeypatch):
    model = tiny_roberta(Tokenizer.load(tok_dir), seed=3)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    calls = []

    def load_run_model(run_dir):
        calls.append(run_dir)
        return model, tok_dir

    monkeypatch.setattr(export, "load_run_model", load_run_model)
    assert cli(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert calls == [run]
    state = load_file(tmp_path / "hf" / "model.safetensors")
    assert torch.equal(state["lm_head.bias"], model.lm_head.bias)


def test_cli_errors_are_one_line(tok_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        ["export", "--model-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")],
        ["export", "--run", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")],
        ["export", "--model-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o3")],
    ]
    for argv in cases:
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    model = tiny_roberta(Tokenizer.load(tok_dir))
    first = export_model(model, tok_dir, tmp_path / "first")
    assert cli(["export", "--model-dir", str(first), "--out", str(first)]) == 2
    assert "must differ" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a tokenizer directory"):
        export_model(model, tmp_path / "empty", tmp_path / "o4")
    small = roberta.Model(roberta.Config(**roberta.PRESETS["roberta-debug"], vocab_size=300))
    with pytest.raises(ValueError, match="not this model's tokenizer"):
        export_model(small, tok_dir, tmp_path / "o5")


@pytest.mark.parametrize("objective,emd", [("mlm", False), ("mlm", True), ("rtd", True)])
def test_deberta_export_loads_with_auto_classes(objective, emd, spm_tok_dir, tmp_path):
    """AutoTokenizer gives our ids; AutoModelForMaskedLM (the generator for RTD) our logits
    as HF runs the model (without EMD); the RTD discriminator loads as DebertaV2Model with
    our hidden states. Nothing missing, unexpected or freshly initialised."""
    tok = Tokenizer.load(spm_tok_dir)
    torch.manual_seed(0)
    model = deberta.Model(
        deberta.Config(
            **deberta.PRESETS["deberta-debug"],
            vocab_size=tok.vocab_size,
            pad_token_id=tok.pad_id,
            objective=objective,
            emd=emd,
        )
    ).eval()
    with torch.no_grad():  # biases and LayerNorms away from their initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = export_model(model, spm_tok_dir, tmp_path / "hf")
    mlm_dir = out / "generator" if objective == "rtd" else out
    text = f"Return the value of the named attribute of {tok.specials.mask} object."
    ids = ids_of(tok, text)
    ones = torch.ones_like(ids)
    for d in {out, mlm_dir}:
        assert transformers.AutoTokenizer.from_pretrained(d)(text)["input_ids"] == ids[0].tolist()
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(mlm_dir, output_loading_info=True)
    assert type(hf).__name__ == "DebertaV2ForMaskedLM"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    # HF ignores the EMD table (its DebertaV2ForMaskedLM has no EMD); kept for init_from.
    emd_key = "deberta.embeddings.position_embeddings.weight"
    assert (emd_key in load_file(mlm_dir / "model.safetensors")) == emd
    with torch.no_grad():
        diff = hf.eval()(input_ids=ids).logits - model.mlm_logits(ids, ones, emd=False)
        assert diff.abs().max() <= 1e-5
        if objective == "rtd":
            disc, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
            assert type(disc).__name__ == "DebertaV2Model"
            assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
            hidden = disc.eval()(input_ids=ids).last_hidden_state
            assert (hidden - model.encode(ids, ones)).abs().max() <= 1e-5


class Payload:
    """Unpickling this runs ``touch PATH`` (what a malicious weights file would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_hf_weight_files_that_would_run_code_are_refused(tok_dir, spm_tok_dir, tmp_path, capsys):
    """``pytorch_model.bin`` (and microsoft's ``pytorch_model.generator.bin``) are read with
    ``torch.load(weights_only=True)``: a pickled payload is refused in one line, unrun."""
    marker = tmp_path / "PAYLOAD_RAN"
    out = export_model(tiny_roberta(Tokenizer.load(tok_dir)), tok_dir, tmp_path / "hf")
    (out / "model.safetensors").unlink()
    torch.save(
        {"roberta.embeddings.word_embeddings.weight": Payload(marker)}, out / "pytorch_model.bin"
    )
    with pytest.raises(UnsafeFileError, match="pytorch_model.bin: refused to load: it references"):
        roberta_hf.import_hf(out)
    for argv in (
        ["fill-mask", "--model", str(out), "a <mask>"],
        ["export", "--model-dir", str(out), "--out", str(tmp_path / "again")],
    ):
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "posix.system" in err, err
    (out / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload(marker)}))  # bare pickle
    with pytest.raises(UnsafeFileError, match="refused to load"):
        roberta_hf.import_hf(out)
    tok = Tokenizer.load(spm_tok_dir)
    model = deberta.Model(
        deberta.Config(**deberta.PRESETS["deberta-debug"], vocab_size=tok.vocab_size)
    )
    d = export_model(model, spm_tok_dir, tmp_path / "deberta")  # RTD: microsoft's hub layout
    for f in ("generator/config.json", "generator/model.safetensors", "rtd_state.safetensors"):
        (d / f).unlink()
    torch.save({"x": Payload(marker)}, d / "pytorch_model.generator.bin")
    with pytest.raises(UnsafeFileError, match="generator.bin: refused to load"):
        deberta_hf.import_hf(d)
    assert not marker.exists()
    torch.load(d / "pytorch_model.generator.bin", weights_only=False)  # it is a real payload
    assert marker.exists()
