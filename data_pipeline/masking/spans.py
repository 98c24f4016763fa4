"""Words of a batch and SpanBERT span selection (used by ``data_pipeline.masking``).

A *word* is a run of maskable tokens that starts at a ``word_start`` token, or at a
maskable token right after a non-maskable one (a packed row may begin mid-word, and a
special token always ends a word). Words are numbered over the whole batch in row-major
order, so each row's words are a contiguous range of ids.

Span selection follows SpanBERT (Joshi et al. 2020, and its reference implementation):
repeat { draw a length l ~ Geometric(p) restricted to 1..span_max; draw a start word
uniformly among the row's not-yet-selected words; select l consecutive words from it }
until the row's token budget is met. Our choices where SpanBERT leaves room:

* A span never crosses a non-maskable token (document separators in packed rows); it
  is cut there. Already selected words inside a span count towards l (as in SpanBERT)
  but add no tokens, so neighbouring spans may merge.
* SpanBERT truncates the last span mid-word to hit the budget exactly. Spans here are
  whole words, so the word that would cross the budget is kept with probability
  (budget left / its new tokens) and the row stops: the expected count is the budget.
* Rows run in lock-step *rounds*, vectorised over rows; a row's draws in round r are
  hashes of (its key, r, slot), so they depend on nothing outside the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipeline.masking.hashing import STREAM_SPAN, hash_at, stream_keys, to_unit

_ANCHOR_TRIES = 8  # rejection draws per round; all fail with prob <= 0.5**8 (then next round)
_SLOTS = 16  # hash counters reserved per round: 8 anchors, length, coin, exact anchor
_EXACT_ABOVE = 0.5  # selected-word fraction above which a row draws its anchor exactly


def span_length_pmf(span_p: float, span_max: int) -> np.ndarray:
    """P(l = 1..span_max): Geometric(span_p) restricted to 1..span_max and renormalised.

    This is what SpanBERT's code samples and what its paper calls "clipped" (mean 3.8
    words for p = 0.2, span_max = 10; a min(l, 10) clip would give 4.46).
    """
    lengths = np.arange(1, span_max + 1)
    w = span_p * (1.0 - span_p) ** (lengths - 1)
    return w / w.sum()


def word_starts(word_start: np.ndarray, maskable: np.ndarray) -> np.ndarray:
    """(B, L) bool: maskable tokens that begin a word (see the module docstring)."""
    prev = np.zeros_like(maskable)
    prev[:, 1:] = maskable[:, :-1]
    return maskable & (word_start | ~prev)


@dataclass
class WordTable:
    """The words of a (B, L) batch, numbered 0..n-1 in row-major order."""

    shape: tuple[int, int]  # (B, L) of the batch
    start: np.ndarray  # (n,) flat token index of each word's first token
    length: np.ndarray  # (n,) tokens per word (all maskable, contiguous)
    first: np.ndarray  # (B,) id of each row's first word
    count: np.ndarray  # (B,) words per row
    joined: np.ndarray  # (n,) word i+1 directly follows word i in the same row

    @classmethod
    def build(cls, word_start: np.ndarray, maskable: np.ndarray) -> WordTable:
        b, seq = maskable.shape
        starts = word_starts(word_start, maskable)
        # A word's last token: maskable, and the next token is not a continuation of it.
        nxt = np.ones_like(starts)
        nxt[:, :-1] = starts[:, 1:] | ~maskable[:, 1:]
        start = np.flatnonzero(starts)
        length = np.flatnonzero(maskable & nxt) - start + 1
        bounds = np.searchsorted(start, np.arange(b + 1) * seq)  # rows' word-id ranges
        first, count = bounds[:-1], np.diff(bounds)
        joined = np.zeros(start.size, dtype=bool)
        joined[:-1] = start[1:] == start[:-1] + length[:-1]
        joined[(first + count - 1)[count > 0]] = False  # a row's last word ends its spans
        return cls((b, seq), start, length, first, count, joined)

    def token_word(self) -> np.ndarray:
        """(B*L,) word id of every token (meaningless for non-maskable tokens)."""
        marks = np.zeros(self.shape[0] * self.shape[1], dtype=np.int64)
        marks[self.start] = 1
        return np.cumsum(marks) - 1

    def token_mask(self, word_selected: np.ndarray) -> np.ndarray:
        """(B, L) bool: the tokens of the selected words (+1/-1 marks, then a running sum)."""
        delta = np.zeros(self.shape[0] * self.shape[1] + 1, dtype=np.int32)
        first = self.start[word_selected]
        delta[first] = 1
        delta[first + self.length[word_selected]] -= 1  # words never overlap: no collisions
        return np.cumsum(delta[:-1]).astype(bool).reshape(self.shape)


def _exact_anchors(words: WordTable, selected: np.ndarray, rows: np.ndarray, u: np.ndarray):
    """Uniform draw among the unselected words of each of ``rows`` (O(words) per call)."""
    wanted = np.zeros(words.count.size, dtype=bool)
    wanted[rows] = True
    word_row = np.repeat(np.arange(words.count.size), words.count)
    free = np.flatnonzero(~selected & wanted[word_row])
    per_row = np.bincount(word_row[free], minlength=words.count.size)
    offset = np.cumsum(per_row) - per_row
    k = np.minimum((u * per_row[rows]).astype(np.int64), per_row[rows] - 1)
    return free[offset[rows] + k]


def select_spans(
    words: WordTable,
    keys: np.ndarray,
    budget: np.ndarray,
    span_p: float,
    span_max: int,
    trace: list | None = None,
) -> np.ndarray:
    """(n_words,) bool: the words SpanBERT-style spans select, about ``budget`` tokens a row.

    ``trace``, when given, receives one ``(row, first word, drawn length, words spanned,
    tokens added)`` tuple per placed span (tests use it to check the length distribution).
    """
    n_words = words.start.size
    selected = np.zeros(n_words, dtype=bool)
    sel_tokens = np.zeros(budget.size, dtype=np.int64)
    sel_words = np.zeros(budget.size, dtype=np.int64)
    cdf = np.cumsum(span_length_pmf(span_p, span_max))
    span_keys = stream_keys(keys, STREAM_SPAN)
    offsets = np.arange(span_max)
    slots = np.arange(_SLOTS, dtype=np.uint64)
    active = np.flatnonzero((budget > 0) & (words.count > 0))
    rnd = 0
    while active.size:
        u = to_unit(hash_at(span_keys[active, None], slots + np.uint64(rnd * _SLOTS)))
        count, first = words.count[active], words.first[active]
        # Anchor: rejection sampling (first unselected of 8 uniform draws) is uniform over
        # the unselected words; rows that are mostly selected draw exactly instead.
        tries = first[:, None] + np.minimum(
            (u[:, :_ANCHOR_TRIES] * count[:, None]).astype(np.int64), count[:, None] - 1
        )
        free = ~selected[tries]
        placed = free.any(axis=1)
        anchor = tries[np.arange(active.size), free.argmax(axis=1)]
        exact = sel_words[active] > _EXACT_ABOVE * count
        if exact.any():
            anchor[exact] = _exact_anchors(words, selected, active[exact], u[exact, 10])
            placed |= exact
        length = np.minimum(np.searchsorted(cdf, u[:, 8] * cdf[-1], side="right") + 1, span_max)
        # The span's words: consecutive ids while they stay joined (same row, no special
        # token in between) and within the drawn length.
        span = anchor[:, None] + offsets
        span_c = np.minimum(span, n_words - 1)
        chain = np.ones(span.shape, dtype=bool)
        chain[:, 1:] = np.logical_and.accumulate(words.joined[span_c[:, :-1]], axis=1)
        valid = chain & (offsets < length[:, None]) & placed[:, None]
        new = np.where(valid & ~selected[span_c], words.length[span_c], 0)
        cum = np.cumsum(new, axis=1)
        left = (budget[active] - sel_tokens[active])[:, None]
        cross = (new > 0) & (cum > left) & (cum - new <= left)
        keep_cross = u[:, 9:10] * new < left - (cum - new)  # prob (budget left) / (new tokens)
        take = (new > 0) & ((cum <= left) | (cross & keep_cross))
        selected[span[take]] = True
        sel_tokens[active] += (new * take).sum(axis=1)
        sel_words[active] += take.sum(axis=1)
        if trace is not None:
            for i in np.flatnonzero(placed):
                trace.append(
                    (
                        int(active[i]),
                        int(anchor[i] - first[i]),
                        int(length[i]),
                        int(valid[i].sum()),
                        int((new[i] * take[i]).sum()),
                    )
                )
        done = cross.any(axis=1) | (sel_tokens[active] >= budget[active])
        done |= sel_words[active] >= count
        active = active[~done]
        rnd += 1
    return selected
