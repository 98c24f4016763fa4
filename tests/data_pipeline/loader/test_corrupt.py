"""Damaged shards: named at start-up; found as they are read (every byte of a record is
checked against the index's member crc32s) and then an error naming shard, document and
member, or (``on_corrupt="skip"``) skipped and counted; never a hang."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from data_pipeline.common import sha256_file
from data_pipeline.loader import (
    DataError,
    LoaderConfig,
    PretrainLoader,
    ShardCheckError,
    distinct_samples_lost,
)
from data_pipeline.masking import MaskingConfig
from data_pipeline.shards import INDEX_COLUMNS_V1, Manifest, index_layout, load_index
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


def flip_bytes(path, offset, count=1):
    with open(path, "r+b") as f:
        f.seek(offset)
        raw = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in raw))


def flip_document(shard_dir, shard_no, doc):
    """Overwrite the first token of one document in place (same size, wrong crc / sha256)."""
    info = Manifest.load(shard_dir).split("train")[shard_no]
    offset, n = (int(v) for v in load_index(shard_dir, info)[doc, :2])
    assert n > 0
    flip_bytes(shard_dir / info.name, offset)
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
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
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


@pytest.mark.parametrize("workers", [0, 2])
def test_damage_found_while_reading_is_one_error_naming_shard_document_and_member(
    shard_dir, workers
):
    info, _ = flip_document(shard_dir, 2, 4)
    loader = make(shard_dir, workers=workers)  # the cheap start-up check cannot see it
    with pytest.raises(DataError) as err:
        whole_epoch(loader)
    msg = str(err.value)
    assert "\n" not in msg and f"{info.name}: document 4: member " in msg
    assert ".input_ids.npy' (bytes " in msg and "fails its crc32" in msg
    assert "data.on_corrupt=skip" in msg


def test_every_byte_of_a_record_is_covered_headers_and_padding_included(shard_dir):
    """The issue's case: 64 bytes flipped in the middle of a shard, where a tar header is."""
    info = Manifest.load(shard_dir).split("train")[2]
    index = load_index(shard_dir, info)
    bounds = index[:, index_layout(index).bounds]  # record start, member ends
    assert bounds[0, 0] == 0 and (bounds[1:, 0] == bounds[:-1, -1]).all()  # contiguous
    suffixes = [".input_ids.npy", ".word_start.npy", ".sentence_start.npy", ".meta.json"]
    for member, suffix in enumerate(suffixes):
        doc = 3 + member
        for offset in (0, 200):  # the header's name field, and its size/checksum fields
            fresh = shard_dir / "fresh"
            if fresh.exists():
                for p in fresh.iterdir():
                    p.unlink()
            else:
                fresh.mkdir()
            for p in shard_dir.iterdir():
                if p.is_file():
                    (fresh / p.name).write_bytes(p.read_bytes())
            flip_bytes(fresh / info.name, int(bounds[doc, member]) + offset, 64)
            with pytest.raises(DataError, match=f"document {doc}: member '.*{suffix}'"):
                whole_epoch(make(fresh))
    # The padding after the meta member of the last document.
    last = len(index) - 1
    flip_bytes(shard_dir / info.name, int(bounds[last, -1]) - 1)
    with pytest.raises(DataError, match=f"document {last}: member '.*meta.json'"):
        whole_epoch(make(shard_dir))


def test_a_damaged_index_is_found_when_a_reader_opens_it(shard_dir):
    info = Manifest.load(shard_dir).split("train")[1]
    flip_bytes(shard_dir / info.index, (shard_dir / info.index).stat().st_size - 3)
    with pytest.raises(DataError, match=f"{info.name} unreadable mid-run: index .* sha256"):
        whole_epoch(make(shard_dir))
    _, stats = whole_epoch(make(shard_dir, on_corrupt="skip"))
    assert stats["skipped_shards"][info.name]["samples_lost"] == COUNTS[1]


def test_format_1_shards_are_still_read(shard_dir):
    """An index without member extents (format 1): the data bytes are still checked."""
    clean, _ = whole_epoch(make(shard_dir))
    man = Manifest.load(shard_dir)
    for info in man.shards:
        path = shard_dir / info.index
        np.save(path, load_index(shard_dir, info)[:, : len(INDEX_COLUMNS_V1)])
        info.index_sha256 = sha256_file(path)
    man.version = 1
    man.save(shard_dir)
    old, _ = whole_epoch(make(shard_dir))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(clean, old, strict=True))
    flip_document(shard_dir, 2, 4)
    with pytest.raises(DataError, match="document 4 fails its crc32"):
        whole_epoch(make(shard_dir))


def test_flipped_bytes_skipped_mid_run_and_counted(shard_dir, caplog):
    clean, clean_stats = whole_epoch(make(shard_dir))
    info, n = flip_document(shard_dir, 2, 4)
    with pytest.raises(ShardCheckError, match="sha256 mismatch"):
        make(shard_dir, verify="full")
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
        damaged, stats = whole_epoch(make(shard_dir, workers=2, on_corrupt="skip"))  # a worker
    assert f"skipped {info.name}: document 4: member " in caplog.text
    assert stats["lost_documents"] == {info.name: 1} and stats["samples_lost"] == 1
    assert len(stats["damage"]) == 1 and "input_ids.npy" in stats["damage"][0]
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
    loader = make(shard_dir, on_corrupt="skip")  # start-up check passes
    info = Manifest.load(shard_dir).split("train")[0]
    os.remove(shard_dir / info.name)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
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
    info.index_sha256 = sha256_file(shard_dir / info.index)  # as if the index were rewritten
    man = Manifest.load(shard_dir)
    man.shards = [info if s.name == info.name else s for s in man.shards]
    man.save(shard_dir)
    _, stats = whole_epoch(make(shard_dir, packing="doc", on_corrupt="skip"))
    assert "manifest" in stats["skipped_shards"][info.name]["reason"]
    assert stats["samples_lost"] == 7


def test_shard_truncated_mid_run_loses_only_the_cut_documents(shard_dir):
    loader = make(shard_dir, on_corrupt="skip")
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
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
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
    make(shard_dir)  # the cheap start-up check sees the right size (reading will not)
    with pytest.raises(ShardCheckError) as err:
        make(shard_dir, verify="full")
    assert f"{info.name}: index {info.index}: sha256 mismatch" in str(err.value)
    assert f"({COUNTS[2]} samples)" in str(err.value)


def test_a_job_counts_each_lost_sample_once_whatever_the_ranks(shard_dir):
    """A shard every rank skipped, and a document two ranks (or two epochs) met, count once."""
    shards = Manifest.load(shard_dir).split("train")
    os.remove(shard_dir / shards[1].name)
    info, _ = flip_document(shard_dir, 2, 4)
    per_rank = []
    for rank in (0, 1):
        cfg = LoaderConfig(str(shard_dir), seq_len=16, shuffle_block=2, on_corrupt="skip")
        loader = PretrainLoader(cfg, MaskingConfig(), 8, 4, rank, 2)
        it = iter(loader)
        for _ in range(3 * loader.batches_per_epoch()):  # three epochs
            next(it)
        loader.close()
        per_rank.append(loader.stats())
    assert all(st["skipped_shards"][shards[1].name]["samples_lost"] == 7 for st in per_rank)
    assert any(st["lost_document_ids"] == {info.name: [4]} for st in per_rank)
    assert distinct_samples_lost(per_rank) == 7 + 1
    assert sum(st["samples_lost"] for st in per_rank) > 8  # what adding ranks up would say
