"""SpanBERT span masking: length distribution, whole words, boundaries, budget."""

import numpy as np
import pytest

from data_pipeline.masking import MaskingConfig, mask_batch, masking_stats
from data_pipeline.masking.hashing import row_keys
from data_pipeline.masking.spans import WordTable, select_spans, span_length_pmf


def runs_of(mask_row):
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask_row.astype(np.int8), [0]])))
    return edges[1::2] - edges[::2]


def tv(samples, pmf):
    """Total-variation distance between the empirical law of ``samples`` (1..) and ``pmf``."""
    emp = np.bincount(samples, minlength=pmf.size + 1)[1:] / samples.size
    extra = emp[pmf.size :].sum() if emp.size > pmf.size else 0.0
    return 0.5 * (np.abs(emp[: pmf.size] - pmf).sum() + extra)


def test_pmf_is_spanberts_truncated_geometric():
    pmf = span_length_pmf(0.2, 10)
    assert pmf.sum() == pytest.approx(1.0)
    assert (pmf * np.arange(1, 11)).sum() == pytest.approx(3.797, abs=1e-3)  # SpanBERT: 3.8
    assert np.allclose(pmf[1:] / pmf[:-1], 0.8)
    np.testing.assert_allclose(span_length_pmf(1.0, 5), [1, 0, 0, 0, 0])


@pytest.fixture(scope="module")
def one_token_words():
    rows, seq = 200, 2048
    mk = np.ones((rows, seq), dtype=bool)
    return WordTable.build(mk, mk), mk


def test_drawn_span_lengths_follow_the_pmf(one_token_words):
    words, mk = one_token_words
    budget = np.full(len(mk), int(0.15 * mk.shape[1]))
    trace = []
    chosen = select_spans(words, row_keys(0, 0, np.arange(len(mk))), budget, 0.2, 10, trace)
    drawn = np.array([t[2] for t in trace])
    assert drawn.size > 15_000
    assert tv(drawn, span_length_pmf(0.2, 10)) < 0.03
    assert drawn.mean() == pytest.approx(3.797, abs=0.06)
    # Rows never leak into each other: a span only runs to its row's last word.
    for row, anchor, length, spanned, _ in trace:
        assert spanned == min(length, mk.shape[1] - anchor), (row, anchor, length, spanned)
    # One-token words: every row meets its budget exactly.
    np.testing.assert_array_equal(words.token_mask(chosen).sum(axis=1), budget)


def test_observed_spans_in_a_sparse_mask_follow_the_pmf(one_token_words):
    """At 5 % masking, merged neighbours and budget-cut last spans are rare, so the runs in
    the actual masks (one token = one word) are close to the drawn law."""
    words, mk = one_token_words
    cfg = MaskingConfig(kind="span", mask_prob=0.05)
    ids = np.full(mk.shape, 9)
    _, labels = mask_batch(
        ids, mk, mk, row_keys(3, 0, np.arange(len(mk))), cfg, 4, np.arange(5, 50)
    )
    runs = np.concatenate([runs_of(r) for r in labels != -100])
    assert runs.size > 4000
    assert tv(runs, span_length_pmf(0.2, 10)) < 0.04


def test_spans_stop_at_special_tokens():
    rows, seq = 64, 400
    mk = np.ones((rows, seq), dtype=bool)
    mk[:, ::4] = False  # [SEP] w w w [SEP] w w w ...: segments of 3 one-token words
    words = WordTable.build(mk, mk)
    budget = np.full(rows, 60)
    trace = []
    select_spans(words, row_keys(1, 0, np.arange(rows)), budget, 0.1, 10, trace)
    assert len(trace) > 500
    for _, anchor, length, spanned, _ in trace:
        assert spanned == min(length, 3 - anchor % 3)


def test_multi_token_words_stay_whole_and_budget_is_met_on_average():
    rng = np.random.default_rng(0)
    rows, seq = 512, 256
    ws = rng.random((rows, seq)) < 0.5  # words of ~2 tokens, up to ~15
    ws[:, 0] = True
    mk = np.ones((rows, seq), dtype=bool)
    mk[:, 0] = mk[:, -1] = False
    ids = rng.integers(5, 1000, size=(rows, seq))
    for p in (0.15, 0.5, 0.9):  # 0.9 exercises the exact anchor draw of crowded rows
        cfg = MaskingConfig(kind="span", mask_prob=p)
        keys = row_keys(2, 0, np.arange(rows))
        masked, labels = mask_batch(ids, ws, mk, keys, cfg, 4, np.arange(5, 1000))
        st = masking_stats(ids, masked, labels, mk, 4, word_start=ws)
        assert st["partial_words"] == 0 and st["bad_selected"] == 0
        assert abs(st["rate"] / p - 1) < 0.01
        # Per row, the budget is missed by less than one word (the crossing word).
        words = WordTable.build(ws, mk)
        longest = np.maximum.reduceat(words.length, words.first)
        target = p * mk.sum(axis=1)
        assert np.all(np.abs((labels != -100).sum(axis=1) - target) < longest + 1)
