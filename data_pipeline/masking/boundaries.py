"""Span boundaries of predicted tokens, for SpanBERT's span boundary objective (SBO).

SpanBERT (Joshi et al. 2020) predicts every token x_i of a masked span (s, e) a second time
from the span's boundary tokens x_(s-1) and x_(e+1) only. The loader adds those positions
to each batch (``span_left`` / ``span_right``, with ``masking.boundaries = true``), computed
from the labels alone, after masking:

* a *span* is a maximal run of consecutive labelled positions (labels != -100). Spans that
  touch (SpanBERT's placement may put one right after another) form one span; and since
  the definition only looks at labels it holds for every masking kind (for ``mlm`` a span
  is usually a single token);
* ``left`` is the position just before the run, ``right`` the one just after, for every
  position of the run (all of a span's tokens share their boundaries);
* -1 where that position does not exist (the run touches the row's start or end) or is
  padding (attention 0), and at every unlabelled position.

Special tokens ([CLS], [SEP], <s>, </s>) are never labelled, so they end runs and serve as
boundaries, as in SpanBERT. Being a pure function of the labels, the boundaries need no
state: resume and elastic restarts reproduce them with the labels.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.masking.masker import IGNORE_INDEX

__all__ = ["NO_BOUNDARY", "span_boundaries"]

NO_BOUNDARY = -1  # the boundary does not exist or is padding; also every unlabelled position


def span_boundaries(labels, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)``: (B, L) int64 positions of each labelled token's span boundaries.

    ``labels`` and ``attention_mask`` are (B, L) (numpy arrays or CPU tensors); see the
    module docstring for the definition. Vectorised: two running extrema per row.
    """
    lab, att = np.asarray(labels), np.asarray(attention_mask)
    if lab.ndim != 2 or att.shape != lab.shape:
        raise ValueError(
            f"labels and attention_mask must be 2-D of the same shape, got {lab.shape} and "
            f"{att.shape}"
        )
    b, seq = lab.shape
    labelled = lab != IGNORE_INDEX
    pos = np.broadcast_to(np.arange(seq, dtype=np.int64), (b, seq))
    # For a labelled position, the nearest unlabelled one on each side is exactly its run's
    # boundary: the last unlabelled position to its left (running max, -1 if none) ...
    left = np.maximum.accumulate(np.where(labelled, NO_BOUNDARY, pos), axis=1)
    # ... and the first one to its right (running min from the end, ``seq`` if none).
    right = np.where(labelled, seq, pos)[:, ::-1]
    right = np.minimum.accumulate(right, axis=1)[:, ::-1]
    # A boundary must be a real token: padding (attention 0) or off the row gives -1. The
    # clipped gathers only read valid indices; their results are discarded where invalid.
    real = att != 0
    rows = np.arange(b)[:, None]
    left_ok = (left >= 0) & real[rows, np.maximum(left, 0)]
    right_ok = (right < seq) & real[rows, np.minimum(right, seq - 1)]
    left = np.where(labelled & left_ok, left, NO_BOUNDARY)
    right = np.where(labelled & right_ok, right, NO_BOUNDARY)
    return left.astype(np.int64, copy=False), right.astype(np.int64, copy=False)
