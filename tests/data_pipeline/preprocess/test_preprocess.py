"""preprocess: formats, 1 vs N ranks/workers, plain-webdataset read-back, resume, refusals."""

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from data_pipeline.preprocess import PreprocessConfig, run
from data_pipeline.readers import ReadOptions
from data_pipeline.shards import Manifest, ShardReader
from data_pipeline.tokenizer import Tokenizer

MPIRUN = Path(sys.executable).parent / "mpirun"


def paragraphs(limit: int) -> list[str]:
    """Paragraphs of the pydoc topics (text that ships with Python), in a fixed order."""
    out = []
    for key in sorted(topics):
        out += [p.strip() for p in topics[key].split("\n\n") if p.strip()]
    return out[:limit]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    Tokenizer.train(paragraphs(3000), d, vocab_size=800)
    return str(d)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A blank-line txt file, a jsonl file and a parquet file of distinct paragraphs."""
    d = tmp_path_factory.mktemp("corpus") / "corpus"
    d.mkdir()
    docs = paragraphs(900)
    (d / "a.txt").write_text("\n\n".join(docs[:300]) + "\n")
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[300:600]))
    pq.write_table(pa.table({"text": docs[600:]}), d / "c.parquet", row_group_size=40)
    return d


def cli(*args, mpi: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data_pipeline", *args]
    if mpi:
        cmd = [str(MPIRUN), "-n", str(mpi), *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def digests(d: Path) -> dict[str, str]:
    """sha256 of every file in a shard directory (progress records included)."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def documents(shard_dir: Path) -> dict[str, tuple[list[int], list[bool]]]:
    man = Manifest.load(shard_dir)
    out = {}
    for info in man.shards:
        r = ShardReader(shard_dir, info, man.dtype)
        metas = [
            s["meta.json"]
            for s in wds.WebDataset(str(shard_dir / info.name), shardshuffle=False).decode()
        ]
        for i in range(len(r)):
            ids, ws = r.read(i)
            out[metas[i]["id"]] = (ids.tolist(), ws.tolist())
        r.close()
    return out


def test_txt_jsonl_parquet_give_identical_token_streams(tmp_path, tok_dir):
    docs = paragraphs(120)[60:]
    (tmp_path / "t").mkdir()
    for i, t in enumerate(docs):
        (tmp_path / "t" / f"{i:03d}.txt").write_text(t + "\n")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "d.parquet", row_group_size=16)
    streams = []
    for name in ("t", "d.jsonl", "d.parquet"):
        out = tmp_path / f"out-{name}"
        run(PreprocessConfig([str(tmp_path / name)], tok_dir, str(out), unit_bytes=3000))
        docs_out = documents(out)
        streams.append(
            [docs_out[k] for k in sorted(docs_out, key=lambda k: int(re.findall(r"\d+", k)[-1]))]
        )
    assert streams[0] == streams[1] == streams[2]
    tok = Tokenizer.load(tok_dir)
    assert [tok.decode(ids) for ids, _ in streams[0]] == docs


@pytest.mark.slow
def test_one_rank_two_workers_and_two_mpi_ranks_write_identical_shards(tmp_path, tok_dir, corpus):
    args = [
        "--input",
        str(corpus),
        "--tokenizer",
        tok_dir,
        "--doc-sep",
        "blank-line",
        "--unit-bytes",
        "20K",
        "--shard-size",
        "64K",
        "--valid-fraction",
        "0.1",
    ]
    single = tmp_path / "single"
    manifest = run(
        PreprocessConfig(
            [str(corpus)],
            tok_dir,
            str(single),
            valid_fraction=0.1,
            shard_bytes=64 << 10,
            unit_bytes=20 << 10,
            read=ReadOptions(doc_sep="blank-line"),
        )
    )
    assert manifest["stats"]["units"] > 4 and len(manifest["shards"]) > 8
    assert manifest["stats"]["splits"]["valid"]["documents"] > 0
    cli("preprocess", *args, "--out", str(tmp_path / "workers"), "--workers", "2")
    assert digests(tmp_path / "workers") == digests(single)
    if not MPIRUN.exists():
        pytest.skip("mpirun not installed in the venv (pip install mpich)")
    p = cli("preprocess", *args, "--out", str(tmp_path / "mpi"), mpi=2)
    assert "2 rank(s)" in p.stdout
    assert digests(tmp_path / "mpi") == digests(single)


def test_shards_read_back_with_plain_webdataset_match_the_manifest(tmp_path, tok_dir, corpus):
    out = tmp_path / "out"
    run(
        PreprocessConfig(
            [str(corpus)],
            tok_dir,
            str(out),
            shard_bytes=64 << 10,
            unit_bytes=30 << 10,
            read=ReadOptions(doc_sep="blank-line"),
        )
    )
    man = json.loads((out / "manifest.json").read_text())
    assert man["dtype"] == "uint16" and man["tokenizer"]["vocab_size"] == 800
    assert (out / "tokenizer").is_dir() and Tokenizer.load(out / "tokenizer").fingerprint == man[
        "tokenizer"
    ]["fingerprint"]
    ids_seen = set()
    for s in man["shards"]:
        samples = list(wds.WebDataset(str(out / s["name"]), shardshuffle=False).decode())
        assert len(samples) == s["documents"]
        assert sum(len(x["input_ids.npy"]) for x in samples) == s["tokens"]
        for x in samples:
            ws = np.unpackbits(x["word_start.npy"], count=len(x["input_ids.npy"])).astype(bool)
            assert ws[0] and x["meta.json"]["tokens"] == len(x["input_ids.npy"])
            ids_seen.add(x["meta.json"]["id"])
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    assert len(ids_seen) == man["stats"]["documents"] == 900
    assert {"corpus/a.txt:1", "corpus/b.jsonl:1", "corpus/c.parquet:row0"} <= ids_seen


def test_resume_redoes_only_unfinished_units(tmp_path, tok_dir, corpus):
    cfg = dict(unit_bytes=40 << 10, read=ReadOptions(doc_sep="blank-line"))
    clean = tmp_path / "clean"
    n_units = run(PreprocessConfig([str(corpus)], tok_dir, str(clean), **cfg))["stats"]["units"]
    assert n_units >= 4
    out = tmp_path / "out"
    run(PreprocessConfig([str(corpus)], tok_dir, str(out), **cfg))
    (out / "manifest.json").unlink()
    (out / ".progress" / "unit-000001.json").unlink()  # crashed before recording unit 1
    (out / "train-u000002-000.tar").unlink()  # recorded, but its shard is gone
    (out / ".train-u000003-000.tar.tmp-99999").write_bytes(b"half a shard")
    kept = (out / ".progress" / "unit-000000.json").stat().st_mtime_ns
    p = cli(
        "preprocess",
        "--input",
        str(corpus),
        "--tokenizer",
        tok_dir,
        "--out",
        str(out),
        "--doc-sep",
        "blank-line",
        "--unit-bytes",
        "40K",
    )
    redone = sorted(int(u) for u in re.findall(r"^unit u(\d+) \(\d+/\d+\) done:", p.stderr, re.M))
    assert redone == [1, 2]
    assert (out / ".progress" / "unit-000000.json").stat().st_mtime_ns == kept
    assert digests(out) == digests(clean)


@pytest.mark.slow
def test_killed_run_resumes_to_the_clean_result(tmp_path, tok_dir, corpus):
    args = [
        "preprocess",
        "--input",
        str(corpus),
        "--tokenizer",
        tok_dir,
        "--doc-sep",
        "blank-line",
        "--unit-bytes",
        "4K",
        "--shard-size",
        "8K",
    ]
    clean = tmp_path / "clean"
    cli(*args, "--out", str(clean))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_pipeline", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / ".progress").glob("unit-*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    p = cli(*args, "--out", str(out))
    assert "already done" in p.stderr
    assert digests(out) == digests(clean)


def test_refuses_to_mix_runs_and_non_tokenizers(tmp_path, tok_dir, corpus):
    out = tmp_path / "out"
    run(PreprocessConfig([str(corpus / "b.jsonl")], tok_dir, str(out)))
    p = cli(
        "preprocess",
        "--input",
        str(corpus / "b.jsonl"),
        "--tokenizer",
        tok_dir,
        "--out",
        str(out),
        "--shard-size",
        "1M",
        check=False,
    )
    assert (
        p.returncode == 2
        and "different preprocessing run" in p.stderr
        and "shard_bytes" in p.stderr
    )
    assert len(p.stderr.strip().splitlines()) == 1
    other_tok = tmp_path / "tok2"
    Tokenizer.train(paragraphs(500), other_tok, vocab_size=700)
    p = cli(
        "preprocess",
        "--input",
        str(corpus / "b.jsonl"),
        "--tokenizer",
        str(other_tok),
        "--out",
        str(out),
        check=False,
    )
    assert p.returncode == 2 and "tokenizer fingerprint" in p.stderr
    p = cli(
        "preprocess",
        "--input",
        str(corpus),
        "--tokenizer",
        str(corpus),
        "--out",
        str(tmp_path / "x"),
        check=False,
    )
    assert p.returncode == 2 and "tokenizer" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = cli(
        "preprocess",
        "--input",
        str(corpus),
        "--tokenizer",
        tok_dir,
        "--out",
        str(corpus),
        check=False,
    )
    assert p.returncode == 2 and "not empty" in p.stderr


def test_valid_split_by_fraction_and_by_file(tmp_path, tok_dir, corpus):
    out = tmp_path / "frac"
    man = run(
        PreprocessConfig(
            [str(corpus)],
            tok_dir,
            str(out),
            valid_fraction=0.25,
            read=ReadOptions(doc_sep="blank-line"),
        )
    )
    v = man["stats"]["splits"]["valid"]["documents"]
    assert 0.18 * 900 < v < 0.32 * 900 and man["stats"]["splits"]["train"]["documents"] == 900 - v
    again = run(
        PreprocessConfig(
            [str(corpus)],
            tok_dir,
            str(tmp_path / "frac2"),
            valid_fraction=0.25,
            read=ReadOptions(doc_sep="blank-line"),
        )
    )
    assert again["shards"] == man["shards"]
    man = run(
        PreprocessConfig(
            [str(corpus / "a.txt")],
            tok_dir,
            str(tmp_path / "file"),
            valid_inputs=[str(corpus / "b.jsonl")],
            read=ReadOptions(doc_sep="blank-line"),
        )
    )
    assert man["stats"]["splits"]["valid"]["documents"] == 300
    assert all(s["name"].startswith(s["split"]) for s in man["shards"])


@pytest.mark.slow
def test_a_bad_file_on_one_rank_fails_the_whole_job_without_hanging(tmp_path, tok_dir, corpus):
    if not MPIRUN.exists():
        pytest.skip("mpirun not installed in the venv (pip install mpich)")
    bad = tmp_path / "c"
    bad.mkdir()
    (bad / "a.jsonl").write_text((corpus / "b.jsonl").read_text())
    (bad / "z.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    p = cli(
        "preprocess",
        "--input",
        str(bad),
        "--tokenizer",
        tok_dir,
        "--out",
        str(tmp_path / "o"),
        "--unit-bytes",
        "16K",
        mpi=2,
        check=False,
    )
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert p.returncode == 2 and len(errors) == 1
    assert errors[0].endswith("c/z.jsonl:2: no field 'text' (keys: body); see --text-field")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_segment_zh_marks_chinese_word_starts_without_changing_tokens(tmp_path, tok_dir):
    (tmp_path / "z.jsonl").write_text(
        json.dumps({"text": "我们今天去北京大学参观了图书馆。 hello world"}, ensure_ascii=False)
        + "\n"
    )
    got = {}
    for zh in (False, True):
        out = tmp_path / f"out{zh}"
        run(PreprocessConfig([str(tmp_path / "z.jsonl")], tok_dir, str(out), segment_zh=zh))
        got[zh] = documents(out)["z.jsonl:1"]
    assert got[True][0] == got[False][0]  # same ids
    assert sum(got[True][1]) > sum(got[False][1]) + 3  # jieba words start inside the Han run
    p = cli(
        "preprocess",
        "--input",
        str(tmp_path / "z.jsonl"),
        "--tokenizer",
        tok_dir,
        "--out",
        str(tmp_path / "outTrue"),
        check=False,
    )
    assert p.returncode == 2 and "segment_zh" in p.stderr  # a changed option is another run
