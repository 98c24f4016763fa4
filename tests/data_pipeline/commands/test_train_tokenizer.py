"""``python -m data_pipeline train-tokenizer`` end to end, on a corpus written by the test."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pydoc_data.topics import topics

import pytest

from data_pipeline.cli import main
from data_pipeline.commands.train_tokenizer import resolve_family_kind
from data_pipeline.tokenizer import MODEL_FAMILIES, Tokenizer

DOCS = [topics[k] for k in sorted(topics)]
ZH = "自然语言处理研究人与计算机之间用自然语言进行有效通信的理论和方法。"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory with .txt, .jsonl and .jsonl.gz files (a mixed real-world layout)."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text("\n\n".join(DOCS[:30]), encoding="utf-8")
    with open(d / "b.jsonl", "w", encoding="utf-8") as f:
        for t in DOCS[30:60] + [ZH] * 20:
            f.write(json.dumps({"body": t, "text": "wrong field"}, ensure_ascii=False) + "\n")
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        for t in DOCS[60:]:
            f.write(json.dumps({"body": t}) + "\n")
    return d


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main(["train-tokenizer", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("kind,family", [("spm-bpe", "roberta"), ("bytelevel", "bert")])
def test_train_tokenizer_end_to_end(corpus, tmp_path, capsys, kind, family):
    out = tmp_path / "tok"
    rc, stdout, _ = run(
        [
            "--input",
            corpus,
            "--out",
            out,
            "--vocab-size",
            1500,
            "--kind",
            kind,
            "--family",
            family,
            "--text-field",
            "body",
            "--doc-sep",
            "blank-line",
        ],
        capsys,
    )
    assert rc == 0
    tok = Tokenizer.load(out)
    assert (tok.kind, tok.family, tok.vocab_size) == (kind, family, 1500)
    assert f"fingerprint: {tok.fingerprint}" in stdout and "documents:" in stdout
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer_meta.json",
    } <= {p.name for p in out.iterdir()}
    for t in DOCS[:5] + [ZH, "tabs\tand  spaces\r\n"]:
        assert tok.decode(tok.encode(t)) == t
    # the jsonl text came from --text-field body, not from "text" ("wrong field")
    used = int(re.search(r"on ([\d,]+) bytes of text", stdout).group(1).replace(",", ""))
    jsonl = sum(len(t.encode()) for t in DOCS[30:]) + 20 * len(ZH.encode())
    txt = sum(len(t.encode()) for t in DOCS[:30])
    assert jsonl + 0.95 * txt <= used <= jsonl + txt  # blank-line blocks drop blank lines


def test_train_tokenizer_refuses_bad_arguments(corpus, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    cases = [
        (
            ["--input", corpus, "--out", tmp_path / "full", "--vocab-size", 600],
            "is not empty and holds no tokenizer",
        ),
        (
            ["--input", tmp_path / "missing", "--out", tmp_path / "t", "--vocab-size", 600],
            "no such file or directory",
        ),
        (["--input", corpus, "--out", tmp_path / "t", "--vocab-size", 10], "vocab_size must be"),
        (
            # sentencepiece refuses a vocabulary the text cannot fill (HF trainers stop short)
            [
                "--input",
                corpus / "a.txt",
                "--out",
                tmp_path / "t",
                "--vocab-size",
                100_000,
                "--family",
                "albert",
            ],
            "Vocabulary size too high",
        ),
        # a reader error raised while the trainer pulls documents still names file and line
        (
            ["--input", corpus, "--out", tmp_path / "t", "--vocab-size", 600],
            "c.jsonl.gz:1: no field 'text'",
        ),
    ]
    for argv, msg in cases:
        rc, _, err = run(argv, capsys)
        assert rc == 2 and msg in err and err.count("\n") == 1, err
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "t").exists()


def test_max_train_bytes_and_retraining_in_place(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    rc, stdout, _ = run(
        [
            "--input",
            corpus,
            "--out",
            out,
            "--vocab-size",
            800,
            "--max-train-bytes",
            "64K",
            "--text-field",
            "body",
        ],
        capsys,
    )
    assert rc == 0 and "stopped reading after" in stdout
    first = Tokenizer.load(out)
    assert (first.kind, first.family) == ("bytelevel", "roberta")  # no --family, no --kind
    rc, stdout, err = run(
        ["--input", corpus, "--out", out, "--vocab-size", 800, "--text-field", "body"], capsys
    )
    assert rc == 0 and "stopped reading" not in stdout, err
    assert Tokenizer.load(out).fingerprint != first.fingerprint  # replaced: more text


def test_module_entry_point(corpus, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline",
            "train-tokenizer",
            "--input",
            str(corpus / "a.txt"),
            "--out",
            str(tmp_path / "tok"),
            "--vocab-size",
            "700",
            "--kind",
            "bytelevel",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert Tokenizer.load(tmp_path / "tok").kind == "bytelevel"


def test_family_chooses_special_tokens_and_kind():
    usual = {
        "roberta": "bytelevel",
        "bert": "wordpiece",
        "electra": "wordpiece",
        "albert": "spm-bpe",
        "deberta": "spm-bpe",
    }
    assert {f: k for f, (_, k) in MODEL_FAMILIES.items()} == usual
    assert {f for f, (specials, _) in MODEL_FAMILIES.items() if specials == "roberta"} == {
        "roberta"
    }
    for family, kind in usual.items():
        assert resolve_family_kind(family, None) == (family, kind, None)
        assert resolve_family_kind(family, kind) == (family, kind, None)
    assert resolve_family_kind(None, None) == ("roberta", "bytelevel", None)
    # --kind alone keeps the roberta specials, except wordpiece (BERT's)
    assert resolve_family_kind(None, "spm-bpe") == ("roberta", "spm-bpe", None)
    assert resolve_family_kind(None, "wordpiece") == ("bert", "wordpiece", None)
    family, kind, note = resolve_family_kind("electra", "spm-bpe")
    assert (family, kind) == ("electra", "spm-bpe")
    assert (
        note == "note: electra models usually use wordpiece tokenizers; training spm-bpe (--kind)"
    )


@pytest.mark.parametrize(
    "flags,kind,family,note",
    [
        (["--family", "electra"], "wordpiece", "bert", None),
        (["--family", "deberta"], "spm-bpe", "bert", None),
        (["--kind", "wordpiece"], "wordpiece", "bert", None),
        (["--family", "roberta", "--kind", "wordpiece"], "wordpiece", "roberta", "bytelevel"),
    ],
)
def test_family_flag_sets_the_kind(corpus, tmp_path, capsys, flags, kind, family, note):
    out = tmp_path / "tok"
    argv = ["--input", corpus / "a.txt", corpus / "b.jsonl", "--out", out, "--vocab-size", 700]
    rc, stdout, err = run([*argv, "--text-field", "body", *flags], capsys)
    assert rc == 0, err
    tok = Tokenizer.load(out)
    asked = flags[1] if flags[0] == "--family" else family
    assert (tok.kind, tok.family, tok.model_family) == (kind, family, asked)
    assert f"trained {kind} tokenizer for {asked} ({family} special tokens)" in stdout
    notes = [line for line in stdout.splitlines() if line.startswith("note: ")]
    if note is None:
        assert notes == []
    else:  # a contradicting --kind wins, with one line that says so
        assert notes == [
            f"note: {asked} models usually use {note} tokenizers; training {kind} (--kind)"
        ]
    meta = json.loads((out / "tokenizer_meta.json").read_text())
    assert meta["model_family"] == asked
    if kind == "wordpiece":  # lowercased, no exact whitespace: not a lossless round trip
        assert (out / "vocab.txt").is_file()
        assert tok.decode(tok.encode("Hello  World")) == "hello world"
        assert tok.encode(ZH).size and tok.unk_id not in tok.encode(ZH).tolist()
