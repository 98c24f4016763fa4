"""Dynamic masking for MLM pretraining: token (``mlm``), whole-word (``wwm``) and span.

Called by the streaming loader on every micro-batch, inside DataLoader workers, so it
is vectorised numpy and deterministic by construction: a row's mask is a function of
its key (``row_keys(seed, epoch, sample_id)``) and its contents only, never of the
other rows, the batch size, the padded length, the rank or the worker. All randomness
is counter-based hashing (``hashing``), never an RNG with state.

Two switches leave this procedure alone: ``boundaries`` only makes the loader add each
predicted token's span boundaries (module ``boundaries``) to the batch, and ``static_copies``
only changes the loader's keys (a row's contents and epoch mod N instead of its id and epoch).

How a row is masked (fairseq / RoBERTa / SpanBERT semantics, exact counts):

1. Budget: ``n = floor(mask_prob * maskable + u)`` tokens (probabilistic rounding, as
   fairseq does), so the expected rate is exactly ``mask_prob``.
2. Selection: ``mlm`` takes the ``n`` maskable tokens with the smallest hashes;
   ``wwm`` orders *words* by hash and takes whole words up to the budget (the word
   that crosses it is kept with probability budget-left / its length); ``span`` places
   SpanBERT spans (``spans``).
3. Split, per token for every kind (as fairseq and SpanBERT do): of the ``s``
   selected tokens, exactly ``floor(s*mask_token_prob + v)`` become the mask id and
   ``floor(s*(mask_token_prob + random_token_prob) + v) - that`` a random id, chosen by
   rank in a hash order; the rest stay unchanged.
4. A random replacement is drawn uniformly from ``random_ids`` *minus the original
   token*, so "random" always means a different token and the observed fractions match
   the configured ones exactly, even for tiny vocabularies.

Hash order keys are ``(hash high bits | position)`` so they are unique within a row,
and padding can be appended or removed without changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipeline.masking.hashing import (
    MAX64,
    STREAM_RANDOM,
    STREAM_ROW,
    STREAM_SELECT,
    STREAM_SPLIT,
    U64,
    hash_at,
    row_keys,
    row_uniforms,
    stream_keys,
)
from data_pipeline.masking.spans import WordTable, select_spans, span_length_pmf, word_starts

__all__ = ["KINDS", "MaskingConfig", "mask_batch", "masking_stats", "row_keys", "span_length_pmf"]

KINDS = ("mlm", "wwm", "span")
IGNORE_INDEX = -100
_POS_BITS = 20  # positions live in the low bits of order keys: rows up to 2**20 - 1 tokens
_POS_MASK = U64((1 << _POS_BITS) - 1)
_HIGH = ~_POS_MASK
_ROW_SHIFT = U64(44)  # compact split keys: row (20 bits) | hash (24 bits) | position (20 bits)
_MAX_ROWS = 1 << 20


@dataclass
class MaskingConfig:
    """How training batches are masked (see the module docstring for the exact procedure)."""

    kind: str = "mlm"
    """"mlm": independent tokens; "wwm": whole words; "span": SpanBERT whole-word spans."""
    mask_prob: float = 0.15
    """Fraction of each row's maskable tokens selected for prediction (30 % is also common)."""
    mask_token_prob: float = 0.8
    """Of the selected tokens, the fraction replaced by the mask token."""
    random_token_prob: float = 0.1
    """Of the selected tokens, the fraction replaced by a different random non-special token;
    the remaining 1 - mask_token_prob - random_token_prob stay unchanged."""
    span_p: float = 0.2
    """span only: span length in words ~ Geometric(span_p) restricted to 1..span_max."""
    span_max: int = 10
    """span only: the longest span, in words."""
    boundaries: bool = False
    """Emit ``span_left`` / ``span_right`` in every batch: the positions of each predicted
    token's span boundary tokens (SpanBERT's span boundary objective needs them; see
    ``data_pipeline.masking.boundaries``)."""
    static_copies: int = 0
    """0: dynamic masking, a new mask every epoch; N >= 1: a row's mask depends on epoch mod N
    and on the row's *contents* (not its position), so each sequence is seen with N different
    masks repeating with period N (RoBERTa's static baseline: 10 copies); with reshuffled
    packing (data.packing = "full" and data.shuffle) rows are cut differently each epoch, so
    use data.shuffle = false, or packing = "doc" with pad_doc_rows, for sequences that recur.
    Validation keeps its fixed masks either way."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"masking kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("mask_prob", "mask_token_prob", "random_token_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"masking {name} must be a number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"masking {name} must be in [0, 1], got {value}")
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-12:
            raise ValueError(
                "masking mask_token_prob + random_token_prob must be <= 1, got "
                f"{self.mask_token_prob} + {self.random_token_prob}"
            )
        if isinstance(self.span_p, bool) or not isinstance(self.span_p, (int, float)):
            raise ValueError(f"masking span_p must be a number, got {self.span_p!r}")
        if not 0.0 < self.span_p <= 1.0:
            raise ValueError(f"masking span_p must be in (0, 1], got {self.span_p}")
        if isinstance(self.span_max, bool) or not isinstance(self.span_max, int):
            raise ValueError(f"masking span_max must be an integer, got {self.span_max!r}")
        if self.span_max < 1:
            raise ValueError(f"masking span_max must be >= 1, got {self.span_max}")
        if not isinstance(self.boundaries, bool):
            raise ValueError(f"masking boundaries must be true or false, got {self.boundaries!r}")
        copies = self.static_copies
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
            raise ValueError(f"masking static_copies must be an integer >= 0, got {copies!r}")


def _check(input_ids, word_start, maskable, keys, cfg, random_ids):
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"input_ids must be a 2-D integer array, got {ids.ndim}-D {ids.dtype}")
    b, seq = ids.shape
    if b >= _MAX_ROWS or seq > _POS_MASK:
        raise ValueError(f"batch {b} x {seq} too large (at most {_MAX_ROWS - 1} x {_POS_MASK})")
    ws, mk = np.asarray(word_start, dtype=bool), np.asarray(maskable, dtype=bool)
    if ws.shape != ids.shape or mk.shape != ids.shape:
        raise ValueError(
            f"word_start {ws.shape} and maskable {mk.shape} must match input_ids {ids.shape}"
        )
    k = np.asarray(keys)
    if k.shape != (b,) or k.dtype.kind not in "iu":
        raise ValueError(f"keys must be {b} integers (one per row), got {k.dtype} {k.shape}")
    r = np.asarray(random_ids)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise ValueError(f"random_ids must be a 1-D integer array, got {r.ndim}-D {r.dtype}")
    if r.size == 0 and cfg.random_token_prob > 0:
        raise ValueError("random_ids is empty but random_token_prob > 0")
    if r.size > 1 and not np.all(r[1:] > r[:-1]):
        r = np.unique(r)  # treated as a set; sorted so replacements can skip the original
    return ids.astype(np.int64, copy=False), ws, mk, k.astype(U64), r.astype(np.int64)


def _counts(n: np.ndarray, prob: float, u: np.ndarray) -> np.ndarray:
    """``floor(n * prob + u)`` clipped to n: exact in expectation, off by < 1 per row."""
    return np.minimum(np.floor(n * prob + u).astype(np.int64), n)


def _threshold(sorted_keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, the k-th smallest key (0-based; all keys < it are the k smallest)."""
    seq = sorted_keys.shape[1]
    kth = sorted_keys[np.arange(k.size), np.minimum(k, seq - 1)]
    return np.where(k < seq, kth, MAX64)[:, None]


def _order_keys(skeys, positions, valid):
    """(hash high bits | position) where valid, else the maximum: unique within a row."""
    h = hash_at(skeys[:, None], positions)
    h &= _HIGH
    h |= positions.astype(U64)
    return np.where(valid, h, MAX64)


def _select_mlm(ids, mk, keys, cfg, u):
    """Token selection and split in one sort: selection order = split order."""
    b, seq = ids.shape
    n = mk.sum(axis=1)
    order = _order_keys(stream_keys(keys, STREAM_SELECT), np.arange(seq, dtype=U64), mk)
    srt = np.sort(order, axis=1)
    n_sel = _counts(n, cfg.mask_prob, u[:, 0])
    n_mask = _counts(n_sel, cfg.mask_token_prob, u[:, 1])
    n_mr = _counts(n_sel, cfg.mask_token_prob + cfg.random_token_prob, u[:, 1])
    sel = order < _threshold(srt, n_sel)
    to_mask = order < _threshold(srt, n_mask)
    to_rand = (order < _threshold(srt, n_mr)) & ~to_mask
    return sel, to_mask, to_rand


def _select_wwm(ids, ws, mk, keys, cfg, u):
    """Whole words in hash order up to the budget; the crossing word kept with prob."""
    b, seq = ids.shape
    # Every token carries its word's first position (running max of start indices).
    flat_first = np.where(word_starts(ws, mk).ravel(), np.arange(b * seq), 0)
    first = np.maximum.accumulate(flat_first).reshape(b, seq) - (np.arange(b) * seq)[:, None]
    order = _order_keys(stream_keys(keys, STREAM_SELECT), first, mk)
    srt = np.sort(order, axis=1)
    budget = _counts(mk.sum(axis=1), cfg.mask_prob, u[:, 0])
    crossing = np.where(budget > 0, srt[np.arange(b), np.maximum(budget - 1, 0)], 0)[:, None]
    below = order < crossing
    same = order == crossing
    done, size = below.sum(axis=1), same.sum(axis=1)
    keep = (budget > 0) & (u[:, 2] * size < budget - done)  # prob (budget - done) / size
    return below | (same & keep[:, None])


def _select_span(ids, ws, mk, keys, cfg, u):
    words = WordTable.build(ws, mk)
    budget = _counts(mk.sum(axis=1), cfg.mask_prob, u[:, 0])
    chosen = select_spans(words, keys, budget, cfg.span_p, cfg.span_max)
    return words.token_mask(chosen)


def _split(sel, keys, cfg, u):
    """Per-token mask / random / unchanged split of an arbitrary selection, exact counts.

    Only the selected tokens are sorted, in one flat sort of (row | hash | position) keys.
    """
    b, seq = sel.shape
    idx = np.flatnonzero(sel)
    if idx.size == 0:
        return np.zeros_like(sel), np.zeros_like(sel)
    rows = idx // seq
    pos = (idx - rows * seq).astype(U64)
    h = hash_at(stream_keys(keys, STREAM_SPLIT)[rows], pos)
    comp = (rows.astype(U64) << _ROW_SHIFT) | ((h >> U64(40)) << U64(_POS_BITS)) | pos
    srt = np.sort(comp)
    n_sel = np.bincount(rows, minlength=b)
    start = np.cumsum(n_sel) - n_sel
    end_key = np.arange(1, b + 1, dtype=U64) << _ROW_SHIFT  # above every key of the row

    def thr(k):
        inside = k < n_sel
        return np.where(inside, srt[np.where(inside, start + k, 0)], end_key)[rows]

    n_mask = _counts(n_sel, cfg.mask_token_prob, u[:, 1])
    n_mr = _counts(n_sel, cfg.mask_token_prob + cfg.random_token_prob, u[:, 1])
    is_mask, is_mr = comp < thr(n_mask), comp < thr(n_mr)
    to_mask = np.zeros(b * seq, dtype=bool)
    to_rand = np.zeros(b * seq, dtype=bool)
    to_mask[idx[is_mask]] = True
    to_rand[idx[is_mr & ~is_mask]] = True
    return to_mask.reshape(b, seq), to_rand.reshape(b, seq)


def _random_replacements(ids, flat_idx, keys, random_ids):
    """A uniformly random id from ``random_ids`` other than the original token."""
    seq = ids.shape[1]
    rows = flat_idx // seq
    h = hash_at(stream_keys(keys, STREAM_RANDOM)[rows], (flat_idx - rows * seq).astype(U64))
    orig = ids.ravel()[flat_idx]
    v = random_ids.size
    if v == 1:  # nothing else to choose from (a replacement equal to the original stays so)
        return np.full(flat_idx.size, random_ids[0], dtype=np.int64)
    at = np.searchsorted(random_ids, orig)
    present = random_ids[np.minimum(at, v - 1)] == orig
    j = np.where(present, h % U64(v - 1), h % U64(v)).astype(np.int64)
    j += present & (j >= at)  # skip over the original's slot
    return random_ids[j]


def mask_batch(input_ids, word_start, maskable, keys, cfg, mask_id, random_ids):
    """Mask a (B, L) batch; returns ``(masked_input_ids, labels)``, both (B, L) int64.

    ``labels`` holds the original token at every selected position and -100 elsewhere.
    ``maskable`` is False for special and padding tokens (never selected); ``keys`` are the
    rows' ``row_keys``; ``random_ids`` the ids a random replacement may take (treated as
    a set). Inputs are never modified.
    """
    ids, ws, mk, k, rnd_ids = _check(input_ids, word_start, maskable, keys, cfg, random_ids)
    if ids.size == 0:
        return ids.copy(), np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    u = row_uniforms(k, STREAM_ROW, np.arange(3, dtype=U64))  # budget, split, crossing word
    if cfg.kind == "mlm":
        sel, to_mask, to_rand = _select_mlm(ids, mk, k, cfg, u)
    else:
        select = _select_wwm if cfg.kind == "wwm" else _select_span
        sel = select(ids, ws, mk, k, cfg, u)
        to_mask, to_rand = _split(sel, k, cfg, u)
    labels = np.where(sel, ids, IGNORE_INDEX)
    masked = np.where(to_mask, np.int64(mask_id), ids)
    rand_idx = np.flatnonzero(to_rand)
    if rand_idx.size:
        np.put(masked, rand_idx, _random_replacements(ids, rand_idx, k, rnd_ids))
    return masked, labels


def masking_stats(original, masked, labels, maskable, mask_id, word_start=None) -> dict:
    """What a masked batch looks like, as plain (JSON-ready) numbers.

    Every selected token (label != -100) is in exactly one class, decided in this order:
    "mask" (masked == mask_id), "unchanged" (masked == original), else "random". Because
    ``mask_batch`` never draws the original as its random replacement, these observed
    fractions equal the designed ones. Keys: ``tokens`` (maskable), ``selected``, ``rate``
    (selected / tokens), ``mask_frac`` / ``random_frac`` / ``unchanged_frac`` (of
    selected), ``runs`` and ``mean_run`` (maximal runs of adjacent selected tokens),
    ``bad_selected`` (selected non-maskable tokens) and ``bad_labels`` (labels that are
    not the original token) - both 0 for correct output - and, only when ``word_start``
    is given (else None): ``words``, ``words_selected`` (words with a selected token) and
    ``partial_words`` (words only partly selected; 0 for wwm and span).
    """
    original, masked, labels = (np.asarray(a) for a in (original, masked, labels))
    mk = np.asarray(maskable, dtype=bool)
    sel = labels != IGNORE_INDEX
    tokens, selected = int(mk.sum()), int(sel.sum())
    is_mask = sel & (masked == mask_id)
    unchanged = sel & ~is_mask & (masked == original)
    n_mask, n_same = int(is_mask.sum()), int(unchanged.sum())
    prev = np.zeros_like(sel)
    prev[..., 1:] = sel[..., :-1]
    runs = int((sel & ~prev).sum())
    words = words_selected = partial = None
    if word_start is not None and mk.ndim == 2:
        table = WordTable.build(np.asarray(word_start, dtype=bool), mk)
        n = table.start.size
        hit = np.bincount(table.token_word()[(sel & mk).ravel()], minlength=n)[:n]
        words, words_selected = n, int((hit > 0).sum())
        partial = int(((hit > 0) & (hit < table.length)).sum())
    per_sel = 1.0 / selected if selected else 0.0
    return {
        "tokens": tokens,
        "selected": selected,
        "rate": selected / tokens if tokens else 0.0,
        "mask_frac": n_mask * per_sel,
        "random_frac": (selected - n_mask - n_same) * per_sel,
        "unchanged_frac": n_same * per_sel,
        "runs": runs,
        "mean_run": selected / runs if runs else 0.0,
        "bad_selected": int((sel & ~mk).sum()),
        "bad_labels": int((sel & (labels != original)).sum()),
        "words": words,
        "words_selected": words_selected,
        "partial_words": partial,
    }
