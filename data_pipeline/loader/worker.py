"""What runs where batches are built (a DataLoader worker, or the rank's main process).

``StreamPlan`` is the small, picklable description of a rank's stream: the shard table, the
geometry (G, W, M, rank), packing and masking settings and the position to start from.
``RankStream`` turns it into the rank's micro-batches:

* the rank's micro-batch sequence is, for each global batch ``b`` of each epoch and each
  accumulation step ``a``, the rows ``b*G + (a*W + rank)*M + [0, M)``; rows at or past the
  epoch's row count are *empty rows* (``[cls][sep]`` + padding, id -1), so every rank yields
  exactly ``A`` micro-batches for each of the epoch's ``ceil(R/G)`` global batches;
* worker ``w`` of ``N`` builds the micro-batches ``j`` (counted from the start position) with
  ``j % N == w``; the DataLoader's round-robin then yields them in sequence, so the batches do
  not depend on the number of workers;
* masking happens here, once per micro-batch, keyed by (seed, epoch, global row id); with
  ``masking.static_copies = N`` by (seed, epoch mod N, the row's contents) instead, and with
  ``masking.boundaries`` the batch also carries each predicted token's span boundaries.

Each micro-batch carries a private ``_info`` dict (position, counters, corruption events)
that ``PretrainLoader`` strips off in the rank's main process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_pipeline.common import CommandError
from data_pipeline.loader.config import DataError
from data_pipeline.loader.documents import ShardPool
from data_pipeline.loader.ordering import EpochOrder, ShardTable
from data_pipeline.loader.packing import DocLayout, FullLayout, Piece
from data_pipeline.loader.pairs import PairLayout, assemble_pairs
from data_pipeline.masking import (
    MaskingConfig,
    content_keys,
    mask_batch,
    row_keys,
    span_boundaries,
)


@dataclass
class StreamPlan:
    """Everything a process needs to build one rank's micro-batches (pickled to workers)."""

    shard_dir: str
    table: ShardTable
    dtype: str
    special_ids: dict[str, int]
    vocab_size: int
    seq_len: int
    packing: str
    pad_doc_rows: bool
    pair_task: str
    short_seq_prob: float
    shuffle: bool
    shuffle_block: int
    seed: int
    masking: MaskingConfig
    global_batch: int
    micro_batch: int
    rank: int
    world_size: int
    start_epoch: int = 0
    start_batch: int = 0
    start_micro: int = 0
    finite: bool = False  # one pass over epoch ``start_epoch`` (validation)
    fixed_masks: bool = False  # mask with epoch-0 keys whatever the epoch (validation)
    max_batches: int | None = None  # stop after this many global batches (validation)

    @property
    def grad_accum(self) -> int:
        return self.global_batch // (self.world_size * self.micro_batch)

    def layout(self, epoch: int, pool: ShardPool):
        """The epoch's rows; reads shard indexes (and, for pairs, sentence starts) via ``pool``."""
        order = EpochOrder(self.table, self.seed, epoch, self.shuffle, self.shuffle_block)
        if self.packing == "full":
            return FullLayout(order, pool.lengths, self.seq_len)
        if self.packing == "pairs":
            return PairLayout(
                order, pool.lengths, pool.sentences, self.seq_len, self.pair_task,
                self.short_seq_prob,
            )  # fmt: skip
        return DocLayout(order, pool.lengths, self.seq_len, self.pad_doc_rows)


def schedule(plan: StreamPlan, layout_of):
    """The rank's micro-batch positions ``(epoch, batch, step, is_last_batch_of_epoch)``."""
    g, a_steps = plan.global_batch, plan.grad_accum
    epoch, b, done = plan.start_epoch, plan.start_batch, 0
    first_step = plan.start_micro
    while plan.max_batches is None or done < plan.max_batches:
        layout = layout_of(epoch)
        if not layout.has_row(b * g):
            if plan.finite:
                return
            if b == 0:
                raise DataError(
                    f"{plan.shard_dir}: the split has no tokens to train on (all shards empty or skipped)"
                )
            epoch, b = epoch + 1, 0
            continue
        last = not layout.has_row((b + 1) * g)
        for a in range(first_step, a_steps):
            yield epoch, b, a, last
        first_step = 0
        b, done = b + 1, done + 1


def assemble(rows: list[list[Piece] | None], pool: ShardPool, sp: dict[str, int], seq_len: int):
    """Token arrays of packed rows; ``None`` rows (past the epoch's end) become empty rows.

    All rows are concatenated into one flat array and scattered into the (M, L) batch at once;
    only the loop over pieces is Python. Returns ids, word_start, segment ids, attention mask
    and the number of document tokens placed.
    """
    cls_, sep_ = np.array([sp["cls"]], np.int64), np.array([sp["sep"]], np.int64)
    yes = np.ones(1, dtype=bool)
    ids_parts, ws_parts, part_seg, part_len, piece_starts, row_len = [], [], [], [], [], []
    flat = content = 0
    for pieces in rows:
        ids_parts.append(cls_), ws_parts.append(yes), part_seg.append(1), part_len.append(1)
        n, k = 1, 0
        for sid, doc, a, z, sep in pieces or ():
            got = pool.read(sid, doc) if sid >= 0 else None
            if got is None:  # a hole or a lost document: its tokens are dropped from the row
                continue
            k += 1  # segment number of this document within the row
            if z > a:
                ids_parts.append(got[0][a:z]), ws_parts.append(got[1][a:z])
                part_seg.append(k), part_len.append(z - a)
                piece_starts.append(flat + n)  # a piece cut mid-word starts a word in this row
                n += z - a
                content += z - a
            if sep:
                ids_parts.append(sep_), ws_parts.append(yes), part_seg.append(k), part_len.append(1)
                n += 1
        if k == 0:  # empty row, or every piece lost: keep the row well-formed, [cls][sep]
            ids_parts.append(sep_), ws_parts.append(yes), part_seg.append(1), part_len.append(1)
            n += 1
        row_len.append(n)
        flat += n
    fill = np.arange(seq_len) < np.asarray(row_len)[:, None]  # (M, L) real positions
    ids = np.full(fill.shape, sp["pad"], dtype=np.int64)
    ids[fill] = np.concatenate(ids_parts)
    ws_flat = np.concatenate(ws_parts)
    ws_flat[piece_starts] = True
    ws = np.ones(fill.shape, dtype=bool)  # specials and padding are word starts
    ws[fill] = ws_flat
    seg = np.zeros(fill.shape, dtype=np.int32)
    seg[fill] = np.repeat(np.asarray(part_seg, dtype=np.int32), part_len)
    return ids, ws, seg, fill.astype(np.int64), content


class BatchBuilder:
    """Builds the micro-batch at a schedule position; owns this process's ``ShardPool``."""

    def __init__(self, plan: StreamPlan):
        self.plan = plan
        self.pool = ShardPool(
            plan.shard_dir, plan.table, plan.dtype, max_open=2 * plan.shuffle_block + 8
        )
        self._layouts: dict[int, object] = {}
        sp = plan.special_ids
        size = max(plan.vocab_size, max(sp.values()) + 1)
        self.is_special = np.zeros(size, dtype=bool)
        self.is_special[list(sp.values())] = True
        self.random_ids = np.flatnonzero(~self.is_special[: plan.vocab_size])

    def layout(self, epoch: int):
        if epoch not in self._layouts:
            self._layouts = {epoch: self.plan.layout(epoch, self.pool)}  # one epoch at a time
        return self._layouts[epoch]

    def mask_keys(self, epoch: int, sample_ids: np.ndarray, ids: np.ndarray, att: np.ndarray):
        """The rows' masking keys: of (seed, epoch, row id), validation's of epoch 0, or with
        static masking of (seed, epoch mod N, contents), so a recurring row gets its mask back
        every N epochs wherever it lands (ids and positions change with the order)."""
        p = self.plan
        copies = p.masking.static_copies
        if copies and not p.fixed_masks:  # validation keeps its fixed masks
            return row_keys(p.seed, epoch % copies, content_keys(ids, att))
        # Empty rows (id -1) have nothing maskable; any valid key will do for them.
        return row_keys(p.seed, 0 if p.fixed_masks else epoch, np.maximum(sample_ids, 0))

    def micro_batch(self, epoch: int, b: int, a: int, last: bool) -> dict:
        p = self.plan
        layout = self.layout(epoch)
        r0 = b * p.global_batch + (a * p.world_size + p.rank) * p.micro_batch
        rows = layout.rows(r0, p.micro_batch)
        row_ids = [k if rows[k - r0] is not None else -1 for k in range(r0, r0 + p.micro_batch)]
        extra = {}
        if p.packing == "pairs":
            ids, ws, seg, att, types, sentence_labels, content = assemble_pairs(
                rows, self.pool, p.special_ids, p.seq_len
            )
            extra = {
                "token_type_ids": torch.from_numpy(types),
                "sentence_labels": torch.from_numpy(sentence_labels),
            }
        else:
            ids, ws, seg, att, content = assemble(rows, self.pool, p.special_ids, p.seq_len)
        if int(ids.max()) >= len(self.is_special):
            raise DataError(
                f"{p.shard_dir}: token id {int(ids.max())} >= vocab_size {p.vocab_size} in the manifest"
            )
        maskable = att.astype(bool) & ~self.is_special[ids]
        sample_ids = np.asarray(row_ids, dtype=np.int64)
        keys = self.mask_keys(epoch, sample_ids, ids, att)
        masked, labels = mask_batch(
            ids, ws, maskable, keys, p.masking, p.special_ids["mask"], self.random_ids
        )
        if p.masking.boundaries:  # a function of the labels: nothing to save for a resume
            left, right = span_boundaries(labels, att)
            extra.update(span_left=torch.from_numpy(left), span_right=torch.from_numpy(right))
        real = sample_ids >= 0
        info = self.pool.drain()
        info.update(
            epoch=epoch,
            batch=b,
            step=a,
            last=last,
            rows=int(real.sum()),
            empty_rows=int((~real).sum()),
            tokens=int(att[real].sum()),
            content_tokens=content,
            predicted=int((labels != -100).sum()),
        )
        return {
            "input_ids": torch.from_numpy(masked),
            "attention_mask": torch.from_numpy(att),
            "labels": torch.from_numpy(labels),
            "segment_ids": torch.from_numpy(seg),
            "sample_ids": torch.from_numpy(sample_ids),
            **extra,
            "epoch": torch.tensor(epoch, dtype=torch.int64),
            "_info": info,
        }

    def close(self) -> None:
        self.pool.close()


class RankStream(IterableDataset):
    """The rank's micro-batches from the plan's start position; split over DataLoader workers."""

    def __init__(self, plan: StreamPlan):
        super().__init__()
        self.plan = plan

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        builder = BatchBuilder(self.plan)
        try:
            for j, pos in enumerate(schedule(self.plan, builder.layout)):
                if j % nw == wid:
                    yield builder.micro_batch(*pos)
        except CommandError as e:
            # Handed over as a batch: the rank's main process raises it as one line (a
            # DataLoader would wrap it in a worker traceback).
            yield {"_error": str(e)}
        finally:
            builder.close()


def identity(batch):
    """DataLoader ``collate_fn``: micro-batches are built whole in the worker."""
    return batch
