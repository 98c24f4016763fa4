"""Bad input: counted and named skips, one-line errors, and bounded memory on huge documents."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.readers import ReaderError, ReadStats, iter_documents, list_inputs

BAD_UTF8 = b"caf\xe9 au lait"  # latin-1 bytes: invalid UTF-8


def read(paths, **kw):
    stats = ReadStats()
    docs = list(iter_documents([str(p) for p in paths], stats=stats, **kw))
    return docs, stats


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "data_pipeline", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_invalid_utf8_policies(tmp_path, kind):
    p = tmp_path / f"a.{kind}"
    line = BAD_UTF8 if kind == "txt" else b'{"text": "' + BAD_UTF8 + b'"}'
    p.write_bytes(b"fine one\n" if kind == "txt" else b'{"text": "fine one"}\n')
    p.write_bytes(p.read_bytes() + line + b"\n")
    sep = {"doc_sep": "line"} if kind == "txt" else {}
    docs, stats = read([p], encoding_errors="replace", **sep)
    assert [d.text for d in docs] == ["fine one", "caf\ufffd au lait"]
    assert stats.replaced_utf8 == 1 and stats.examples["replaced_utf8"] == [f"a.{kind}:2"]
    docs, stats = read([p], encoding_errors="skip", **sep)
    assert [d.text for d in docs] == ["fine one"]
    assert stats.skipped == {"invalid_utf8": 1} and stats.examples["invalid_utf8"] == [
        f"a.{kind}:2"
    ]
    with pytest.raises(ReaderError, match=rf"a\.{kind}:2: invalid UTF-8 at byte"):
        read([p], encoding_errors="error", **sep)


def test_lone_surrogate_escapes_in_jsonl_follow_the_policy(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "a \\ud800 b"}\n')
    docs, stats = read([p])
    assert docs[0].text == "a \ufffd b" and stats.replaced_utf8 == 1
    assert read([p], encoding_errors="skip")[1].skipped == {"invalid_utf8": 1}


def test_empty_null_and_broken_records_are_counted_with_their_place(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        '{"text": "ok"}\n{"text": "   "}\n{"text": null}\nnot json\n[1, 2]\n\n{"text": "ok2"}\n'
    )
    pq.write_table(pa.table({"text": ["x", "", None, "y"]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text(" \n\t\n")
    docs, stats = read([tmp_path])
    n = tmp_path.name
    assert [d.id for d in docs] == [
        f"{n}/a.jsonl:1",
        f"{n}/a.jsonl:7",
        f"{n}/b.parquet:row0",
        f"{n}/b.parquet:row3",
    ]
    assert stats.skipped == {"empty": 3, "null_text": 2, "invalid_json": 2}
    assert stats.examples["invalid_json"] == [
        f"{tmp_path.name}/a.jsonl:4",
        f"{tmp_path.name}/a.jsonl:5",
    ]
    assert f"{tmp_path.name}/b.parquet:row1" in stats.examples["empty"]
    assert f"{tmp_path.name}/c.txt" in stats.examples["empty"]
    assert any("skipped 2 x invalid_json" in line for line in stats.summary_lines())


def test_binary_unsupported_hidden_and_special_files_are_skipped_and_named(tmp_path):
    (tmp_path / "good.txt").write_text("hello")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "notes.md").write_text("# not a corpus file")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("hidden")
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would block forever
    docs, stats = read([tmp_path])
    assert [d.text for d in docs] == ["hello"]
    assert stats.skipped == {
        "binary_file": 1,
        "unsupported_file": 1,
        "hidden_directory": 1,
        "not_regular_file": 1,
    }
    assert stats.examples["binary_file"] == [str(tmp_path / "image.txt")]
    with pytest.raises(ReaderError, match="image.txt: binary file"):
        list_inputs([str(tmp_path / "image.txt")])
    with pytest.raises(ReaderError, match="notes.md: unsupported file type"):
        list_inputs([str(tmp_path / "notes.md")])


def test_missing_field_unreadable_and_corrupt_files_are_one_line_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(ReaderError, match=r"a\.jsonl:2: no field 'text' \(keys: body\)"):
        read([tmp_path / "a.jsonl"])
    (tmp_path / "n.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(ReaderError, match=r"n\.jsonl:1: field 'text' is int"):
        read([tmp_path / "n.jsonl"])
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(ReaderError, match=r"b\.parquet: no column 'text' \(columns: body\)"):
        read([tmp_path / "b.parquet"])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ReaderError, match="bad.parquet: not a readable parquet file"):
        read([tmp_path / "bad.parquet"])
    good = gzip.compress(b"".join(b'{"text": "line %d"}\n' % (i * i) for i in range(3000)))
    (tmp_path / "t.jsonl.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ReaderError, match="t.jsonl.gz: corrupt or truncated gzip"):
        read([tmp_path / "t.jsonl.gz"])
    d = tmp_path / "d"
    d.mkdir()
    os.symlink(tmp_path / "gone.txt", d / "dangling.txt")
    with pytest.raises(ReaderError, match="dangling.txt: cannot read"):
        read([d])
    with pytest.raises(ReaderError, match="nothing-here: no such file"):
        read([tmp_path / "nothing-here"])


def test_preprocess_reports_every_skip_in_the_summary_and_manifest(tmp_path):
    from data_pipeline.tokenizer import Tokenizer

    tok = tmp_path / "tok"
    Tokenizer.train([f"word{i % 50} text number {i}" for i in range(3000)], tok, vocab_size=400)
    c = tmp_path / "c"
    c.mkdir()
    (c / "a.jsonl").write_bytes(b'{"text": "one"}\n{"text": ""}\nbroken\n{"text": "caf\xe9"}\n')
    (c / "bin.txt").write_bytes(b"\x00\x01binary")
    p = cli("preprocess", "--input", str(c), "--tokenizer", str(tok), "--out", str(tmp_path / "s"))
    assert p.returncode == 0, p.stderr
    assert (
        "skipped 1 x binary_file" in p.stdout and "skipped 1 x empty (e.g. c/a.jsonl:2)" in p.stdout
    )
    assert "invalid UTF-8 replaced in 1 documents (e.g. c/a.jsonl:4)" in p.stdout
    read_stats = json.loads((tmp_path / "s" / "manifest.json").read_text())["stats"]["read"]
    assert read_stats["skipped"] == {"binary_file": 1, "empty": 1, "invalid_json": 1}
    assert read_stats["documents"] == 2 and read_stats["replaced_utf8"] == 1
    p = cli(
        "preprocess",
        "--input",
        str(c),
        "--tokenizer",
        str(tok),
        "--out",
        str(tmp_path / "e"),
        "--encoding-errors",
        "error",
    )
    assert p.returncode == 2 and p.stderr.strip() == (
        "error: c/a.jsonl:4: invalid UTF-8 at byte 49 (use --encoding-errors replace or skip to continue)"
    )


PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from data_pipeline.readers import iter_documents
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = chars = 0
    for d in iter_documents([sys.argv[1]], doc_sep="line"):
        n += d.final
        chars += len(d.text)
    print(n, chars, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
""")


def test_a_huge_single_line_document_streams_with_bounded_memory(tmp_path):
    size = 48 << 20
    p = tmp_path / "huge.txt"
    with open(p, "wb") as f:
        block = b"lorem ipsum dolor sit amet " * (1 << 14)
        for _ in range(size // len(block)):
            f.write(block)
        f.write(b"\nsmall\n")
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(p)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    docs, chars, grew = int(out[0]), int(out[1]), int(out[2])
    assert docs == 2 and chars == p.stat().st_size - 2
    assert grew < size // 4, f"reading a {size >> 20} MB line grew RSS by {grew >> 20} MB"


def test_a_long_document_is_one_sample_and_tokenizer_memory_stays_bounded(tmp_path):
    from data_pipeline.tokenizer import Tokenizer

    tok = tmp_path / "tok"
    Tokenizer.train(["lorem ipsum dolor sit amet consectetur " * 50] * 50, tok, vocab_size=300)
    text = ("lorem ipsum dolor sit amet consectetur adipiscing " * 60000)[:3_000_000]
    (tmp_path / "long.txt").write_text(text + "\nshort doc\n")
    (tmp_path / "short.txt").write_text("short doc\n")
    peaks = {}
    for name in ("short", "long"):
        code = (
            "import resource, sys\nfrom data_pipeline.cli import main\n"
            f"main(['preprocess', '--input', {str(tmp_path / (name + '.txt'))!r}, '--doc-sep', 'line',"
            f" '--tokenizer', {str(tok)!r}, '--out', {str(tmp_path / name)!r}])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
        )
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stderr
        peaks[name] = int(p.stdout.split()[-1])
    man = json.loads((tmp_path / "long" / "manifest.json").read_text())
    assert man["stats"]["documents"] == 2
    from data_pipeline.shards import Manifest, ShardReader

    m = Manifest.load(tmp_path / "long")
    ids, _ = ShardReader(tmp_path / "long", m.shards[0], m.dtype).read(0)
    assert Tokenizer.load(tok).decode(ids.tolist()) == text  # one sample, pieces joined exactly
    grew = peaks["long"] - peaks["short"]
    assert grew < 25 * len(text), f"a 3 MB document grew peak RSS by {grew >> 20} MB"
