"""Sentence-pair layout (BERT NSP / ALBERT SOP): statistics over >= 100 K rows, the recipe's
invariants, and that rows are a pure function of (seed, epoch, row)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from data_pipeline.cli import main as cli
from data_pipeline.loader import LoaderConfig, PretrainLoader
from data_pipeline.loader.ordering import EpochOrder, ShardTable
from data_pipeline.loader.pairs import PairLayout, assemble_pairs, sentence_spans
from data_pipeline.masking import MaskingConfig
from data_pipeline.shards import Manifest, ShardFormatError, ShardInfo, load_index
from data_pipeline.synthetic import SPECIAL_IDS, write_synthetic_shards
from data_pipeline.tokenizer import Tokenizer

SEQ = 64


class FakeCorpus:
    """Shards of documents with random sentence lengths (1..30 tokens, a few long ones)."""

    def __init__(self, n_shards: int, docs_per_shard: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.starts, self.lengths = {}, {}
        for s in range(n_shards):
            lens = []
            for d in range(docs_per_shard):
                n_sent = int(rng.integers(1, 12))
                sl = rng.integers(1, 31, n_sent)
                if rng.random() < 0.05:
                    sl[0] = 3 * SEQ  # a sentence longer than a row
                self.starts[s, d] = np.concatenate([[0], np.cumsum(sl)[:-1]])
                lens.append(int(sl.sum()))
            self.lengths[s] = np.array(lens)
        shards = [
            ShardInfo(
                f"s{s}.tar", "train", docs_per_shard, int(self.lengths[s].sum()), 0, "", "", ""
            )
            for s in range(n_shards)
        ]
        docs = np.full(n_shards, docs_per_shard, dtype=np.int64)
        tokens = np.array([self.lengths[s].sum() for s in range(n_shards)], dtype=np.int64)
        self.table = ShardTable(shards, docs, tokens, {})
        self.sentence_reads = 0

    def sentences(self, sid, doc):
        self.sentence_reads += 1
        return self.starts[sid, doc]

    def layout(self, task, seed=0, epoch=0, block=4, shuffle=True, short=0.1):
        order = EpochOrder(self.table, seed, epoch, shuffle, block)
        return PairLayout(order, self.lengths.get, self.sentences, SEQ, task, short)

    def all_rows(self, layout):
        return [layout.row(k) for k in range(layout.total_rows())]


@pytest.fixture(scope="module")
def corpus():
    return FakeCorpus(n_shards=16, docs_per_shard=3200)


def _is_sentence_start(corpus, sid, doc, pos):
    return pos in set(corpus.starts[sid, doc].tolist())


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_pair_statistics_over_100k_rows(corpus, task):
    rows = corpus.all_rows(corpus.layout(task))
    assert len(rows) >= 100_000
    labels = np.array([r[2] for r in rows])
    assert abs(labels.mean() - 0.5) <= 0.01
    lengths = np.array([(a[3] - a[2]) + (b[3] - b[2]) + 3 for a, b, _ in rows])
    assert lengths.max() <= SEQ and lengths.min() >= 5
    # Rows are full unless their document's target was short (drawn for 10 % of documents,
    # as in BERT) or the document ended.
    ends_doc = np.array([max(a[3], b[3]) == corpus.lengths[a[0]][a[1]] for a, b, _ in rows])
    short_docs: dict[tuple[int, int], bool] = {}
    for (a, _, _), length, inner in zip(rows, lengths, ~ends_doc & (labels == 0), strict=True):
        if inner:
            short_docs[a[:2]] = short_docs.get(a[:2], False) or length < SEQ
    assert 0.06 < np.mean(list(short_docs.values())) < 0.14
    for a, b, label in rows:
        assert a[3] > a[2] and b[3] > b[2]
        if label == 0:  # positives: consecutive segments of one document, A then B
            assert a[:2] == b[:2] and a[3] == b[2]
        elif task == "nsp":  # B from another document
            assert a[:2] != b[:2]
        else:  # SOP negatives: the consecutive pair swapped
            assert a[:2] == b[:2] and b[3] == a[2]


def test_segments_are_whole_sentences(corpus):
    """In documents without over-long sentences: the A/B cut is a sentence start unless the
    pair lies inside one sentence, and A starts at a sentence start unless it was truncated
    (only full rows are)."""
    rows = corpus.all_rows(corpus.layout("sop"))
    checked = 0
    for a, b, label in rows:
        first, second = (a, b) if label == 0 else (b, a)
        starts = corpus.starts[first[:2]]
        if np.diff(np.append(starts, corpus.lengths[first[0]][first[1]])).max() > SEQ - 3:
            continue
        inside = ((starts > first[2]) & (starts < second[3])).any()
        assert first[3] in starts or not inside
        if first[3] - first[2] + second[3] - second[2] + 3 < SEQ:
            assert first[2] in starts
        checked += 1
    assert checked > 0.8 * len(rows)


def test_rows_are_a_pure_function_of_seed_epoch_row(corpus):
    small = FakeCorpus(n_shards=6, docs_per_shard=50, seed=1)
    a = small.all_rows(small.layout("nsp", seed=3, epoch=2))
    b = small.layout("nsp", seed=3, epoch=2)
    # Any row alone, in any order, from a fresh layout: the same row.
    for k in np.random.default_rng(0).permutation(len(a))[:200].tolist():
        assert b.row(k) == a[k]
    assert small.all_rows(small.layout("nsp", seed=3, epoch=3)) != a
    assert small.all_rows(small.layout("nsp", seed=4, epoch=2)) != a


def test_negatives_stay_in_their_block():
    small = FakeCorpus(n_shards=8, docs_per_shard=30, seed=2)
    layout = small.layout("nsp", block=2)
    order = layout.order
    block_of = {}
    for b in range(order.n_blocks):
        for s in order.block_shards(b).tolist():
            block_of[s] = b
    for a, b, _ in small.all_rows(layout):
        assert block_of[a[0]] == block_of[b[0]]


def test_single_document_block_has_only_positives_for_nsp():
    one = FakeCorpus(n_shards=1, docs_per_shard=1, seed=3)
    rows = one.all_rows(one.layout("nsp"))
    assert rows and all(label == 0 for *_, label in rows)
    sop = one.all_rows(one.layout("sop"))
    assert {label for *_, label in sop} == {0, 1}


def test_sentence_spans_cut_long_sentences():
    spans = sentence_spans(np.array([0, 3, 20]), 25, 8)
    assert spans.tolist() == [[0, 3], [3, 11], [11, 19], [19, 20], [20, 25]]
    assert sentence_spans(np.array([], np.int64), 0, 8).shape == (0, 2)
    assert sentence_spans(np.array([2]), 5, 8).tolist() == [[0, 2], [2, 5]]


class FakePool:
    def __init__(self, docs):
        self.docs = docs

    def read(self, sid, doc):
        return self.docs.get((sid, doc))


def test_assemble_pairs_token_types_and_labels():
    sp = {"cls": 1, "sep": 2, "pad": 0, "mask": 3, "unk": 4}
    ids = np.arange(10, 30)
    ws = np.zeros(20, dtype=bool)
    pool = FakePool({(0, 0): (ids, ws), (0, 1): (ids + 100, ws)})
    rows = [
        ((0, 0, 0, 3, True), (0, 0, 3, 5, True), 0),
        None,
        ((0, 0, 0, 2, True), (0, 1, 4, 6, True), 1),
        ((0, 0, 0, 2, True), (0, 9, 0, 1, True), 1),
    ]
    out_ids, out_ws, seg, att, types, labels, content = assemble_pairs(rows, pool, sp, 10)
    assert out_ids[0].tolist() == [1, 10, 11, 12, 2, 13, 14, 2, 0, 0]
    assert types[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert att[0].tolist() == [1] * 8 + [0, 0]
    assert (seg == att).all()
    assert out_ws[0, [1, 5]].all() and not out_ws[0, [2, 6]].any()  # cut segments start words
    assert out_ids[1].tolist()[:3] == [1, 2, 0] and labels[1] == -100  # empty row
    assert out_ids[2].tolist()[:7] == [1, 10, 11, 2, 114, 115, 2]
    assert labels.tolist() == [0, -100, 1, -100]  # the last row's B was lost
    assert content == 5 + 4


# ----------------------------------------------------------------------------- real text

EN = (
    "The cat sat on the mat. It was warm there! Was the dog jealous? Nobody knows.\n"
    "Later that day the rain came. Everyone went inside."
)
ZH = "今天天气很好。我们去公园散步吧！你觉得怎么样？好的。\n明天再说。"


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory):
    """English and Chinese documents -> WordPiece tokenizer -> format-3 shards."""
    d = tmp_path_factory.mktemp("pairs")
    lines = []
    for i in range(120):  # many documents, each several sentences, numbered to tell apart
        text = (EN if i % 2 else ZH) + f" Document {i} ends here."
        lines.append(json.dumps({"text": text}, ensure_ascii=False))
    (d / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ["--input", str(d / "corpus.jsonl")]
    tok, shards = d / "tok", d / "shards"
    assert (
        cli(
            [
                *("train-tokenizer", "--family", "bert", "--vocab-size", "300"),
                *common,
                "--out",
                str(tok),
            ]
        )
        == 0
    )
    argv = ["preprocess", *common, "--tokenizer", str(tok), "--out", str(shards)]
    assert cli([*argv, "--valid-fraction", "0"]) == 0
    return shards


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_sample_batches_writes_pairs_from_english_and_chinese(text_pairs, tmp_path, capsys, task):
    out = tmp_path / "pairs.npz"
    argv = ["sample-batches", str(text_pairs), "--out", str(out), "--seq-len", "24"]
    rc = cli([*argv, "--packing", "pairs", "--pair-task", task, "--num-batches", "20"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"pairs ({task}):" in printed and "share of label 1" in printed
    z = np.load(out)
    ids, types, att, labels = (
        z["original_ids"],
        z["token_type_ids"],
        z["attention_mask"],
        z["sentence_labels"],
    )
    tok = Tokenizer.load(text_pairs / "tokenizer")
    assert set(labels.ravel().tolist()) <= {0, 1, -100} and 0.3 < (labels == 1).mean() < 0.7
    for b, r in zip(*np.nonzero(labels >= 0), strict=True):
        row, t, n = ids[b, r], types[b, r], int(att[b, r].sum())
        seps = np.flatnonzero(row[:n] == tok.sep_id).tolist()
        assert row[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
        # [CLS] A [SEP] has type 0, B [SEP] type 1, padding 0
        assert (t[: seps[0] + 1] == 0).all() and (t[seps[0] + 1 : n] == 1).all() and not t[n:].any()
        assert not (row[1:n] == tok.cls_id).any()
        if task == "sop" and labels[b, r] == 0:  # a positive starts at a sentence start
            text = tok.decode(row[1 : seps[0]])
            assert text.strip(), text


def test_pairs_need_format_3_shards(shards, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["version"] = 2
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardFormatError, match="format 2 has no sentence starts"):
        PretrainLoader(LoaderConfig(str(old), seq_len=32, packing="pairs"), MaskingConfig(), 4, 4)


def test_loader_pairs_never_mask_cls_or_sep_and_count_rows(shards):
    loader = PretrainLoader(
        LoaderConfig(str(shards), seq_len=32, packing="pairs", num_workers=0),
        MaskingConfig(mask_prob=0.3),
        8,
        8,
    )
    it = iter(loader)
    batches = [next(it) for _ in range(20)]
    loader.close()
    for b in batches:
        special = b["labels"] != -100
        ids = torch.where(special, b["labels"], b["input_ids"])
        assert not (special & ((ids == SPECIAL_IDS["cls"]) | (ids == SPECIAL_IDS["sep"]))).any()
        assert b["sentence_labels"].shape == (8,) and b["token_type_ids"].shape == (8, 32)
        assert (b["segment_ids"] == b["attention_mask"]).all()  # A and B attend to each other
    labels = torch.cat([b["sentence_labels"] for b in batches])
    assert 0.35 < (labels == 1).float().mean() < 0.65


def test_damaged_tokens_do_not_move_later_pair_rows(tmp_path):
    """With on_corrupt = "skip", a document whose tokens turn out damaged while rows are built
    keeps its place in the pair layout: the next epoch's rows, continued or resumed from a
    checkpoint with fresh readers, are the same."""
    d = tmp_path / "shards"
    write_synthetic_shards(d, [12, 7, 15, 9], seed=3, mean_len=20)
    info = Manifest.load(d).split("train")[2]
    offset = int(load_index(d, info)[4, 0])  # doc 4's first token byte
    with open(d / info.name, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))

    def make():
        cfg = LoaderConfig(
            str(d), seq_len=32, packing="pairs", on_corrupt="skip", shuffle_block=4, num_workers=0
        )
        return PretrainLoader(cfg, MaskingConfig(), 8, 8)

    loader = make()
    per_epoch = loader.batches_per_epoch()
    it = iter(loader)
    first = [next(it) for _ in range(per_epoch)]
    state = loader.state_dict()
    continued = [next(it) for _ in range(per_epoch)]
    assert loader.stats()["samples_lost"] >= 1
    loader.close()
    assert any((b["sentence_labels"] == -100).any() for b in first)  # the damaged pair
    resumed = make()
    resumed.load_state_dict(state)
    it = iter(resumed)
    again = [next(it) for _ in range(per_epoch)]
    resumed.close()
    for x, y in zip(continued, again, strict=True):
        for k in ("input_ids", "labels", "token_type_ids", "sentence_labels", "sample_ids"):
            assert torch.equal(x[k], y[k]), k
