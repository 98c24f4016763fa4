"""Sentence-pair rows for BERT's next-sentence prediction and ALBERT's sentence-order
prediction (``packing="pairs"``): ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1 and one
label per row.

The recipe is BERT's ``create_instances_from_document``, applied to the documents of one
shuffle block at a time (the block is the bounded window everything is drawn from):

* a document's sentences (the shards' sentence starts; a sentence longer than
  ``seq_len - 3`` tokens is cut into pieces of that size) are gathered into chunks of whole
  sentences until a *target length* is reached: ``seq_len - 3``, or, for a document drawn with
  probability ``short_seq_prob``, a length drawn uniformly from ``[2, seq_len - 3]``;
* A is a random number of the chunk's first sentences, B the rest (a chunk of one sentence
  is cut at a random token, so every chunk gives a pair and the labels stay balanced);
* with probability 0.5 the row is a negative (label 1). NSP: B is replaced by text of the
  same budget from a random sentence of *another* document of the block, and B's sentences
  go back to the document (the next chunk starts with them, as in BERT; the rest of a
  one-sentence chunk cut at a random token is not returned). SOP: A and B are
  swapped. A block with a single document has only positives for NSP.
* a pair longer than ``seq_len - 3`` is truncated as BERT's ``truncate_seq_pair`` does (one
  token at a time from the longer segment), but always at the outer ends, A's front and B's
  back, so that a positive pair stays two adjacent segments. Like BERT, this drops the tokens
  beyond the row (on average half a sentence per full row) for this epoch;
* the block's rows are shuffled (BERT shuffles its instances) when the order is shuffled.

Every draw comes from a generator seeded with (seed, epoch, block), so row ``k`` of an epoch
is a pure function of (seed, epoch, k) and the shards: resume and elastic restarts stay exact.
Rows never exceed ``seq_len``. Laying out a block reads only the
sentence-start members of its documents (``ShardReader.read_sentences``), not their tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from data_pipeline.loader.packing import DocLayout, LengthsFn, Piece, block_lengths

PAIR_TASKS = ("nsp", "sop")
PairRow = tuple[Piece, Piece, int]  # (first segment, second segment, label)
SentencesFn = Callable[[int, int], "np.ndarray | None"]
_TAG_PAIRS = 0x5041  # "PA": never shares a seed with the order's permutations


def sentence_spans(starts: np.ndarray, n_tokens: int, max_tokens: int) -> np.ndarray:
    """(S, 2) token spans of a document's sentences, long ones cut into ``max_tokens`` pieces."""
    starts = np.asarray(starts, dtype=np.int64)
    if n_tokens == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if len(starts) == 0 or starts[0] != 0:  # the first token always starts a sentence
        starts = np.concatenate([[0], starts]).astype(np.int64)
    ends = np.append(starts[1:], n_tokens)
    pieces = -(-(ends - starts) // max_tokens)  # pieces per sentence (>= 1)
    first = np.repeat(starts, pieces)
    k = np.arange(len(first)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    a = first + k * max_tokens
    return np.stack([a, np.minimum(a + max_tokens, np.repeat(ends, pieces))], axis=1)


def _truncate(a0: int, p: int, b0: int, b1: int, max_tokens: int) -> tuple[int, int]:
    """BERT's ``truncate_seq_pair``: drop tokens from the longer segment until the pair fits;
    here always from the outer ends (A's front, B's back) so a positive pair stays adjacent.
    Returns the new (A start, B end)."""
    la, lb = p - a0, b1 - b0
    while la + lb > max_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return p - la, b0 + lb


def document_pairs(
    docs: list[tuple[int, int, np.ndarray]],
    rng: np.random.Generator,
    max_tokens: int,
    task: str,
    short_seq_prob: float,
) -> list[PairRow]:
    """The pair rows of a block's documents ``(shard id, doc, sentence spans)``, in order."""
    rows: list[PairRow] = []
    for j, (sid, doc, spans) in enumerate(docs):
        lens = (spans[:, 1] - spans[:, 0]).tolist()
        i, n = 0, len(lens)
        target = max_tokens  # drawn once per document, as in BERT
        if rng.random() < short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        while i < n:
            k, length = i, 0
            while k < n and length < target:  # whole sentences until the target is reached
                length, k = length + lens[k], k + 1
            c0, c1 = int(spans[i, 0]), int(spans[k - 1, 1])
            if k - i >= 2:  # A: a random number of whole sentences
                cut = int(rng.integers(i + 1, k))
                p = int(spans[cut, 0])
            elif c1 - c0 >= 2:  # one sentence: cut it at a random token
                cut, p = None, int(rng.integers(c0 + 1, c1))
            else:  # a one-token chunk cannot make a pair
                i = k
                continue
            b_sid, b_doc, b0, b1 = sid, doc, p, c1
            label, i = int(rng.random() < 0.5), k
            if label and task == "nsp" and len(docs) < 2:
                label = 0  # no other document to draw a random B from
            elif label and task == "nsp":
                r = int(rng.integers(0, len(docs) - 1))
                b_sid, b_doc, o_spans = docs[r + (r >= j)]
                b0 = int(o_spans[int(rng.integers(0, len(o_spans))), 0])
                b1 = min(b0 + max(1, target - (p - c0)), int(o_spans[-1, 1]))
                if cut is not None:
                    i = cut  # B's sentences were not used: the next chunk starts with them
            a0, b1 = _truncate(c0, p, b0, b1, max_tokens)
            first, second = (sid, doc, a0, p, True), (b_sid, b_doc, b0, b1, True)
            if label and task == "sop":
                first, second = second, first
            rows.append((first, second, label))
    return rows


class PairLayout(DocLayout):
    """Sentence-pair rows of one epoch (per-block row counts computed lazily, cached)."""

    def __init__(
        self,
        order,
        lengths: LengthsFn,
        sentences: SentencesFn,
        seq_len: int,
        task: str,
        short_seq_prob: float,
    ):
        super().__init__(order, lengths, seq_len, pad_doc_rows=False)
        if task not in PAIR_TASKS:
            raise ValueError(f"pair task must be one of {PAIR_TASKS}, got {task!r}")
        self.sentences, self.task, self.short_seq_prob = sentences, task, short_seq_prob
        self.max_tokens = seq_len - 3  # [CLS] A [SEP] B [SEP]

    def _block(self, b: int):
        if b in self._cache:
            return self._cache[b]
        docs = []
        sids, docs_, lens = (x.tolist() for x in block_lengths(self.order, b, self.lengths))
        for sid, doc, n in zip(sids, docs_, lens, strict=True):
            starts = self.sentences(sid, doc) if n else None
            if starts is not None:  # None: lost (the pool records it)
                docs.append((sid, doc, sentence_spans(starts, n, self.max_tokens)))
        o = self.order
        rng = np.random.default_rng([_TAG_PAIRS, o.seed, o.epoch, b])
        rows = document_pairs(docs, rng, self.max_tokens, self.task, self.short_seq_prob)
        if o.shuffle and len(rows) > 1:
            rows = [rows[i] for i in rng.permutation(len(rows))]
        if b == len(self.cum) - 1:  # first time this block is laid out: extend the prefix sums
            self.cum.append(self.cum[-1] + len(rows))
        return self._cache.put(b, rows)

    def row(self, k: int) -> PairRow:
        self._extend(k)
        b = int(np.searchsorted(self.cum, k, side="right")) - 1
        return self._block(b)[k - self.cum[b]]


def assemble_pairs(rows: list[PairRow | None], pool, sp: dict[str, int], seq_len: int):
    """Token arrays of pair rows: ids, word starts, segment ids (1 on every real token: A and
    B attend to each other), attention mask, token types, labels (-100 for empty rows and for
    rows whose text was lost) and the number of document tokens placed."""
    m = len(rows)
    ids = np.full((m, seq_len), sp["pad"], dtype=np.int64)
    ws = np.ones((m, seq_len), dtype=bool)  # specials and padding are word starts
    types = np.zeros((m, seq_len), dtype=np.int64)
    labels = np.full(m, -100, dtype=np.int64)
    lengths = np.full(m, 2, dtype=np.int64)
    ids[:, 0], ids[:, 1] = sp["cls"], sp["sep"]  # empty rows: [CLS] [SEP]
    content = 0
    for r, row in enumerate(rows):
        if row is None:
            continue
        got = [pool.read(sid, doc) for sid, doc, *_ in row[:2]]
        if got[0] is None or got[1] is None:  # lost text: an empty row, nothing to predict
            continue
        pos = 1
        for t, ((_, _, a, z, _), (tok, flags)) in enumerate(zip(row[:2], got, strict=True)):
            ids[r, pos : pos + z - a], ws[r, pos : pos + z - a] = tok[a:z], flags[a:z]
            ws[r, pos] = True  # a segment cut mid-word starts a word in this row
            ids[r, pos + z - a] = sp["sep"]
            types[r, pos : pos + z - a + 1] = t
            pos += z - a + 1
            content += z - a
        lengths[r], labels[r] = pos, row[2]
    att = (np.arange(seq_len) < lengths[:, None]).astype(np.int64)
    return ids, ws, att.astype(np.int32), att, types * att, labels, content
