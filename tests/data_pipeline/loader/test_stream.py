"""The streaming loader: workers, ranks, exact and elastic resume, epochs, validation."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.loader import LoaderConfig, PretrainLoader, validation_loader
from data_pipeline.masking import MaskingConfig
from data_pipeline.synthetic import SPECIAL_IDS, write_synthetic_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    counts = {"train": [11, 4, 23, 0, 9, 17, 6], "valid": [5, 8]}  # unequal on purpose
    write_synthetic_shards(d, counts, seed=7, mean_len=15, p_empty=0.05, p_long=0.05, long_len=60)
    return d


def make(shard_dir, g=12, m=2, rank=0, world=1, workers=0, **kw):
    cfg = LoaderConfig(
        str(shard_dir), seq_len=16, num_workers=workers, shuffle_block=3, prefetch_factor=2, **kw
    )
    return PretrainLoader(cfg, MaskingConfig(), g, m, rank=rank, world_size=world)


def take(loader, n):
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    loader.close()
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if k != "_info":
                assert torch.equal(x[k], y[k]), k


def rows_by_id(batches):
    """sample id -> (input_ids, labels, segment_ids) of every real row."""
    out = {}
    for b in batches:
        for i, sid in enumerate(b["sample_ids"].tolist()):
            if sid >= 0:
                key = (int(b["epoch"]), sid)
                assert key not in out, f"row {key} delivered twice"
                keys = ("input_ids", "labels", "segment_ids", "token_type_ids", "sentence_labels")
                out[key] = tuple(b[k][i] for k in keys if k in b)
    return out


def test_same_batches_for_0_1_2_workers(shard_dir):
    n = 2 * make(shard_dir).batches_per_epoch() * 6 + 5  # two epochs and a bit
    ref = take(make(shard_dir), n)
    assert {int(b["epoch"]) for b in ref} == {0, 1, 2}
    for workers in (1, 2):
        assert_same(take(make(shard_dir, workers=workers), n), ref)
    shapes = {tuple(b["input_ids"].shape) for b in ref}
    assert shapes == {(2, 16)} and ref[0]["segment_ids"].dtype == torch.int32


@pytest.mark.parametrize("packing", ["full", "pairs"])
def test_global_batch_rows_identical_for_1_and_2_ranks(shard_dir, packing):
    one = take(make(shard_dir, g=12, m=4, packing=packing), 3 * 3)  # A = 3
    two = [
        take(make(shard_dir, g=12, m=3, rank=r, world=2, packing=packing), 3 * 2) for r in (0, 1)
    ]  # A = 2
    for b in range(3):  # global batch b: the same set of rows, bit for bit
        ref = rows_by_id(one[3 * b : 3 * b + 3])
        got = rows_by_id(two[0][2 * b : 2 * b + 2] + two[1][2 * b : 2 * b + 2])
        assert ref.keys() == got.keys() == {(0, k) for k in range(12 * b, 12 * b + 12)}
        for k in ref:
            assert all(torch.equal(x, y) for x, y in zip(ref[k], got[k], strict=True))


@pytest.mark.parametrize(
    "workers,packing", [(0, "full"), (2, "full"), (2, "doc"), (0, "pairs"), (2, "pairs")]
)
def test_resume_is_bit_identical(shard_dir, workers, packing):
    bpe = make(shard_dir, packing=packing).batches_per_epoch()
    a, k, n = 6, bpe - 2, 6 * 6  # stop 2 batches before the epoch ends, run into the next
    ref = take(make(shard_dir, workers=workers, packing=packing), k * a + n)
    first = make(shard_dir, workers=workers, packing=packing)
    it = iter(first)
    for _ in range(k * a):
        next(it)
    state = first.state_dict()
    next(it)  # one micro-batch into the next global batch: no state here
    with pytest.raises(RuntimeError, match="middle of a global batch"):
        first.state_dict()
    first.close()
    assert state["epoch"] == 0 and state["samples_consumed"] == k * 12
    resumed = make(shard_dir, workers=workers, packing=packing)
    resumed.load_state_dict(state)
    assert_same(take(resumed, n), ref[k * a :])


@pytest.mark.parametrize("saved,resumed", [(2, 0), (0, 3), (1, 2)])
def test_resume_with_another_worker_count_is_bit_identical(shard_dir, saved, resumed):
    """The state holds no per-worker position: any worker count continues the same stream."""
    a, k, n = 6, 3, 6 * 4
    ref = take(make(shard_dir, workers=saved), k * a + n)
    first = make(shard_dir, workers=saved)
    it = iter(first)
    for _ in range(k * a):
        next(it)
    state = first.state_dict()
    first.close()
    again = make(shard_dir, workers=resumed)
    again.load_state_dict(state)
    assert_same(take(again, n), ref[k * a :])


def test_state_at_epoch_end_points_to_next_epoch(shard_dir):
    loader = make(shard_dir, m=12)
    it = iter(loader)
    for _ in range(loader.batches_per_epoch()):
        next(it)
    state = loader.state_dict()
    loader.close()
    assert (state["epoch"], state["samples_consumed"]) == (1, 0)


def epoch_rows(shard_dir, world, m, start_state=None, steps=None, **kw):
    """Rows each rank delivers from ``start_state`` to the end of epoch 0 (or ``steps``)."""
    out, counts, states = {}, [], []
    for r in range(world):
        loader = make(shard_dir, m=m, rank=r, world=world, **kw)
        if start_state is not None:
            loader.load_state_dict(start_state)
        left = loader.batches_per_epoch() - (start_state or {}).get("samples_consumed", 0) // 12
        it = iter(loader)
        batches = [next(it) for _ in range((left if steps is None else steps) * loader.grad_accum)]
        assert all(int(b["epoch"]) == 0 for b in batches)
        states.append(loader.state_dict())
        loader.close()
        counts.append(len(batches))
        out.update(rows_by_id(batches))
    assert len(set(counts)) == 1  # every rank the same number of micro-batches
    assert all(s == states[0] for s in states)
    return out, states[0]


@pytest.mark.parametrize("packing", ["full", "doc", "pairs"])
def test_elastic_resume_covers_the_epoch_exactly(shard_dir, packing):
    whole, _ = epoch_rows(shard_dir, world=1, m=4, packing=packing)
    n_rows = len(whole)
    assert set(whole) == {(0, k) for k in range(n_rows)}
    head, state = epoch_rows(shard_dir, world=2, m=2, steps=3, packing=packing)  # 3 batches
    assert state["samples_consumed"] == 36
    for world, m in ((1, 4), (3, 2)):  # resume on 1 and on 3 ranks
        tail, _ = epoch_rows(shard_dir, world=world, m=m, start_state=state, packing=packing)
        assert not set(head) & set(tail)
        union = {**head, **tail}
        assert sorted(k for _, k in union) == list(range(n_rows))  # no loss, no repeat
        for key, row in union.items():  # and the very same rows, masks included
            assert all(torch.equal(x, y) for x, y in zip(row, whole[key], strict=True))


def test_equal_batches_per_rank_and_empty_rows_at_epoch_end(shard_dir):
    per_rank = []
    for r in range(3):
        loader = make(shard_dir, g=12, m=2, rank=r, world=3)
        bpe = loader.batches_per_epoch()
        batches = take(loader, bpe * 2 + 2)
        per_rank.append(batches)
        assert [int(b["epoch"]) for b in batches] == [0] * (bpe * 2) + [1, 1]
    last = [b for rank in per_rank for b in rank[-4:-2]]  # the epoch's last global batch
    ids = torch.cat([b["sample_ids"] for b in last])
    empty = ids < 0
    assert empty.any() and (ids[~empty] >= 0).all()
    for b in last:
        e = b["sample_ids"] < 0
        assert (b["labels"][e] == -100).all()
        assert (b["attention_mask"][e].sum(1) == 2).all()
        assert (
            b["input_ids"][e][:, :2] == torch.tensor([SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]])
        ).all()


def test_next_epoch_is_reshuffled_with_new_masks(shard_dir):
    loader = make(shard_dir, m=12)
    bpe = loader.batches_per_epoch()
    batches = take(loader, 2 * bpe)
    first = rows_by_id(batches[:bpe])
    second = rows_by_id(batches[bpe:])
    assert len(first) == len(second)  # FULL-SENTENCES: same row count every epoch
    orig = [torch.where(r[1] != -100, r[1], r[0]) for r in (first[(0, 0)], second[(1, 0)])]
    assert not torch.equal(orig[0], orig[1])  # another document order
    # Without shuffling the rows repeat, but their masks do not.
    plain = make(shard_dir, m=12, shuffle=False)
    batches = take(plain, 2 * bpe)
    a, b = rows_by_id(batches[:bpe])[(0, 5)], rows_by_id(batches[bpe:])[(1, 5)]
    assert torch.equal(torch.where(a[1] != -100, a[1], a[0]), torch.where(b[1] != -100, b[1], b[0]))
    assert not torch.equal(a[1], b[1])


def test_each_rank_reads_only_its_share(shard_dir):
    total = 11 + 4 + 23 + 9 + 17 + 6
    reads = []
    for r in range(4):
        loader = make(shard_dir, g=8, m=2, rank=r, world=4)
        take(loader, loader.batches_per_epoch())
        reads.append(loader.stats()["docs_read"])
    # Each rank reads about a quarter (plus documents shared with neighbouring rows).
    assert all(n < 0.5 * total for n in reads), reads
    assert sum(reads) >= total - 5  # (up to a few empty documents never need a read)


def test_load_state_dict_refuses_another_setup(shard_dir, tmp_path):
    state = make(shard_dir).state_dict()
    with pytest.raises(ValueError, match="global_batch_size"):
        make(shard_dir, g=24).load_state_dict(state)
    with pytest.raises(ValueError, match="seq_len"):
        PretrainLoader(
            LoaderConfig(str(shard_dir), seq_len=32, shuffle_block=3), MaskingConfig(), 12, 2
        ).load_state_dict(state)
    with pytest.raises(ValueError, match="packing"):
        make(shard_dir, packing="doc").load_state_dict(state)
    pairs = make(shard_dir, packing="pairs").state_dict()
    with pytest.raises(ValueError, match="pair_task was 'nsp' in the checkpoint, is 'sop'"):
        make(shard_dir, packing="pairs", pair_task="sop").load_state_dict(pairs)
    other = tmp_path / "other"
    write_synthetic_shards(other, [11, 4, 23], seed=8)
    with pytest.raises(ValueError, match="shard set"):
        make(other).load_state_dict(state)
    with pytest.raises(ValueError, match="whole number of global batches"):
        make(shard_dir).load_state_dict({**state, "samples_consumed": 5})
    with pytest.raises(ValueError, match="version"):
        make(shard_dir).load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="not a multiple"):
        make(shard_dir, g=10, m=4)


def test_validation_loader_fixed_and_equal_per_rank(shard_dir):
    cfg = LoaderConfig(str(shard_dir), seq_len=16, num_workers=0)
    passes = []
    for r in range(3):
        val = validation_loader(cfg, MaskingConfig(), micro_batch_size=2, rank=r, world_size=3)
        first, second = list(val), list(val)
        assert len(first) == len(val) > 0
        assert_same(first, second)  # fixed rows and masks across calls
        assert all(int(b["epoch"]) == 0 for b in first)
        passes.append(first)
    assert len({len(p) for p in passes}) == 1
    ids = sorted(i for p in passes for b in p for i in b["sample_ids"].tolist() if i >= 0)
    assert ids == list(range(len(ids)))
    capped = validation_loader(cfg, MaskingConfig(), 2, 0, 3, max_batches=2)
    assert len(list(capped)) == 2 == len(capped)
    with_workers = validation_loader(
        LoaderConfig(str(shard_dir), seq_len=16, num_workers=2), MaskingConfig(), 2, 0, 3
    )
    assert_same(list(with_workers), passes[0])
