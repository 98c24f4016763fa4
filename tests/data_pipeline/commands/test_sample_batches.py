"""``python -m data_pipeline sample-batches``: dumps the training loader's batches, with stats."""

from __future__ import annotations

import pydoc_data.topics

import numpy as np
import pytest
import torch

from data_pipeline.cli import main as cli
from data_pipeline.loader import LoaderConfig, PretrainLoader
from data_pipeline.masking import MaskingConfig
from data_pipeline.synthetic import write_shards, write_synthetic_shards
from data_pipeline.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory):
    """Shards of real text (Python's own docs) with the tokenizer in SHARD_DIR/tokenizer."""
    d = tmp_path_factory.mktemp("text")
    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    tok = Tokenizer.train(texts[:30], d / "tokenizer", vocab_size=400)
    docs = [tok.encode_with_word_starts(t) for t in texts[30:60]]
    write_shards(
        d,
        {"train": [docs[:18], docs[18:25]], "valid": [docs[25:]]},
        tok.vocab_size,
        tokenizer=tok.describe(),
    )
    return d


def test_dump_equals_training_batches_and_prints_stats(text_shards, tmp_path, capsys):
    out = tmp_path / "b.npz"
    rc = cli(
        [
            "sample-batches",
            str(text_shards),
            "--out",
            str(out),
            "--seq-len",
            "64",
            "--batch-size",
            "4",
            "--num-batches",
            "3",
            "--seed",
            "5",
            "--masking",
            "wwm",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    dump = np.load(out)
    assert dump["input_ids"].shape == (3, 4, 64) and dump["sample_ids"].shape == (3, 4)
    cfg = LoaderConfig(str(text_shards), seq_len=64, seed=5, num_workers=0)
    loader = PretrainLoader(cfg, MaskingConfig(kind="wwm"), 4, 4)
    for i, batch in zip(range(3), loader, strict=False):
        for key in ("input_ids", "labels", "attention_mask", "segment_ids", "sample_ids"):
            assert torch.equal(torch.from_numpy(dump[key][i]), batch[key]), key
    np.testing.assert_array_equal(
        dump["original_ids"], np.where(dump["labels"] != -100, dump["labels"], dump["input_ids"])
    )
    rate = float(printed.split("(rate ")[1].split(",")[0])
    assert 0.12 < rate < 0.18
    assert "mask 0.8" in printed or "mask 0.7" in printed
    assert "packing: efficiency 1.0000" in printed
    # One decoded example, from SHARD_DIR/tokenizer: masked and original text of the same row.
    example = [line for line in printed.splitlines() if line.startswith("example row")]
    assert len(example) == 2 and "<mask>" in example[0] and "<mask>" not in example[1]


def test_valid_split_and_doc_packing(text_shards, tmp_path, capsys):
    out = tmp_path / "v.npz"
    args = [
        "sample-batches",
        str(text_shards),
        "--out",
        str(out),
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--num-batches",
        "2",
        "--split",
        "valid",
        "--packing",
        "doc",
    ]
    assert cli(args) == 0
    first = dict(np.load(out))
    assert cli(args + ["--num-workers", "2"]) == 0
    again = np.load(out)
    for key, value in first.items():  # validation masks are fixed; workers change nothing
        np.testing.assert_array_equal(value, again[key])
    assert "packing: efficiency" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    assert cli(["sample-batches", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2
    assert "not a shard directory" in capsys.readouterr().err
    write_synthetic_shards(tmp_path, [5])
    args = ["sample-batches", str(tmp_path), "--out", str(tmp_path / "x.npz"), "--seq-len", "16"]
    assert cli(args + ["--tokenizer", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "cannot load tokenizer" in err and err.count("\n") == 1
    assert not (tmp_path / "x.npz").exists()
    assert cli(args) == 0  # synthetic shards, no tokenizer: statistics only
    assert "no decoded example" in capsys.readouterr().out
    assert cli(args[:-1] + ["2"]) == 2
    assert "seq_len must be >= 4" in capsys.readouterr().err
