"""Static masking (``masking.static_copies``) through the loader: period, contents, resume."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.loader import LoaderConfig, PretrainLoader, validation_loader
from data_pipeline.masking import MaskingConfig
from data_pipeline.synthetic import write_synthetic_shards

SEQ, G = 32, 8


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    counts = {"train": [13, 5, 21, 0, 9], "valid": [6, 7]}
    write_synthetic_shards(d, counts, seed=11, mean_len=20, p_empty=0.05, p_long=0.05, long_len=80)
    return d


def make(shard_dir, copies, m=G, workers=0, kind="mlm", boundaries=False, **kw):
    cfg = LoaderConfig(
        str(shard_dir), seq_len=SEQ, num_workers=workers, shuffle_block=2, prefetch_factor=2, **kw
    )
    masking = MaskingConfig(kind=kind, static_copies=copies, boundaries=boundaries)
    return PretrainLoader(cfg, masking, G, m)


def epochs(shard_dir, copies, n_epochs=4, **kw):
    """Per epoch, {row id: (original ids, labels)} of its real rows (one rank, M = G)."""
    loader = make(shard_dir, copies, **kw)
    bpe = loader.batches_per_epoch()  # the same every epoch for these layouts
    it = iter(loader)
    out = [{} for _ in range(n_epochs)]
    for _ in range(n_epochs * bpe):
        b = next(it)
        orig = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])
        for i, sid in enumerate(b["sample_ids"].tolist()):
            if sid >= 0:
                out[int(b["epoch"])][sid] = (orig[i], b["labels"][i])
    loader.close()
    assert all(len(e) == len(out[0]) > 20 for e in out)
    return out


def differing(a, b):
    """Fraction of the rows that have labels in either epoch whose labels differ."""
    rows = [k for k in a if (a[k][1] != -100).any() or (b[k][1] != -100).any()]
    return sum(not torch.equal(a[k][1], b[k][1]) for k in rows) / len(rows)


def test_two_copies_repeat_with_period_two_in_manifest_order(shard_dir):
    ep = epochs(shard_dir, 2, shuffle=False)
    for e in range(len(ep)):  # shuffle = false: the very same rows every epoch
        assert all(torch.equal(ep[e][k][0], ep[0][k][0]) for k in ep[0])
    for e in (0, 1):
        assert differing(ep[e], ep[e + 2]) == 0  # the same mask, row by row
        assert differing(ep[e], ep[e + 1]) > 0.8  # and another one in between


def test_one_copy_is_the_same_mask_every_epoch(shard_dir):
    ep = epochs(shard_dir, 1, n_epochs=3, shuffle=False)
    assert differing(ep[0], ep[1]) == differing(ep[0], ep[2]) == 0


def test_dynamic_masking_differs_between_e_and_e_plus_2(shard_dir):
    ep = epochs(shard_dir, 0, shuffle=False)
    assert differing(ep[0], ep[2]) > 0.8 and differing(ep[1], ep[3]) > 0.8


def by_contents(rows):
    """{real token ids of a row: its labels} (rows with equal contents have equal masks)."""
    out = {}
    for orig, labels in rows.values():
        key = tuple(orig[orig != 1].tolist())  # 1 = [pad]; documents never contain it
        assert out.setdefault(key, labels) is labels or torch.equal(out[key], labels)
    return out


@pytest.mark.parametrize("kind", ["mlm", "span"])
def test_a_document_keeps_its_mask_wherever_it_lands(shard_dir, kind):
    ep = epochs(shard_dir, 2, kind=kind, packing="doc", pad_doc_rows=True, shuffle=True)
    place = [{tuple(o[o != 1].tolist()): k for k, (o, _) in e.items()} for e in ep]
    common = place[0].keys() & place[2].keys()
    assert len(common) == len(place[0])  # one document (or chunk) per row, every epoch
    moved = sum(place[0][c] != place[2][c] for c in common)
    assert moved > 0.8 * len(common)  # reshuffled: most land in another row
    c0, c1, c2 = (by_contents(e) for e in ep[:3])
    assert all(torch.equal(c0[c], c2[c]) for c in common)
    labelled = [c for c in common if (c0[c] != -100).any() or (c1[c] != -100).any()]
    assert sum(not torch.equal(c0[c], c1[c]) for c in labelled) > 0.8 * len(labelled)


def test_static_masks_keep_the_rows_and_the_rate(shard_dir):
    """Only the keys change: the same rows, and about the same number of predictions."""
    dyn, sta = epochs(shard_dir, 0, n_epochs=2), epochs(shard_dir, 3, n_epochs=2)
    for a, b in zip(dyn, sta, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k][0], b[k][0]) for k in a)
        n_a = sum(int((v[1] != -100).sum()) for v in a.values())
        n_b = sum(int((v[1] != -100).sum()) for v in b.values())
        assert abs(n_a - n_b) < 0.1 * n_a


@pytest.mark.parametrize(
    "workers,packing,shuffle", [(0, "full", False), (2, "full", True), (0, "doc", True)]
)
def test_resume_is_bit_identical_with_static_copies(shard_dir, workers, packing, shuffle):
    kw = dict(
        m=4, kind="span", boundaries=True, packing=packing, shuffle=shuffle, pad_doc_rows=True
    )
    bpe = make(shard_dir, 2, **kw).batches_per_epoch()
    a, k, n = 2, bpe + bpe // 2, 2 * (bpe + 3)  # stop mid epoch 1, run into epoch 2 (and 3)
    ref = make(shard_dir, 2, workers=workers, **kw)
    it = iter(ref)
    want = [next(it) for _ in range(k * a + n)]
    ref.close()
    assert {int(b["epoch"]) for b in want[k * a :]} >= {1, 2}
    first = make(shard_dir, 2, workers=workers, **kw)
    it = iter(first)
    for _ in range(k * a):
        next(it)
    state = first.state_dict()
    first.close()
    assert state["epoch"] == 1
    again = make(shard_dir, 2, workers=workers, **kw)
    again.load_state_dict(state)
    it = iter(again)
    got = [next(it) for _ in range(n)]
    again.close()
    for x, y in zip(got, want[k * a :], strict=True):
        assert x.keys() == y.keys() and "span_left" in x
        assert all(torch.equal(x[key], y[key]) for key in x)


def test_validation_keeps_its_fixed_masks(shard_dir):
    cfg = LoaderConfig(str(shard_dir), seq_len=SEQ, num_workers=0)
    passes = [list(validation_loader(cfg, MaskingConfig(static_copies=c), 4, 0, 1)) for c in (0, 2)]
    assert len(passes[0]) == len(passes[1]) > 0
    for x, y in zip(*passes, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_static_copies_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="static_copies must be an integer >= 0"):
        MaskingConfig(static_copies=bad)
