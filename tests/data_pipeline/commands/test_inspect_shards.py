"""inspect: totals, per-shard lines, decoded samples, and verification of damaged shards."""

import json
import subprocess
import sys
from pydoc_data.topics import topics

import pytest

from data_pipeline.preprocess import PreprocessConfig, run
from data_pipeline.readers import ReadOptions
from data_pipeline.tokenizer import Tokenizer


def inspect(*args):
    return subprocess.run(
        [sys.executable, "-m", "data_pipeline", "inspect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def shard_dir(tmp_path):
    texts = [topics[k] for k in sorted(topics)][:40]
    Tokenizer.train(texts, tmp_path / "tok", vocab_size=600)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "shards"
    run(
        PreprocessConfig(
            [str(tmp_path / "c.jsonl")],
            str(tmp_path / "tok"),
            str(out),
            valid_fraction=0.2,
            unit_bytes=60_000,
            read=ReadOptions(),
        )
    )
    return out


def test_inspect_prints_totals_shards_and_decoded_samples(shard_dir):
    man = json.loads((shard_dir / "manifest.json").read_text())
    p = inspect(shard_dir, "--samples", "2")
    assert p.returncode == 0, p.stderr
    train = [s for s in man["shards"] if s["split"] == "train"]
    docs, toks = sum(s["documents"] for s in train), sum(s["tokens"] for s in train)
    sents = sum(s["sentences"] for s in train)
    assert (
        f"train: {len(train)} shards, {docs} documents, {toks} tokens, {sents} sentences"
        in p.stdout
    )
    assert "\n    sentences: " in p.stdout  # a shown document's first sentences
    assert "tokenizer: spm-bpe, vocab 600" in p.stdout
    for s in man["shards"]:
        assert s["name"] in p.stdout
    assert "c.jsonl:1:" in p.stdout  # the first train document, named by its id
    first = [topics[k] for k in sorted(topics)][0]
    assert first[:60].replace("\n", "\\n") in p.stdout  # decoded back to its text
    p = inspect(shard_dir, "--verify", "--samples", "0")
    assert p.returncode == 0 and "verification ok" in p.stdout and "samples:" not in p.stdout


def test_verify_names_corrupted_truncated_and_missing_shards(shard_dir):
    man = json.loads((shard_dir / "manifest.json").read_text())
    names = [s["name"] for s in man["shards"]]
    assert len(names) >= 3
    flipped = shard_dir / names[0]
    data = bytearray(flipped.read_bytes())
    data[700] ^= 0xFF  # same size, different bytes: only the checksum sees it
    flipped.write_bytes(bytes(data))
    assert inspect(shard_dir, "--samples", "0").returncode == 0  # the cheap check cannot tell
    p = inspect(shard_dir, "--verify", "--samples", "0")
    assert p.returncode == 1
    assert f"{names[0]}" in p.stdout and "sha256 mismatch" in p.stdout
    truncated = shard_dir / names[1]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    (shard_dir / names[2]).unlink()
    p = inspect(shard_dir, "--samples", "3")
    assert p.returncode == 1
    assert "truncated or altered" in p.stdout and "missing" in p.stdout
    assert "verification FAILED: 2 of" in p.stdout


def test_not_a_shard_directory_is_a_one_line_error(tmp_path):
    p = inspect(tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not a shard directory" in p.stderr
