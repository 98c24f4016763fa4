"""Static masking's content keys (``content_keys``) and the two new MaskingConfig switches."""

import numpy as np
import pytest

from data_pipeline.masking import MaskingConfig, content_keys, mask_batch, row_keys


def test_equal_contents_equal_keys_wherever_the_padding_is():
    row = [0, 17, 23, 23, 9, 2]
    ids = np.array([row + [1, 1], [1] + row + [1], [0, 17, 23, 23, 9, 2, 55, 66]])
    att = np.array([[1] * 6 + [0, 0], [0] + [1] * 6 + [0], [1] * 6 + [0, 0]])
    k = content_keys(ids, att)
    assert k.dtype == np.uint64 and k.shape == (3,)
    assert k[0] == k[1] == k[2]  # only real (attention 1) tokens count, not their columns


def test_order_length_and_ids_change_the_key():
    base = [0, 17, 23, 9, 2]
    rows = [
        base,
        [0, 23, 17, 9, 2],  # two tokens swapped: order-sensitive
        [0, 17, 23, 9, 3],  # one id changed
        [0, 17, 23, 9, 2, 2],  # one token more
        [0, 17, 23, 9],  # one token fewer
    ]
    width = max(map(len, rows))
    ids = np.array([r + [1] * (width - len(r)) for r in rows])
    att = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    assert np.unique(content_keys(ids, att)).size == len(rows)


def test_keys_are_distinct_and_look_uniform():
    rng = np.random.default_rng(0)
    n, seq = 50_000, 12
    ids = rng.integers(0, 30, (n, seq))  # a small vocabulary: many near-identical rows
    att = (np.arange(seq) < rng.integers(0, seq + 1, n)[:, None]).astype(np.int64)
    keys = content_keys(ids, att)
    rows = {tuple(r[a == 1].tolist()) for r, a in zip(ids, att, strict=True)}
    distinct = np.unique(keys)
    assert distinct.size == len(rows) > 0.7 * n  # one key per distinct content, no collision
    bits = (distinct[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 5 * 0.5 / np.sqrt(distinct.size))


def test_empty_rows_and_bad_input():
    k = content_keys(np.zeros((3, 4), np.int64), np.zeros((3, 4), np.int64))
    assert k.shape == (3,) and k[0] == k[1] == k[2]  # a valid key like any other
    assert row_keys(0, 1, k).shape == (3,)
    assert content_keys(np.zeros((0, 4), np.int64), np.zeros((0, 4))).shape == (0,)
    with pytest.raises(ValueError, match="2-D integer"):
        content_keys(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="must match"):
        content_keys(np.zeros((2, 3), np.int64), np.ones((2, 4)))


def test_content_keyed_masks_repeat_with_period_n():
    """Keys of (seed, epoch mod N, contents): the mask of epoch e comes back at e + N."""
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 100, (64, 40))
    ids[:, 0], ids[:, -1] = 0, 2
    att = np.ones_like(ids)
    mk = ids >= 5
    ws = np.ones_like(mk)
    cfg = MaskingConfig(static_copies=3)

    def labels(epoch, rows=ids):
        keys = row_keys(0, epoch % cfg.static_copies, content_keys(rows, att))
        return mask_batch(rows, ws, mk, keys, cfg, 4, np.arange(5, 100))[1]

    assert np.array_equal(labels(0), labels(3)) and np.array_equal(labels(1), labels(7))
    differ = (labels(0) != labels(1)).any(axis=1).mean()
    assert differ > 0.9
    perm = rng.permutation(len(ids))  # rows moved to other places keep their masks
    assert np.array_equal(labels(2, ids[perm]), labels(2)[perm])


def test_defaults_and_validation():
    cfg = MaskingConfig()
    assert cfg.boundaries is False and cfg.static_copies == 0
    assert MaskingConfig(boundaries=True, static_copies=10).static_copies == 10
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="boundaries must be true or false"):
            MaskingConfig(boundaries=bad)
    for bad in (-1, 2.0, False, "10"):
        with pytest.raises(ValueError, match="static_copies must be an integer >= 0"):
            MaskingConfig(static_copies=bad)
