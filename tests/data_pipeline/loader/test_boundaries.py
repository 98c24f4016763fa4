"""Span boundaries in loader batches (``masking.boundaries``), and nothing new without them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.loader import LoaderConfig, PretrainLoader, validation_loader
from data_pipeline.masking import MaskingConfig, mask_batch, row_keys, span_boundaries
from data_pipeline.synthetic import SPECIAL_IDS, write_synthetic_shards

SEQ, G, M = 24, 8, 4
BASE_KEYS = {"input_ids", "attention_mask", "labels", "segment_ids", "sample_ids", "epoch"}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    counts = {"train": [9, 14, 0, 17], "valid": [5]}
    write_synthetic_shards(d, counts, seed=5, mean_len=14, p_empty=0.05, p_long=0.05, long_len=60)
    return d


def batches(shard_dir, n, masking, valid=False, **kw):
    cfg = LoaderConfig(str(shard_dir), seq_len=SEQ, num_workers=0, shuffle_block=2, **kw)
    if valid:
        return list(validation_loader(cfg, masking, M, 0, 1))
    loader = PretrainLoader(cfg, masking, G, M)
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    loader.close()
    return out


@pytest.mark.parametrize("packing", ["full", "doc", "pairs"])
def test_span_batches_carry_boundaries_consistent_with_their_labels(shard_dir, packing):
    got = batches(shard_dir, 30, MaskingConfig(kind="span", boundaries=True), packing=packing)
    assert len({int(b["epoch"]) for b in got}) > 1  # across an epoch's end (empty rows too)
    labelled = 0
    for b in got:
        left, right, labels, att = b["span_left"], b["span_right"], b["labels"], b["attention_mask"]
        assert left.shape == right.shape == (M, SEQ)
        assert left.dtype == right.dtype == torch.int64
        want = span_boundaries(labels.numpy(), att.numpy())
        assert np.array_equal(left.numpy(), want[0]) and np.array_equal(right.numpy(), want[1])
        sel = labels != -100
        labelled += int(sel.sum())
        assert (left[~sel] == -1).all() and (right[~sel] == -1).all()
        pos = torch.arange(SEQ).expand(M, SEQ)
        # Rows start with [CLS]: every span has a left boundary, a real unlabelled token.
        assert (left[sel] >= 0).all() and (left[sel] < pos[sel]).all()
        rows = sel.nonzero()[:, 0]
        for at in (left[sel], right[sel]):
            ok = at >= 0
            assert (labels[rows[ok], at[ok]] == -100).all()
            assert (att[rows[ok], at[ok]] == 1).all()
        assert (right[sel][right[sel] >= 0] > pos[sel][right[sel] >= 0]).all()
        if packing != "full":  # every row ends with [SEP]: right boundaries exist too
            assert (right[sel] >= 0).all()
            ids = b["input_ids"]
            ends = ids[rows[right[sel] >= 0], right[sel]]
            assert not (ends == SPECIAL_IDS["pad"]).any()
    assert labelled > 100


def test_boundaries_do_not_change_the_masks(shard_dir):
    """The flag only adds two keys: every other tensor is the same, for every kind."""
    for kind in ("mlm", "wwm", "span"):
        plain = batches(shard_dir, 12, MaskingConfig(kind=kind))
        more = batches(shard_dir, 12, MaskingConfig(kind=kind, boundaries=True))
        for x, y in zip(plain, more, strict=True):
            assert set(y) == set(x) | {"span_left", "span_right"}
            assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("packing", ["full", "doc", "pairs"])
def test_default_batches_have_no_new_keys_and_the_same_masks(shard_dir, packing):
    """Defaults are the masking of before: keys of (seed, epoch, row id), no extra tensors."""
    got = batches(shard_dir, 20, MaskingConfig(), packing=packing)
    got += batches(shard_dir, 0, MaskingConfig(), valid=True, packing=packing)
    special = np.array(sorted(SPECIAL_IDS.values()))
    random_ids = np.setdiff1d(np.arange(1000), special)  # synthetic vocabulary: 1000 ids
    for b in got:
        pair_keys = {"token_type_ids", "sentence_labels"} if packing == "pairs" else set()
        assert set(b) == BASE_KEYS | pair_keys
        labels, ids = b["labels"].numpy(), b["input_ids"].numpy()
        orig = np.where(labels != -100, labels, ids)
        att = b["attention_mask"].numpy()
        maskable = (att == 1) & ~np.isin(orig, special)
        sids = b["sample_ids"].numpy()
        keys = row_keys(0, int(b["epoch"]), np.maximum(sids, 0))
        ws = np.ones_like(maskable)  # token masking (mlm) does not read word starts
        masked, want = mask_batch(
            orig, ws, maskable, keys, MaskingConfig(), SPECIAL_IDS["mask"], random_ids
        )
        assert np.array_equal(want, labels) and np.array_equal(masked, ids)


def test_validation_batches_carry_boundaries_too(shard_dir):
    got = batches(shard_dir, 0, MaskingConfig(kind="span", boundaries=True), valid=True)
    assert got and all({"span_left", "span_right"} <= set(b) for b in got)
    for b in got:
        want = span_boundaries(b["labels"], b["attention_mask"])
        assert np.array_equal(b["span_left"].numpy(), want[0])
