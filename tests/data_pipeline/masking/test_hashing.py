"""Counter-based hashing behind dynamic masking: distinct, uniform, avalanching keys."""

import numpy as np

from data_pipeline.masking.hashing import (
    STREAM_SELECT,
    STREAM_SPLIT,
    hash_at,
    mix64,
    row_keys,
    stream_keys,
    to_unit,
)


def chi2_uniform(u, bins):
    counts = np.bincount((u * bins).astype(np.int64), minlength=bins)
    expected = u.size / bins
    return ((counts - expected) ** 2 / expected).sum()


def bit_means(keys):
    bits = (keys[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return bits.mean(axis=0)


def test_row_keys_distinct_per_sample_epoch_and_seed():
    ids = np.arange(200_000)
    k0 = row_keys(7, 0, ids)
    assert k0.dtype == np.uint64 and k0.shape == ids.shape
    assert np.unique(k0).size == ids.size  # a bijection of the id for fixed (seed, epoch)
    k1, s1 = row_keys(7, 1, ids), row_keys(8, 0, ids)
    assert not np.any(k0 == k1) and not np.any(k0 == s1)
    np.testing.assert_array_equal(row_keys(7, 0, ids[::-1]), k0[::-1])  # per-sample, no state
    big = np.array([2**64 - 1, 2**63], dtype=np.uint64)
    assert np.unique(row_keys(2**64 - 1, 2**40, big)).size == 2


def test_row_keys_look_uniform():
    keys = row_keys(0, 3, np.arange(1 << 18))  # consecutive ids: the hardest input
    n = keys.size
    assert np.all(np.abs(bit_means(keys) - 0.5) < 5 * 0.5 / np.sqrt(n))
    u = to_unit(keys)
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert chi2_uniform(u, 256) < 330  # 255 dof, p ~ 0.001
    # No correlation between neighbouring ids.
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(n)


def test_position_hashes_are_uniform_and_streams_independent():
    keys = row_keys(1, 0, np.arange(2048))
    pos = np.arange(512, dtype=np.uint64)
    a = to_unit(hash_at(stream_keys(keys, STREAM_SELECT)[:, None], pos))
    b = to_unit(hash_at(stream_keys(keys, STREAM_SPLIT)[:, None], pos))
    assert a.shape == (2048, 512)
    assert chi2_uniform(a.ravel(), 100) < 150  # 99 dof, p ~ 0.0005
    col_means = a.mean(axis=0)  # no position is favoured
    assert np.all(np.abs(col_means - 0.5) < 5 * np.sqrt(1 / 12 / 2048))
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.005
    assert abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]) < 0.005


def test_mix64_avalanche():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, size=4096, dtype=np.uint64)
    hx = mix64(x)
    for bit in (0, 17, 63):
        flipped = mix64(x ^ np.uint64(1 << bit)) ^ hx
        frac = bit_means(flipped)  # how often each output bit flips: ideally 1/2
        assert abs(frac.mean() - 0.5) < 0.01
        assert np.all(np.abs(frac - 0.5) < 0.05)  # ~6 sigma at 4096 samples
