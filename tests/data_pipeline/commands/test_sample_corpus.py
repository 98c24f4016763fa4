"""sample-corpus: the built-in corpus is deterministic, about 2 MB, and split by source."""

import json
import subprocess
import sys

from data_pipeline.commands import sample_corpus


def make(out):
    p = subprocess.run(
        [sys.executable, "-m", "data_pipeline", "sample-corpus", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return p


def test_sample_corpus_is_deterministic_sized_and_well_formed(tmp_path):
    p = make(tmp_path / "a")
    assert "train.jsonl" in p.stdout and "valid.jsonl" in p.stdout
    make(tmp_path / "b")
    for split in ("train", "valid"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_bytes()
    rows = {
        s: [json.loads(line) for line in open(tmp_path / "a" / f"{s}.jsonl", encoding="utf-8")]
        for s in ("train", "valid")
    }
    total = sum((tmp_path / "a" / f"{s}.jsonl").stat().st_size for s in rows)
    assert 1_000_000 < total < 4_000_000  # ~2 MB
    n_valid, n = len(rows["valid"]), len(rows["train"]) + len(rows["valid"])
    assert 0.015 * n < n_valid < 0.06 * n
    sources = [r["source"] for s in rows for r in rows[s]]
    assert len(set(sources)) == len(sources)
    assert any(s.startswith("pydoc:") for s in sources) and "json.dumps" in sources
    texts = [r["text"] for s in rows for r in rows[s]]
    assert len(set(texts)) == len(texts)
    assert all(set(r) == {"text", "source"} and len(r["text"]) >= 40 for s in rows for r in rows[s])


def test_sample_corpus_refuses_a_file_as_out_dir(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = subprocess.run(
        [sys.executable, "-m", "data_pipeline", "sample-corpus", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "not a directory" in p.stderr


def test_the_corpus_does_not_depend_on_replaced_interpreter_hooks(monkeypatch):
    """pytest replaces sys.unraisablehook and torch.distributed sys.excepthook: the corpus
    built in such a process must be the one the command writes in a fresh interpreter."""
    before = list(sample_corpus.documents())
    monkeypatch.setattr(sys, "excepthook", lambda *a: None)
    monkeypatch.setattr(sys, "unraisablehook", lambda *a: None)
    assert list(sample_corpus.documents()) == before
    assert any(src == "sys.excepthook" for src, _ in before)
    assert any(src == "sys.unraisablehook" for src, _ in before)
