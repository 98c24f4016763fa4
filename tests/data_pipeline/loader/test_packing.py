"""Global order and packing: FULL-SENTENCES and DOC-SENTENCES rows, segment ids, efficiency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.loader import LoaderConfig, PretrainLoader
from data_pipeline.loader.ordering import EpochOrder, ShardTable
from data_pipeline.masking import MaskingConfig
from data_pipeline.shards import Manifest, ShardReader
from data_pipeline.synthetic import SPECIAL_IDS, write_synthetic_shards

CLS, SEP, PAD = SPECIAL_IDS["cls"], SPECIAL_IDS["sep"], SPECIAL_IDS["pad"]
L = 24


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    # Unequal shards, an empty shard, empty/one-token documents and documents > seq_len.
    write_synthetic_shards(
        d, [9, 14, 0, 21, 6], seed=3, mean_len=12, p_empty=0.1, p_long=0.1, long_len=70
    )
    return d


def one_epoch(shard_dir, **cfg_kwargs):
    """All rows of epoch 0 from a single rank, ordered by row id, with their original ids."""
    cfg = LoaderConfig(str(shard_dir), seq_len=L, num_workers=0, **cfg_kwargs)
    loader = PretrainLoader(cfg, MaskingConfig(), global_batch_size=4, micro_batch_size=4)
    batches = [b for _, b in zip(range(loader.batches_per_epoch()), loader, strict=False)]
    assert all(int(b["epoch"]) == 0 for b in batches)
    cat = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k != "epoch"}
    real = cat["sample_ids"] >= 0
    assert torch.equal(cat["sample_ids"][real], torch.arange(int(real.sum())))
    cat = {k: v[real] for k, v in cat.items()}
    labels = cat["labels"]
    cat["orig"] = torch.where(labels != -100, labels, cat["input_ids"])
    return cat, loader.stats()


def epoch_documents(shard_dir, seed=0, epoch=0, block=16):
    manifest = Manifest.load(shard_dir)
    table = ShardTable.build(manifest, "train", {})
    order = EpochOrder(table, seed, epoch, True, block)
    readers = [ShardReader(shard_dir, s, manifest.dtype) for s in table.shards]
    for b in range(order.n_blocks):
        for s, i in zip(*order.block_documents(b), strict=True):
            yield readers[s].read(int(i))[0]


def test_epoch_order_is_a_permutation_within_blocks(shard_dir):
    table = ShardTable.build(Manifest.load(shard_dir), "train", {})
    every = {(s, d) for s in range(len(table)) for d in range(int(table.docs[s]))}
    orders = []
    for epoch in (0, 1):
        order = EpochOrder(table, seed=5, epoch=epoch, shuffle=True, block_size=2)
        seen = []
        for b in range(order.n_blocks):
            sid, doc = order.block_documents(b)
            assert set(sid.tolist()) <= set(order.block_shards(b).tolist())  # stays in its block
            seen += list(zip(sid.tolist(), doc.tolist(), strict=True))
        assert len(seen) == len(every) and set(seen) == every
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch
    again = EpochOrder(table, seed=5, epoch=0, shuffle=True, block_size=2)
    docs = [again.block_documents(b) for b in range(again.n_blocks)]
    assert [x for s, d in docs for x in zip(s.tolist(), d.tolist(), strict=True)] == orders[0]
    plain = EpochOrder(table, seed=5, epoch=0, shuffle=False, block_size=2)
    docs = [plain.block_documents(b) for b in range(plain.n_blocks)]
    flat = [x for s, d in docs for x in zip(s.tolist(), d.tolist(), strict=True)]
    assert flat == sorted(every)


@pytest.mark.parametrize("block", [1, 2, 16])  # rows spanning blocks and empty blocks
def test_full_sentences_rows(shard_dir, block):
    rows, stats = one_epoch(shard_dir, shuffle_block=block)
    ids, att, seg, orig = (
        rows["input_ids"],
        rows["attention_mask"],
        rows["segment_ids"],
        rows["orig"],
    )
    assert ids.shape[1] == L and (orig[:, 0] == CLS).all()
    # No padding anywhere but in the epoch's last row.
    assert (att[:-1] == 1).all() and att[-1, 0] == 1 and (att[-1] == 0).any()
    n_last = int(att[-1].sum())
    assert (orig[-1, n_last:] == PAD).all() and (seg[-1, n_last:] == 0).all()
    # The rows, without their [cls], are exactly the epoch's document stream, seps in between.
    stream = np.concatenate([np.append(d, SEP) for d in epoch_documents(shard_dir, block=block)])
    got = torch.cat([orig[:-1, 1:].reshape(-1), orig[-1, 1:n_last]]).numpy()
    np.testing.assert_array_equal(got, stream)
    # Segment ids: 1 for [cls] and the first document piece, +1 after every separator.
    for r in range(len(ids)):
        n = int(att[r].sum())
        is_sep = (orig[r, :n] == SEP).long()
        expect = 1 + torch.cumsum(is_sep, 0) - is_sep
        assert torch.equal(seg[r, :n].long(), expect)
    assert stats["packing_efficiency"] == pytest.approx(float(att.sum()) / att.numel())
    assert stats["packing_efficiency"] > 0.97


def doc_sentence_rows(shard_dir, pad_doc_rows, block=16):
    rows, stats = one_epoch(
        shard_dir, packing="doc", pad_doc_rows=pad_doc_rows, shuffle_block=block
    )
    att, seg, orig = rows["attention_mask"], rows["segment_ids"], rows["orig"]
    expected, chunked = [], []  # the documents in order, long ones cut into chunks of L - 2
    for d in epoch_documents(shard_dir, block=block):
        expected += [d[a : a + L - 2] for a in range(0, len(d), L - 2)]
        chunked += [len(d) > L - 2] * len(range(0, len(d), L - 2))
    got, row_sizes = [], []
    for r in range(len(orig)):
        n = int(att[r].sum())
        assert orig[r, 0] == CLS and (orig[r, n:] == PAD).all() and (seg[r, n:] == 0).all()
        pieces = []
        for k in range(1, int(seg[r].max()) + 1):
            piece = orig[r, (seg[r] == k).nonzero().flatten()].numpy()
            if k == 1:
                piece = piece[1:]  # [cls] belongs to the first segment
            # A segment is one document (chunk) followed by its sep: never two documents.
            assert piece[-1] == SEP and SEP not in piece[:-1]
            pieces.append(piece[:-1])
        # A chunk of a long document has a row of its own.
        assert len(pieces) == 1 or not any(chunked[len(got) : len(got) + len(pieces)])
        row_sizes.append([(len(p), chunked[len(got) + i]) for i, p in enumerate(pieces)])
        got += pieces
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    return row_sizes, stats, att


def test_doc_sentences_rows_never_cross_documents(shard_dir):
    row_sizes, stats, att = doc_sentence_rows(shard_dir, pad_doc_rows=False)
    assert any(len(s) > 1 for s in row_sizes)  # short documents are packed together
    assert any(c for s in row_sizes for _, c in s)  # and long ones are cut
    for a, b in zip(row_sizes, row_sizes[1:], strict=False):
        used = 1 + sum(n + 1 for n, _ in a)
        assert used <= L
        # Greedy in order (one block here): the next row's first document did not fit.
        if not a[0][1] and not b[0][1]:
            assert used + b[0][0] + 1 > L
    assert stats["packing_efficiency"] == pytest.approx(float(att.sum()) / att.numel())


def reference_doc_rows(shard_dir, block):
    """Plain re-statement of DOC-SENTENCES packing: greedy per block, long documents cut."""
    manifest = Manifest.load(shard_dir)
    table = ShardTable.build(manifest, "train", {})
    order = EpochOrder(table, 0, 0, True, block)
    readers = [ShardReader(shard_dir, s, manifest.dtype) for s in table.shards]
    rows = []
    for b in range(order.n_blocks):
        cur = []
        for s, i in zip(*order.block_documents(b), strict=True):
            n = int(readers[s].lengths()[i])
            if n > L - 2 or (n and 1 + sum(x + 1 for x in cur) + n + 1 > L):
                rows += [cur] if cur else []
                cur = []
            if n > L - 2:
                rows += [[min(L - 2, n - a)] for a in range(0, n, L - 2)]
            elif n:
                cur.append(n)
        rows += [cur] if cur else []  # a row never continues into the next block
    return rows


def test_doc_rows_match_reference_and_stay_in_their_block(shard_dir):
    row_sizes, _, _ = doc_sentence_rows(shard_dir, pad_doc_rows=False, block=2)
    assert [[n for n, _ in r] for r in row_sizes] == reference_doc_rows(shard_dir, block=2)


def test_pad_doc_rows_one_document_per_row_and_efficiency(shard_dir):
    row_sizes, padded_stats, _ = doc_sentence_rows(shard_dir, pad_doc_rows=True)
    assert all(len(s) == 1 for s in row_sizes)
    _, packed_stats = one_epoch(shard_dir, packing="doc")
    _, full_stats = one_epoch(shard_dir)
    eff = [s["packing_efficiency"] for s in (padded_stats, packed_stats, full_stats)]
    assert eff[0] < eff[1] < eff[2] <= 1.0
    # Every mode carries every document token exactly once.
    total = sum(len(d) for d in epoch_documents(shard_dir))
    assert {s["content_tokens"] for s in (padded_stats, packed_stats, full_stats)} == {total}


def test_word_start_at_row_cut_and_specials_never_masked(shard_dir):
    cfg = LoaderConfig(str(shard_dir), seq_len=L, num_workers=0)
    loader = PretrainLoader(cfg, MaskingConfig(kind="wwm", mask_prob=0.5), 8, 8)
    batch = next(iter(loader))
    labels, att = batch["labels"], batch["attention_mask"]
    orig = torch.where(labels != -100, labels, batch["input_ids"])
    special = (orig == CLS) | (orig == SEP) | (orig == PAD) | (att == 0)
    assert (labels[special] == -100).all()
    assert ((labels != -100).sum(1) > 0).all()
