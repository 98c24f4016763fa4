"""`python -m pretrain fill-mask` agrees with transformers' fill-mask pipeline on the same
exported directory (top-k ids and scores), for BERT (WordPiece), ALBERT, RoBERTa (<mask>),
ELECTRA ([MASK]) and
DeBERTa (MLM, RTD, and MLM trained with the enhanced mask decoder, which HF runs without)."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import pytest
import torch

from data_pipeline.tokenizer import Tokenizer
from pretrain.cli import main as cli
from pretrain.commands.fill_mask import fill_mask
from pretrain.export import export_model
from pretrain.models import albert, bert, deberta, electra, roberta

transformers = pytest.importorskip("transformers")

# case -> (module, Config overrides, tokenizer family)
CASES = {
    "bert": (bert, {}, "wordpiece"),
    "albert": (albert, {}, "bert"),
    "roberta": (roberta, {}, "roberta"),
    "electra": (electra, {}, "bert"),
    "deberta-mlm": (deberta, {"objective": "mlm"}, "bert"),
    "deberta-rtd": (deberta, {"objective": "rtd"}, "bert"),
    "deberta-emd": (deberta, {"objective": "mlm", "emd": True}, "bert"),
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """family -> tokenizer directory, trained once on Python's own docs."""
    out = {}
    for name, kind, family in (
        ("roberta", "bytelevel", "roberta"),
        ("bert", "spm-bpe", "bert"),
        ("wordpiece", "wordpiece", "bert"),
    ):
        out[name] = tmp_path_factory.mktemp(f"tok-{name}")
        Tokenizer.train(list(topics.values()), out[name], 800, kind=kind, family=family)
    return out


def exported(tmp_path, tokenizers, case: str):
    """(HF dir, tokenizer, model): a debug model with a skewed output bias (so the top-k
    order is well defined) exported with the tokenizer."""
    mod, overrides, family = CASES[case]
    tok = Tokenizer.load(tokenizers[family])
    arch = mod.__name__.rsplit(".", 1)[-1]
    torch.manual_seed(0)
    model = mod.Model(
        mod.Config(
            **mod.PRESETS[f"{arch}-debug"],
            vocab_size=tok.vocab_size,
            pad_token_id=tok.pad_id,
            **overrides,
        )
    ).eval()
    if arch == "roberta":
        bias = model.lm_head.bias
    elif arch == "bert":
        bias = model.cls.predictions.bias
    elif arch == "albert":
        bias = model.predictions.bias
    elif arch == "electra":
        bias = model.generator.generator_lm_head.bias
    else:
        bias = model.mlm_part.lm_predictions.lm_head.bias
    with torch.no_grad():
        bias.normal_(0, 2.0)
    return export_model(model, tokenizers[family], tmp_path / "hf"), tok, model


def hf_fill(model_dir, text, top_k):
    pipe = transformers.pipeline(
        "fill-mask", model=str(model_dir), tokenizer=str(model_dir), device="cpu"
    )
    out = pipe(text, top_k=top_k)
    return out if isinstance(out[0], list) else [out]


@pytest.mark.parametrize("case", list(CASES))
def test_cli_matches_transformers_pipeline(case, tmp_path, tokenizers, capsys):
    model_dir, tok, model = exported(tmp_path, tokenizers, case)
    text = "Return the <mask> of the named attribute of <mask> object."
    assert cli(["fill-mask", "--model", str(model_dir), "--top-k", "4", "--json", text]) == 0
    ours = json.loads(capsys.readouterr().out)
    rtd = (model_dir / "generator").is_dir()
    assert rtd == (case in ("electra", "deberta-rtd"))
    theirs = hf_fill(
        model_dir / "generator" if rtd else model_dir, text.replace("<mask>", tok.specials.mask), 4
    )
    assert len(ours) == len(theirs) == 2
    for mine, ref in zip(ours, theirs, strict=True):
        assert [p["token_id"] for p in mine] == [p["token"] for p in ref]
        for p, r in zip(mine, ref, strict=True):
            assert abs(p["score"] - r["score"]) <= 1e-5
            assert p["token"] == tok.decode([p["token_id"]])
    if case == "deberta-emd":
        # The export keeps the EMD table (for init_from); HF runs without EMD, and so does
        # fill-mask on the directory, while the trained model decodes with EMD.
        assert "deberta.embeddings.position_embeddings.weight" in _safetensors_keys(model_dir)
        with_emd = fill_mask(model, tok, text, top_k=4)
        assert _scores(with_emd) != _scores(ours)


def _scores(preds: list[list[dict]]) -> list[list[float]]:
    return [[p["score"] for p in mask] for mask in preds]


def _safetensors_keys(model_dir) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_function_and_plain_output(tmp_path, tokenizers, capsys):
    model_dir, tok, model = exported(tmp_path, tokenizers, "roberta")
    preds = fill_mask(model, tok, "The <mask> statement.", top_k=3)
    assert len(preds) == 1 and len(preds[0]) == 3
    scores = [p["score"] for p in preds[0]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    ids = torch.as_tensor(tok.encode_for_model("The <mask> statement."))[None]
    probs = model.mlm_logits(ids, torch.ones_like(ids))[0, ids[0] == tok.mask_id].softmax(-1)
    assert preds[0][0]["token_id"] == int(probs.argmax())
    assert (
        cli(["fill-mask", "--model", str(model_dir), "--top-k", "2", "The <mask> statement."]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mask 1:" and len(out) == 3 and f"(id {preds[0][0]['token_id']})" in out[1]


def test_several_texts_and_a_file_of_lines(tmp_path, tokenizers, capsys):
    model_dir, tok, model = exported(tmp_path, tokenizers, "roberta")
    texts = ["The <mask> statement.", "Return a new <mask> of the <mask>."]
    lines = tmp_path / "texts.txt"
    lines.write_text("Open the <mask>.\n\nA <mask> b\n")
    argv = ["fill-mask", "--model", str(model_dir), "--top-k", "2", "--json"]
    assert cli([*argv, *texts, "--file", str(lines)]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in recs] == [*texts, "Open the <mask>.", "A <mask> b"]
    assert [len(r["masks"]) for r in recs] == [1, 2, 1, 1]
    for r in recs:  # each as the function gives it for that text alone
        assert r["masks"] == fill_mask(model, tok, r["text"], top_k=2)
    assert cli(["fill-mask", "--model", str(model_dir), *texts]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"text 1: {texts[0]}" and out[1] == "mask 1:"
    assert f"text 2: {texts[1]}" in out and out.count("mask 2:") == 1
    lines.write_text("fine <mask>\nno mask on line two\n")
    assert cli(["fill-mask", "--model", str(model_dir), "--file", str(lines)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{lines}:2: no <mask> in the text")
    assert cli(["fill-mask", "--model", str(model_dir)]) == 2
    assert "no text given" in capsys.readouterr().err


def test_errors_are_one_line(tmp_path, tokenizers, capsys):
    model_dir, _, _ = exported(tmp_path, tokenizers, "electra")
    assert cli(["fill-mask", "--model", str(model_dir), "no mask here"]) == 2
    assert "error: no <mask> (or [MASK]) in the text" in capsys.readouterr().err
    roberta_dir, _, _ = exported(tmp_path / "r", tokenizers, "roberta")
    assert cli(["fill-mask", "--model", str(roberta_dir), "no mask here"]) == 2
    assert capsys.readouterr().err.strip() == "error: no <mask> in the text"
    (model_dir / "generator" / "config.json").unlink()
    assert cli(["fill-mask", "--model", str(model_dir), "a <mask>"]) == 2
    assert "without generator" in capsys.readouterr().err
    deberta_dir, _, _ = exported(tmp_path / "d", tokenizers, "deberta-rtd")
    (deberta_dir / "generator" / "config.json").unlink()
    assert cli(["fill-mask", "--model", str(deberta_dir), "a <mask>"]) == 2
    assert "DeBERTa discriminator without generator" in capsys.readouterr().err
    assert cli(["fill-mask", "--model", str(tmp_path / "nowhere"), "a <mask>"]) == 2
    assert cli(["fill-mask", "--model", str(tmp_path), "--top-k", "0", "a <mask>"]) == 2
    assert cli(["fill-mask", "--model", str(tokenizers["bert"]), "a <mask>"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
