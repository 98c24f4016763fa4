"""Span boundaries for SpanBERT's SBO: row edges, specials, padding, merged spans, property."""

import numpy as np
import pytest
import torch

from data_pipeline.masking import MaskingConfig, mask_batch, row_keys, span_boundaries
from data_pipeline.masking.boundaries import NO_BOUNDARY

CLS, PAD, SEP, MASK = 0, 1, 2, 4
N = -100  # unlabelled


def bounds(labels, att=None):
    labels = np.asarray(labels, dtype=np.int64)
    labels = labels[None] if labels.ndim == 1 else labels
    att = (
        np.ones_like(labels)
        if att is None
        else np.asarray(att, dtype=np.int64).reshape(labels.shape)
    )
    left, right = span_boundaries(labels, att)
    assert left.dtype == right.dtype == np.int64 and left.shape == right.shape == labels.shape
    return left, right


def reference(labels, att):
    """The definition, one position at a time."""
    b, seq = labels.shape
    left = np.full((b, seq), -1, dtype=np.int64)
    right = np.full((b, seq), -1, dtype=np.int64)
    for r in range(b):
        for i in range(seq):
            if labels[r, i] == -100:
                continue
            s = i
            while s > 0 and labels[r, s - 1] != -100:
                s -= 1
            e = i
            while e < seq - 1 and labels[r, e + 1] != -100:
                e += 1
            if s - 1 >= 0 and att[r, s - 1]:
                left[r, i] = s - 1
            if e + 1 < seq and att[r, e + 1]:
                right[r, i] = e + 1
    return left, right


def test_spans_between_specials_share_their_boundaries():
    # [CLS] a b c [SEP] d e [SEP] PAD: span (1, 2) and span (5, 6)
    labels = [N, 9, 9, N, N, 7, 7, N, N]
    att = [1, 1, 1, 1, 1, 1, 1, 1, 0]
    left, right = bounds(labels, att)
    assert left[0].tolist() == [-1, 0, 0, -1, -1, 4, 4, -1, -1]
    assert right[0].tolist() == [-1, 3, 3, -1, -1, 7, 7, -1, -1]


def test_single_token_span_and_special_neighbours():
    # A labelled token right after [CLS] and right before [SEP]: the specials are its boundaries.
    left, right = bounds([N, 5, N, N, 6, N], [1, 1, 1, 1, 1, 1])
    assert left[0].tolist() == [-1, 0, -1, -1, 3, -1]
    assert right[0].tolist() == [-1, 2, -1, -1, 5, -1]


def test_row_edges_give_minus_one():
    # Labels at column 0 and at the last column (a row cut mid-document): no token outside.
    left, right = bounds([5, 5, N, 6, 6], [1, 1, 1, 1, 1])
    assert left[0].tolist() == [-1, -1, -1, 2, 2]
    assert right[0].tolist() == [2, 2, -1, -1, -1]
    left, right = bounds([5, 5, 5])  # the whole row is one span
    assert left[0].tolist() == right[0].tolist() == [-1, -1, -1]


def test_padding_next_to_a_span_is_no_boundary():
    # A span running into padding (a row without a final [SEP]) and one after padding.
    left, right = bounds([N, 5, 5, N, N, 6, N], [1, 1, 1, 0, 0, 1, 1])
    assert right[0].tolist() == [-1, -1, -1, -1, -1, 6, -1]
    assert left[0].tolist() == [-1, 0, 0, -1, -1, -1, -1]


def test_adjacent_spans_merge_into_one():
    # Two spans SpanBERT placed back to back are one run: the outer boundaries for all.
    left, right = bounds([N, 5, 6, 7, 8, 9, N])
    assert left[0, 1:6].tolist() == [0] * 5 and right[0, 1:6].tolist() == [6] * 5


def test_unlabelled_rows_and_empty_shapes():
    left, right = bounds(np.full((3, 7), N), np.ones((3, 7)))
    assert (left == NO_BOUNDARY).all() and (right == NO_BOUNDARY).all()
    for shape in ((0, 5), (2, 0)):
        left, right = span_boundaries(np.full(shape, N), np.ones(shape))
        assert left.shape == right.shape == shape
    with pytest.raises(ValueError, match="same shape"):
        span_boundaries(np.full((2, 3), N), np.ones((2, 4)))
    with pytest.raises(ValueError, match="same shape"):
        span_boundaries(np.full(3, N), np.ones(3))


def test_torch_inputs_are_accepted():
    labels = torch.tensor([[N, 5, N]])
    left, right = span_boundaries(labels, torch.ones_like(labels))
    assert left.tolist() == [[-1, 0, -1]] and right.tolist() == [[-1, 2, -1]]


@pytest.mark.parametrize("seed", range(6))
def test_random_label_patterns_match_the_reference_loop(seed):
    rng = np.random.default_rng(seed)
    rows, seq = 40, int(rng.integers(1, 50))
    density = rng.random(rows)[:, None]  # from almost nothing to almost everything labelled
    labels = np.where(rng.random((rows, seq)) < density, rng.integers(5, 90, (rows, seq)), N)
    lengths = rng.integers(0, seq + 1, rows)
    att = (np.arange(seq) < lengths[:, None]).astype(np.int64)
    holes = rng.random((rows, seq)) < 0.05  # attention 0 anywhere, not only at the end
    att[holes] = 0
    left, right = span_boundaries(labels, att)
    ref_left, ref_right = reference(labels, att)
    np.testing.assert_array_equal(left, ref_left)
    np.testing.assert_array_equal(right, ref_right)
    lab = labels != N
    # Every labelled token of a run shares (left, right); unlabelled positions are -1.
    assert (left[~lab] == -1).all() and (right[~lab] == -1).all()
    same_run = lab[:, 1:] & lab[:, :-1]
    assert (left[:, 1:][same_run] == left[:, :-1][same_run]).all()
    assert (right[:, 1:][same_run] == right[:, :-1][same_run]).all()
    # A boundary is never labelled and is always a real token.
    for pos in (left, right):
        r, c = np.nonzero(pos >= 0)
        assert not lab[r, pos[r, c]].any() and att[r, pos[r, c]].all()


def test_span_masking_boundaries_are_specials_or_unmasked_tokens():
    """On real span masks: boundaries are unlabelled real tokens around each span."""
    rng = np.random.default_rng(3)
    rows, seq = 64, 96
    ids = rng.integers(5, 200, (rows, seq))
    lengths = rng.integers(10, seq + 1, rows)
    ids[np.arange(seq) >= lengths[:, None]] = PAD
    ids[:, 0] = CLS
    ids[np.arange(rows), lengths - 1] = SEP
    att = (ids != PAD).astype(np.int64)
    maskable = ids >= 5
    ws = rng.random((rows, seq)) < 0.7
    cfg = MaskingConfig(kind="span", mask_prob=0.3)
    _, labels = mask_batch(
        ids, ws, maskable, row_keys(0, 0, np.arange(rows)), cfg, MASK, np.arange(5, 200)
    )
    left, right = span_boundaries(labels, att)
    sel = labels != N
    assert sel.sum() > 500  # ~0.3 of ~3,300 maskable tokens
    # [CLS] starts every row and [SEP] ends it, so every span has both boundaries.
    assert (left[sel] >= 0).all() and (right[sel] >= 0).all()
    pos = np.broadcast_to(np.arange(seq), (rows, seq))
    assert (left[sel] < pos[sel]).all() and (right[sel] > pos[sel]).all()
    r = np.nonzero(sel)[0]
    assert not sel[r, left[sel]].any() and not sel[r, right[sel]].any()
    assert (ids[r, left[sel]][left[sel] == 0] == CLS).all()
