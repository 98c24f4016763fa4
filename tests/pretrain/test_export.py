"""`python -m pretrain export` and `export_model`: HF directories with tokenizer files that
transformers' standard classes load, round trips, and one-line errors."""

from __future__ import annotations

import sys
import types
from pydoc_data.topics import topics

import pytest
import torch
from safetensors.torch import load_file

from data_pipeline.tokenizer import Tokenizer
from pretrain.cli import main as cli
from pretrain.export import export_model
from pretrain.models import electra, roberta

transformers = pytest.importorskip("transformers")

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    Tokenizer.train(list(topics.values()), path, 800, kind="bytelevel", family="roberta")
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

    fake = types.ModuleType("pretrain.checkpoint")
    fake.load_run_model = load_run_model
    monkeypatch.setitem(sys.modules, "pretrain.checkpoint", fake)
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
