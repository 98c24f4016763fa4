"""Readers: formats, document separators, stable ids, and work-unit cuts that lose nothing."""

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.preprocess.partition import (
    apply_line_counts,
    assign,
    count_newlines,
    count_tasks,
    plan_units,
)
from data_pipeline.readers import (
    Document,
    ReaderError,
    ReadOptions,
    ReadStats,
    iter_documents,
    list_inputs,
    read_segment,
)

WORDS = ["alpha", "beta", "gamma", "délta", "日本語", "x", "yy", "\tz", "emoji😀", "end."]


def random_docs(rng: random.Random, n: int, max_words: int = 40) -> list[str]:
    """Documents with inner spaces and single newlines (never blank lines inside)."""
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, max_words))]
        text = " ".join(words)
        if rng.random() < 0.3:
            text = text.replace(" x ", "\nx ", 1)
        docs.append(text)
    return docs


def write_all_formats(tmp_path, docs: list[str]) -> dict[str, str]:
    d = tmp_path / "fmt"
    (d / "txt").mkdir(parents=True)
    for i, t in enumerate(docs):
        (d / "txt" / f"doc{i:04d}.txt").write_text(t + "\n", encoding="utf-8")
    lines = "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(docs))
    (d / "c.jsonl").write_text(lines, encoding="utf-8")
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    pq.write_table(pa.table({"text": docs}), d / "c.parquet", row_group_size=7)
    (d / "blocks.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return {
        "txt": str(d / "txt"),
        "jsonl": str(d / "c.jsonl"),
        "jsonl.gz": str(d / "c.jsonl.gz"),
        "parquet": str(d / "c.parquet"),
        "blocks": str(d / "blocks.txt"),
    }


def test_all_formats_give_the_same_documents(tmp_path):
    docs = random_docs(random.Random(0), 40)
    paths = write_all_formats(tmp_path, docs)
    for fmt, path in paths.items():
        sep = "blank-line" if fmt == "blocks" else "file"
        stats = ReadStats()
        got = list(iter_documents([path], doc_sep=sep, stats=stats))
        assert [d.text for d in got] == docs, fmt
        assert stats.documents == len(docs) and not stats.skipped, fmt
    ids = [d.id for d in iter_documents([paths["parquet"]])]
    assert ids[:2] == ["c.parquet:row0", "c.parquet:row1"]
    ids = [d.id for d in iter_documents([paths["jsonl.gz"]])]
    assert ids[:2] == ["c.jsonl.gz:1", "c.jsonl.gz:2"]
    assert next(iter_documents([paths["txt"]])).id == "txt/doc0000.txt"


def test_doc_sep_modes_and_ids(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbfone\r\ntwo\n\n  \nthree\n\n\nfour\nfive")
    by_mode = {
        m: [(d.id, d.text) for d in iter_documents([str(p)], doc_sep=m)]
        for m in ("file", "blank-line", "line")
    }
    assert by_mode["file"] == [("a.txt", "one\r\ntwo\n\n  \nthree\n\n\nfour\nfive")]
    assert by_mode["blank-line"] == [
        ("a.txt:1", "one\r\ntwo"),
        ("a.txt:5", "three"),
        ("a.txt:8", "four\nfive"),
    ]
    assert by_mode["line"] == [
        ("a.txt:1", "one"),
        ("a.txt:2", "two"),
        ("a.txt:5", "three"),
        ("a.txt:8", "four"),
        ("a.txt:9", "five"),
    ]


def test_ids_are_stable_across_runs_and_working_directories(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus" / "sub"
    corpus.mkdir(parents=True)
    (corpus / "b.txt").write_text("b1\nb2\n")
    (corpus / "a.jsonl").write_text('{"text": "a1"}\n')
    (tmp_path / "corpus" / "top.txt").write_text("t\n")
    first = [d.id for d in iter_documents([str(tmp_path / "corpus")], doc_sep="line")]
    assert first == [
        "corpus/sub/a.jsonl:1",
        "corpus/sub/b.txt:1",
        "corpus/sub/b.txt:2",
        "corpus/top.txt:1",
    ]
    monkeypatch.chdir(tmp_path)
    assert [d.id for d in iter_documents(["corpus"], doc_sep="line")] == first
    assert [d.id for d in iter_documents(["corpus/**/*.txt"], doc_sep="line")] == [
        "corpus/sub/b.txt:1",
        "corpus/sub/b.txt:2",
        "corpus/top.txt:1",
    ]
    monkeypatch.chdir(corpus)
    assert [d.id for d in iter_documents([str(tmp_path / "corpus")], doc_sep="line")] == first


def test_same_name_from_two_inputs_is_an_error(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.txt").write_text("hi")
    with pytest.raises(ReaderError, match="same document-id name 'same.txt'"):
        list_inputs([str(tmp_path / "x" / "same.txt"), str(tmp_path / "y" / "same.txt")])
    stats = ReadStats()  # the same file twice is read once, and counted
    files = list_inputs([str(tmp_path / "x"), str(tmp_path / "x" / "same.txt")], stats)
    assert len(files) == 1 and stats.skipped == {"duplicate_input": 1}


def test_long_documents_come_in_pieces(tmp_path):
    rng = random.Random(1)
    text = " ".join(rng.choice(WORDS) for _ in range(3000))
    p = tmp_path / "long.txt"
    p.write_text(text + "\n" + "short\n")
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": text}) + "\n")
    for path, sep in ((p, "line"), (tmp_path / "long.jsonl", "file")):
        opts = ReadOptions(doc_sep=sep, max_piece_chars=1000, chunk_bytes=512)
        f = list_inputs([str(path)])[0]
        seg = plan_units([f], ["train"], opts, 1 << 30)[0].segments[0]
        stats = ReadStats()
        docs = list(read_segment(f, seg, opts, stats))
        first = [d for d in docs if d.id == f"{f.name}:1"]
        assert len(first) > 10 and all(len(d.text) <= 1000 for d in first)
        assert [d.final for d in first] == [False] * (len(first) - 1) + [True]
        assert "".join(d.text for d in first) == text
        assert stats.documents == (2 if sep == "line" else 1)


def _read_units(files, units, opts, stats=None):
    out = []
    for u in units:
        for s in u.segments:
            out += read_segment(files[s.file], s, opts, stats or ReadStats())
    return out


def _number_lines(files, units):
    tasks = count_tasks(units)
    apply_line_counts(units, tasks, [count_newlines(files[f].path, a, b) for f, a, b in tasks])


@pytest.mark.parametrize("sep", ["line", "blank-line", "file"])
def test_unit_cuts_never_lose_or_repeat_a_document(tmp_path, sep):
    rng = random.Random(["line", "blank-line", "file"].index(sep))
    d = tmp_path / "c"
    d.mkdir()
    for i in range(4):  # blank runs, whitespace-only lines, CRLF, no final newline, long lines
        parts = []
        for t in random_docs(rng, rng.randint(0, 25), max_words=rng.choice([5, 60])):
            parts.append(t.replace("\n", "\r\n") if rng.random() < 0.2 else t)
            parts.append(rng.choice(["", "", " ", "\t\r", "", ""]))
        (d / f"f{i}.txt").write_text("\n".join(parts) + rng.choice(["", "\n"]), encoding="utf-8")
        (d / f"g{i}.jsonl").write_text(
            "".join(
                json.dumps({"text": t}) + "\n" + "\n" * rng.randint(0, 1)
                for t in random_docs(rng, 15)
            )
        )
    pq.write_table(pa.table({"text": random_docs(rng, 30)}), d / "h.parquet", row_group_size=4)
    with gzip.open(d / "kz.txt.gz", "wb") as f:  # gzip: one unit, never cut
        f.write(b"a\n\n\nb b\n" * 20)
    files = list_inputs([str(d)])
    for chunk in (16, 1 << 20):
        opts = ReadOptions(doc_sep=sep, chunk_bytes=chunk, max_piece_chars=max(16, chunk))
        ref_stats = ReadStats()
        ref = (
            [
                (x.id, x.text, x.final)
                for x in iter_documents([str(d)], doc_sep=sep, stats=ref_stats)
            ]
            if chunk > 16
            else None
        )
        whole = plan_units(files, ["train"] * len(files), opts, 1 << 40)
        _number_lines(files, whole)
        base = [(x.id, x.text, x.final) for x in _read_units(files, whole, opts)]
        if ref is not None:
            assert base == ref
        assert len({x[0] for x in base if x[2]}) == sum(1 for x in base if x[2])  # ids unique
        for unit_bytes in (1, 2, 3, 7, 50, 333, 4096):
            units = plan_units(files, ["train"] * len(files), opts, unit_bytes)
            _number_lines(files, units)
            got = [(x.id, x.text, x.final) for x in _read_units(files, units, opts)]
            assert got == base, (sep, chunk, unit_bytes)


def test_units_and_assignment_do_not_depend_on_ranks(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": "w" * i}) + "\n" for i in range(1, 200))
    )
    (tmp_path / "b.txt").write_text("small\n")
    opts = ReadOptions(doc_sep="line")
    files = list_inputs([str(tmp_path)])
    units = plan_units(files, ["train", "train"], opts, 4000)
    assert len(units) > 3 and [u.index for u in units] == list(range(len(units)))
    assert sum(u.weight for u in units) == sum(f.size for f in files)
    weights = [u.weight for u in units]
    for n in (1, 2, 3, 8):
        bins = assign(weights, n)
        assert sorted(i for b in bins for i in b) == list(range(len(units)))
        loads = [sum(weights[i] for i in b) for b in bins]
        assert max(loads) - min(loads) <= max(weights)  # greedy LPT bound
    assert assign(weights, 2) == assign(weights, 2)


def test_document_is_a_plain_record():
    d = Document("f.txt:3", "hello")
    assert (d.id, d.text, d.final) == ("f.txt:3", "hello", True)
