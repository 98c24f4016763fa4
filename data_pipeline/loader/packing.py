"""Packing: which document pieces make up row ``k`` of an epoch, and building the rows.

A *row* is one training sample of exactly ``seq_len`` tokens. A row is described by its
*pieces* ``(shard id, document index, first token, end token, ends with sep)``; a piece with
shard id -1 is a *hole* (positions with no data, see below). Two layouts:

FULL-SENTENCES (``FullLayout``, RoBERTa's default): the epoch's token stream is every
document's ids followed by one ``sep``, in the global order; row ``k`` is ``[cls]`` followed by
stream positions ``[k*C, (k+1)*C)`` with ``C = seq_len - 1``. Where each block of shards starts
in the stream follows from the manifest's per-shard (tokens, documents) alone, so any row can be
located without reading anything but the index of the one block it falls in. Only the epoch's
last row can be short (padded). A shard whose index turns out unreadable mid-run is dropped from
its block and its span becomes a hole at the block's end, so no other block's rows move.

DOC-SENTENCES (``DocLayout``, ``packing="doc"``): rows never cross a document boundary.
Documents longer than ``seq_len - 2`` are cut into chunks, one ``[cls] chunk [sep]`` row each;
shorter ones are packed greedily in order, ``[cls] d1 [sep] d2 [sep] ...``, then padded
(``pad_doc_rows=True``: one document per row). Rows never cross a block, so a block's rows
depend on that block only; the cumulative row counts of blocks are computed lazily and cached.
Empty documents produce no row in this mode (they carry no tokens).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from data_pipeline.loader.ordering import EpochOrder

Piece = tuple[int, int, int, int, bool]  # (shard id, doc, start, end, sep); shard id -1 = hole
LengthsFn = Callable[[int], "np.ndarray | None"]


def block_lengths(order: EpochOrder, b: int, lengths: LengthsFn):
    """The block's documents in order, dropped those of unreadable shards: (sid, doc, len)."""
    shard_of, doc_of = order.block_documents(b)
    shards = order.block_shards(b)
    per_shard = [lengths(int(s)) if order.table.docs[s] else np.zeros(0, np.int64) for s in shards]
    readable = np.array([p is not None for p in per_shard], dtype=bool)
    flat = np.concatenate([p if p is not None else np.zeros(0, np.int64) for p in per_shard])
    sizes = np.array([0 if p is None else len(p) for p in per_shard], dtype=np.int64)
    sorter = np.argsort(shards, kind="stable")
    pos = sorter[np.searchsorted(shards, shard_of, sorter=sorter)]  # shard's place in the block
    keep = readable[pos]
    base = np.cumsum(sizes) - sizes
    lens = np.zeros(len(doc_of), dtype=np.int64)
    lens[keep] = flat[base[pos[keep]] + doc_of[keep]]
    return shard_of[keep], doc_of[keep], lens[keep]


class _LRU(OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def put(self, key, value):
        self[key] = value
        while len(self) > self.capacity:
            self.popitem(last=False)
        return value


class FullLayout:
    """FULL-SENTENCES rows of one epoch."""

    def __init__(self, order: EpochOrder, lengths: LengthsFn, seq_len: int):
        self.order, self.lengths, self.span = order, lengths, seq_len - 1
        table = order.table
        self.block_start = np.concatenate(
            [[0], np.cumsum(order.block_sums(table.tokens + table.docs))]
        )
        self.total_tokens = int(self.block_start[-1])
        self.n_rows = -(-self.total_tokens // self.span)
        self._cache = _LRU(4)  # a micro-batch spans at most a few consecutive blocks

    def has_row(self, k: int) -> bool:
        return k < self.n_rows

    def total_rows(self) -> int:
        return self.n_rows

    def _block(self, b: int):
        if b in self._cache:
            return self._cache[b]
        sid, doc, lens = block_lengths(self.order, b, self.lengths)
        ends = np.cumsum(lens + 1)  # every document is followed by one sep
        starts = ends - lens - 1
        return self._cache.put(b, (sid, doc, lens, starts, ends, int(ends[-1]) if len(ends) else 0))

    def rows(self, k0: int, n: int) -> list[list[Piece] | None]:
        """Pieces of rows ``k0 .. k0+n-1`` (None past the epoch's end), computed together:
        the rows of a micro-batch are one contiguous stretch of the stream."""
        s, e = k0 * self.span, min((k0 + n) * self.span, self.total_tokens)
        out: list[list[Piece] | None] = [[] if k < self.n_rows else None for k in range(k0, k0 + n)]
        if s >= e:
            return out
        # Every document (+ its sep), or hole, overlapping [s, e): global start and length.
        g_start, g_len, g_sid, g_doc = [], [], [], []
        b = int(np.searchsorted(self.block_start, s, side="right")) - 1
        while b < self.order.n_blocks and self.block_start[b] < e:
            bs, be = int(self.block_start[b]), int(self.block_start[b + 1])
            if be > s:
                sid, doc, lens, starts, ends, content_end = self._block(b)
                i0 = int(np.searchsorted(ends, s - bs, side="right"))
                i1 = int(np.searchsorted(starts, e - bs, side="left"))
                g_start.append(starts[i0:i1] + bs)
                g_len.append(lens[i0:i1]), g_sid.append(sid[i0:i1]), g_doc.append(doc[i0:i1])
                if e > bs + content_end and be > bs + content_end:  # a shard lost mid-run
                    g_start.append(np.array([bs + content_end]))
                    g_len.append(np.array([be - bs - content_end]))  # no sep: z never > len
                    g_sid.append(np.array([-1])), g_doc.append(np.array([-1]))
            b += 1
        g_start, g_len, g_sid, g_doc = (np.concatenate(x) for x in (g_start, g_len, g_sid, g_doc))
        # The stream is contiguous (each document's end is the next one's start, a block's
        # content or hole ends where the next block starts), so cutting [s, e) at document
        # starts and row starts gives exactly the pieces: each lies in one document and one row.
        row_starts = np.arange(s, e, self.span)
        cuts = np.union1d(np.clip(g_start, s, e - 1), row_starts)
        d = np.searchsorted(g_start, cuts, side="right") - 1
        a = cuts - g_start[d]
        z = np.append(cuts[1:], e) - g_start[d]
        for r, sd, dc, x, y, n_tok in zip(
            ((cuts - s) // self.span).tolist(),
            g_sid[d].tolist(),
            g_doc[d].tolist(),
            a.tolist(),
            z.tolist(),
            g_len[d].tolist(),
            strict=True,
        ):
            out[r].append((sd, dc, x, min(y, n_tok), y == n_tok + 1 and sd >= 0))
        return out


class DocLayout:
    """DOC-SENTENCES rows of one epoch (row counts per block computed lazily, cached)."""

    def __init__(self, order: EpochOrder, lengths: LengthsFn, seq_len: int, pad_doc_rows: bool):
        self.order, self.lengths = order, lengths
        self.seq_len, self.pad_doc_rows = seq_len, pad_doc_rows
        self.cum = [0]  # cum[b] = rows in blocks before b, for the blocks computed so far
        self._cache = _LRU(4)

    def _block(self, b: int):
        if b in self._cache:
            return self._cache[b]
        sid, doc, lens = block_lengths(self.order, b, self.lengths)
        chunk, cap = self.seq_len - 2, self.seq_len - 1  # room after [cls]: tokens + seps
        row_ptr, p_doc, p_a, p_z = [0], [], [], []
        used = 0
        for i, n in enumerate(lens.tolist()):
            if n == 0:
                continue
            if n > chunk or self.pad_doc_rows or used + n + 1 > cap:
                if used:  # close the row being filled
                    row_ptr.append(len(p_doc))
                    used = 0
            if n > chunk or self.pad_doc_rows:
                for a in range(0, n, chunk):
                    p_doc.append(i), p_a.append(a), p_z.append(min(a + chunk, n))
                    row_ptr.append(len(p_doc))
                continue
            p_doc.append(i), p_a.append(0), p_z.append(n)
            used += n + 1
        if used:
            row_ptr.append(len(p_doc))
        p_doc = np.asarray(p_doc, dtype=np.int64)
        layout = (np.asarray(row_ptr), sid[p_doc], doc[p_doc], np.asarray(p_a), np.asarray(p_z))
        if b == len(self.cum) - 1:  # first time this block is laid out: extend the prefix sums
            self.cum.append(self.cum[-1] + len(row_ptr) - 1)
        return self._cache.put(b, layout)

    def _extend(self, k: int | None) -> None:
        """Lay out blocks until row ``k`` is covered (all blocks when ``k`` is None)."""
        while len(self.cum) - 1 < self.order.n_blocks and (k is None or self.cum[-1] <= k):
            self._block(len(self.cum) - 1)

    def has_row(self, k: int) -> bool:
        self._extend(k)
        return k < self.cum[-1]

    def total_rows(self) -> int:
        self._extend(None)
        return self.cum[-1]

    def rows(self, k0: int, n: int) -> list[list[Piece] | None]:
        """Pieces of rows ``k0 .. k0+n-1`` (None past the epoch's end)."""
        return [self.row(k) if self.has_row(k) else None for k in range(k0, k0 + n)]

    def row(self, k: int) -> list[Piece]:
        self._extend(k)
        b = int(np.searchsorted(self.cum, k, side="right")) - 1
        row_ptr, sid, doc, a, z = self._block(b)
        lo, hi = row_ptr[k - self.cum[b]], row_ptr[k - self.cum[b] + 1]
        return [
            (s, d, x, y, True)
            for s, d, x, y in zip(
                sid[lo:hi].tolist(),
                doc[lo:hi].tolist(),
                a[lo:hi].tolist(),
                z[lo:hi].tolist(),
                strict=True,
            )
        ]
