"""`python -m pretrain fill-mask` agrees with transformers' fill-mask pipeline on the same
exported directory (top-k ids and scores), for RoBERTa (<mask>) and ELECTRA ([MASK])."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import pytest
import torch

from data_pipeline.tokenizer import Tokenizer
from pretrain.cli import main as cli
from pretrain.export import export_model
from pretrain.fill_mask import fill_mask
from pretrain.models import electra, roberta

transformers = pytest.importorskip("transformers")


def exported(tmp_path, arch: str):
    """(HF dir, tokenizer, model): a debug model with a skewed output bias (so the top-k
    order is well defined) exported with a tokenizer trained on Python's own docs."""
    kind, family = ("bytelevel", "roberta") if arch == "roberta" else ("spm-bpe", "bert")
    tok = Tokenizer.train(list(topics.values()), tmp_path / "tok", 800, kind=kind, family=family)
    mod = roberta if arch == "roberta" else electra
    torch.manual_seed(0)
    model = mod.Model(
        mod.Config(
            **mod.PRESETS[f"{arch}-debug"], vocab_size=tok.vocab_size, pad_token_id=tok.pad_id
        )
    ).eval()
    bias = model.lm_head.bias if arch == "roberta" else model.generator.generator_lm_head.bias
    with torch.no_grad():
        bias.normal_(0, 2.0)
    return export_model(model, tmp_path / "tok", tmp_path / "hf"), tok, model


def hf_fill(model_dir, text, top_k):
    pipe = transformers.pipeline(
        "fill-mask", model=str(model_dir), tokenizer=str(model_dir), device="cpu"
    )
    out = pipe(text, top_k=top_k)
    return out if isinstance(out[0], list) else [out]


@pytest.mark.parametrize("arch", ["roberta", "electra"])
def test_cli_matches_transformers_pipeline(arch, tmp_path, capsys):
    model_dir, tok, _ = exported(tmp_path, arch)
    text = "Return the <mask> of the named attribute of <mask> object."
    assert cli(["fill-mask", "--model", str(model_dir), "--top-k", "4", "--json", text]) == 0
    ours = json.loads(capsys.readouterr().out)
    hf_dir = model_dir / "generator" if arch == "electra" else model_dir
    theirs = hf_fill(hf_dir, text.replace("<mask>", tok.specials.mask), 4)
    assert len(ours) == len(theirs) == 2
    for mine, ref in zip(ours, theirs, strict=True):
        assert [p["token_id"] for p in mine] == [p["token"] for p in ref]
        for p, r in zip(mine, ref, strict=True):
            assert abs(p["score"] - r["score"]) <= 1e-5
            assert p["token"] == tok.decode([p["token_id"]])


def test_function_and_plain_output(tmp_path, capsys):
    model_dir, tok, model = exported(tmp_path, "roberta")
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


def test_errors_are_one_line(tmp_path, capsys):
    model_dir, _, _ = exported(tmp_path, "electra")
    assert cli(["fill-mask", "--model", str(model_dir), "no mask here"]) == 2
    assert "no <mask>" in capsys.readouterr().err
    (model_dir / "generator" / "config.json").unlink()
    assert cli(["fill-mask", "--model", str(model_dir), "a <mask>"]) == 2
    assert "without generator" in capsys.readouterr().err
    assert cli(["fill-mask", "--model", str(tmp_path / "nowhere"), "a <mask>"]) == 2
    assert cli(["fill-mask", "--model", str(tmp_path), "--top-k", "0", "a <mask>"]) == 2
    assert cli(["fill-mask", "--model", str(tmp_path / "tok"), "a <mask>"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
