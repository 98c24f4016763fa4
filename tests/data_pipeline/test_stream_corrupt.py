"""Damaged shards: named at start-up, or skipped and counted mid-run; never a hang."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from data_pipeline.masking import MaskingConfig
from data_pipeline.shards import Manifest, load_index
from data_pipeline.stream import LoaderConfig, PretrainLoader, ShardCheckError
from data_pipeline.synthetic import write_synthetic_shards

COUNTS = [12, 7, 15, 9]


@pytest.fixture
def shard_dir(tmp_path):
    write_synthetic_shards(tmp_path, COUNTS, seed=11, mean_len=14, p_long=0.05, long_len=50)
    return tmp_path


def make(shard_dir, workers=0, **kw):
    cfg = LoaderConfig(str(shard_dir), seq_len=16, num_workers=workers, shuffle_block=2, **kw)
    return PretrainLoader(cfg, MaskingConfig(), global_batch_size=8, micro_batch_size=4)


def whole_epoch(loader):
    """Epoch 0's micro-batches (nothing of epoch 1 is consumed) and the loader's stats."""
    n = loader.batches_per_epoch() * loader.grad_accum
    it = iter(loader)
    batches = [next(it) for _ in range(n)]
    loader.close()
    assert all(int(b["epoch"]) == 0 for b in batches)
    return batches, loader.stats()


def flip_document(shard_dir, shard_no, doc):
    """Overwrite the first token of one document in place (same size, wrong crc / sha256)."""
    info = Manifest.load(shard_dir).split("train")[shard_no]
    offset, n = (int(v) for v in load_index(shard_dir, info)[doc, :2])
    assert n > 0
    with open(shard_dir / info.name, "r+b") as f:
        f.seek(offset)
        first = f.read(1)
        f.seek(offset)
        f.write(bytes([first[0] ^ 0xFF]))
    return info, n


def test_missing_and_truncated_shards_named_at_start_up(shard_dir):
    shards = Manifest.load(shard_dir).split("train")
    os.remove(shard_dir / shards[1].name)
    with open(shard_dir / shards[3].name, "r+b") as f:
        f.truncate(shards[3].bytes - 700)
    with pytest.raises(ShardCheckError) as err:
        make(shard_dir)
    msg = str(err.value)
    assert "\n" not in msg and "2 bad train shard(s), 16 samples lost" in msg
    assert f"{shards[1].name}: missing (7 samples)" in msg
    assert f"{shards[3].name}: truncated or altered" in msg and "(9 samples)" in msg


def test_skip_policy_counts_lost_samples_and_keeps_going(shard_dir, caplog):
    shards = Manifest.load(shard_dir).split("train")
    os.remove(shard_dir / shards[2].name)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.stream"):
        loader = make(shard_dir, on_corrupt="skip")
    assert shards[2].name in caplog.text and "15 samples lost" in caplog.text
    batches, stats = whole_epoch(loader)
    assert stats["skipped_shards"] == {
        shards[2].name: {"reason": "missing", "samples_lost": 15, "when": "start-up"}
    }
    assert stats["samples_lost"] == 15
    assert stats["content_tokens"] == sum(s.tokens for s in shards) - shards[2].tokens
    ids = torch.cat([b["sample_ids"] for b in batches])
    assert sorted(ids[ids >= 0].tolist()) == list(range(int((ids >= 0).sum())))


def test_flipped_bytes_skipped_mid_run_and_counted(shard_dir, caplog):
    clean, clean_stats = whole_epoch(make(shard_dir))
    info, n = flip_document(shard_dir, 2, 4)
    with pytest.raises(ShardCheckError, match="sha256 mismatch"):
        make(shard_dir, verify="full")
    with caplog.at_level(logging.WARNING, logger="data_pipeline.stream"):
        damaged, stats = whole_epoch(make(shard_dir, workers=2))  # found by a worker
    assert f"skipped document 4 of {info.name}: document 4 fails its crc32" in caplog.text
    assert stats["lost_documents"] == {info.name: 1} and stats["samples_lost"] == 1
    assert stats["content_tokens"] == clean_stats["content_tokens"] - n
    assert len(damaged) == len(clean)  # the layout of the epoch is unchanged
    changed = 0
    for a, b in zip(clean, damaged, strict=True):
        assert torch.equal(a["sample_ids"], b["sample_ids"])
        for i in range(len(a["sample_ids"])):
            if not torch.equal(a["attention_mask"][i], b["attention_mask"][i]):
                changed += 1  # the row lost the document's tokens and is padded instead
                assert b["attention_mask"][i].sum() < a["attention_mask"][i].sum()
            else:
                assert torch.equal(a["input_ids"][i], b["input_ids"][i])
    assert 1 <= changed <= -(-(n + 1) // 15) + 1


def test_shard_vanishing_mid_run_is_counted(shard_dir, caplog):
    loader = make(shard_dir)  # start-up check passes
    info = Manifest.load(shard_dir).split("train")[0]
    os.remove(shard_dir / info.name)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.stream"):
        batches, stats = whole_epoch(loader)
    assert stats["skipped_shards"][info.name]["when"] == "mid-run"
    assert stats["skipped_shards"][info.name]["samples_lost"] == 12
    assert stats["samples_lost"] == 12 and info.name in caplog.text
    total = sum(s.tokens for s in Manifest.load(shard_dir).split("train"))
    assert stats["content_tokens"] == total - info.tokens
    # Every row still has a fixed shape and nothing unreadable is predicted.
    assert {tuple(b["input_ids"].shape) for b in batches} == {(4, 16)}
    labels = torch.cat([b["labels"] for b in batches])
    att = torch.cat([b["attention_mask"] for b in batches])
    assert (labels[att == 0] == -100).all()


def test_index_disagreeing_with_manifest_is_a_lost_shard(shard_dir):
    info = Manifest.load(shard_dir).split("train")[1]
    index = np.load(shard_dir / info.index)
    index[0, 1] += 3  # lengths no longer add up to the manifest's token count
    np.save(shard_dir / info.index, index)
    _, stats = whole_epoch(make(shard_dir, packing="doc"))
    assert "manifest" in stats["skipped_shards"][info.name]["reason"]
    assert stats["samples_lost"] == 7


def test_shard_truncated_mid_run_loses_only_the_cut_documents(shard_dir):
    loader = make(shard_dir)
    info = Manifest.load(shard_dir).split("train")[2]
    index = load_index(shard_dir, info)
    cut = int(index[8, 0])  # documents 8.. now end past the end of the file
    with open(shard_dir / info.name, "r+b") as f:
        f.truncate(cut)
    _, stats = whole_epoch(loader)
    assert stats["lost_documents"] == {info.name: 15 - 8}
    assert stats["samples_lost"] == 7 and stats["skipped_shards"] == {}
    total = sum(s.tokens for s in Manifest.load(shard_dir).split("train"))
    assert stats["content_tokens"] == total - int(index[8:, 1].sum())


def test_skip_policy_at_start_up_for_truncated_and_sha_mismatched_shards(shard_dir, caplog):
    shards = Manifest.load(shard_dir).split("train")
    with open(shard_dir / shards[0].name, "r+b") as f:
        f.truncate(shards[0].bytes - 300)  # a truncated tar
    info, _ = flip_document(shard_dir, 3, 2)  # same size, wrong sha256
    with caplog.at_level(logging.WARNING, logger="data_pipeline.stream"):
        loader = make(shard_dir, on_corrupt="skip", verify="full")
    assert shards[0].name in caplog.text and info.name in caplog.text
    batches, stats = whole_epoch(loader)
    assert set(stats["skipped_shards"]) == {shards[0].name, info.name}
    assert stats["skipped_shards"][info.name]["reason"] == "sha256 mismatch against the manifest"
    assert "truncated" in stats["skipped_shards"][shards[0].name]["reason"]
    assert {s["when"] for s in stats["skipped_shards"].values()} == {"start-up"}
    assert stats["samples_lost"] == COUNTS[0] + COUNTS[3]
    kept = sum(s.tokens for s in shards) - shards[0].tokens - shards[3].tokens
    assert stats["content_tokens"] == kept
    ids = torch.cat([b["sample_ids"] for b in batches])
    assert sorted(ids[ids >= 0].tolist()) == list(range(int((ids >= 0).sum())))


def test_a_flipped_byte_in_an_index_is_named_by_the_full_check(shard_dir):
    info = Manifest.load(shard_dir).split("train")[2]
    path = shard_dir / info.index
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # the last crc32 entry: np.load still reads it
    path.write_bytes(bytes(raw))
    make(shard_dir)  # the cheap default check sees the right size: passes
    with pytest.raises(ShardCheckError) as err:
        make(shard_dir, verify="full")
    assert f"{info.name}: index {info.index}: sha256 mismatch" in str(err.value)
    assert f"({COUNTS[2]} samples)" in str(err.value)
