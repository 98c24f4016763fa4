"""Trained WordPiece (``kind="wordpiece"``, BERT/ELECTRA): files, ids equal to
``transformers.AutoTokenizer``, word starts, save/load round trips, a plain BERT
``vocab.txt``, and preprocessing into shards. Trained here on Python's own docs plus a
little Chinese (no downloads)."""

from __future__ import annotations

import json
import shutil
from pydoc_data.topics import topics

import numpy as np
import pytest

from data_pipeline.cli import main as data_cli
from data_pipeline.shards import Manifest, ShardReader
from data_pipeline.tokenizer import FAMILIES, Tokenizer, TokenizerError

DOCS = [topics[k] for k in sorted(topics)]
ZH = [
    "我爱北京天安门。今天天气很好，我们去公园散步吧！",
    "机器学习是人工智能的一个分支，深度学习是机器学习的一种方法。",
    "自然语言处理研究人与计算机之间用自然语言进行有效通信的理论和方法。",
]
EN = [
    "Hello, World! Unbelievably, tokenization works; wordpieces split words.",
    "  Leading\tand trailing   whitespace\r\n\n",
    "Héllo naïve CAFÉ résumé — “quotes” and emoji 😀 x",
    "\x00\x01control\x7f chars \u200b zero width",
    "",
    " ",
    "a",
]
TEXTS = EN + ZH + [d[:3000] for d in DOCS[:30]] + ["中文 mixed with English, 机器学习 ML."]


@pytest.fixture(scope="module")
def wp(tmp_path_factory) -> Tokenizer:
    d = tmp_path_factory.mktemp("wordpiece")
    tok = Tokenizer.train(DOCS + ZH * 30, d, 1500, kind="wordpiece", family="bert")
    tok.dir = d
    return tok


def test_trains_bert_uncased_wordpiece_with_bert_specials_first(wp):
    assert (wp.kind, wp.family, wp.vocab_size) == ("wordpiece", "bert", 1500)
    assert wp.specials == FAMILIES["bert"]
    # a freshly trained vocabulary: [PAD] [CLS] [SEP] [UNK] [MASK] at 0-4 (TRAIN_ORDER)
    assert (wp.pad_id, wp.cls_id, wp.sep_id, wp.unk_id, wp.mask_id) == (0, 1, 2, 3, 4)
    names = {p.name for p in wp.dir.iterdir()}
    assert {
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer_meta.json",
    } == names
    vocab = (wp.dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == wp.vocab_size and vocab[:5] == [
        "[PAD]",
        "[CLS]",
        "[SEP]",
        "[UNK]",
        "[MASK]",
    ]
    assert [wp.id_to_token(i) for i in range(wp.vocab_size)] == vocab
    assert any(t.startswith("##") for t in vocab) and "学" in vocab
    full = json.loads((wp.dir / "tokenizer.json").read_text())
    assert full["normalizer"]["type"] == "BertNormalizer" and full["normalizer"]["lowercase"]
    assert full["pre_tokenizer"]["type"] == "BertPreTokenizer"
    assert full["model"]["type"] == "WordPiece"
    assert full["model"]["continuing_subword_prefix"] == "##"
    meta = json.loads((wp.dir / "tokenizer_meta.json").read_text())
    assert (meta["kind"], meta["family"], meta["model_family"]) == ("wordpiece", "bert", "bert")


def test_vocabulary_never_exceeds_vocab_size(tmp_path):
    # a small vocabulary: the alphabet is cut to fit instead of overflowing it. kind=None:
    # the family's usual kind (ELECTRA: WordPiece)
    tok = Tokenizer.train(DOCS[:50] + ZH * 5, tmp_path, 140, kind=None, family="electra")
    assert (tok.kind, tok.family, tok.model_family) == ("wordpiece", "bert", "electra")
    assert tok.vocab_size <= 140
    with pytest.raises(TokenizerError, match="vocab_size must be an integer >= 133 for wordpiece"):
        Tokenizer.train(DOCS[:5], tmp_path / "t", 100, kind="wordpiece", family="bert")


def test_ids_equal_autotokenizer(wp):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(wp.dir))
    assert "Bert" in type(hf).__name__  # BertTokenizerFast (transformers 5: BertTokenizer)
    assert len(hf) == wp.vocab_size
    assert (hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    assert hf.mask_token_id == wp.mask_id
    for t in TEXTS:
        ids = wp.encode(t).tolist()
        assert hf(t, add_special_tokens=False).input_ids == ids, t[:40]
        assert hf(t).input_ids == [wp.cls_id, *ids, wp.sep_id] == wp.encode_for_model(t).tolist()
        if wp.unk_id not in ids:  # around specials our decode adds no spaces
            assert hf.decode(ids) == wp.decode(ids), t[:40]
    assert wp.unk_id in wp.encode("emoji 😀").tolist()  # outside the learned alphabet
    # special-token strings: text for encode, the special ids for encode_for_model (as HF)
    for t in ["a [MASK] b", "x\n[MASK]", "[CLS][SEP] [PAD]\t[MASK]", "[UNK]"]:
        assert hf(t).input_ids == wp.encode_for_model(t).tolist(), t
        assert hf(t, add_special_tokens=False, split_special_tokens=True).input_ids == (
            wp.encode(t).tolist()
        )
    pair = hf("first part", "second part")
    assert pair.input_ids == [
        wp.cls_id,
        *wp.encode("first part"),
        wp.sep_id,
        *wp.encode("second part"),
        wp.sep_id,
    ]
    assert pair.token_type_ids[-1] == 1


def test_decode_is_lowercased_text_without_exact_whitespace(wp):
    # WordPiece is lossy by design: case, accents and whitespace are not kept
    assert wp.decode(wp.encode("Héllo,   WORLD!\n")) == "hello, world!"
    assert wp.decode(wp.encode(ZH[0][:4])) == "我 爱 北 京"
    assert wp.decode([wp.cls_id, *wp.encode("a b"), wp.sep_id], skip_special=True) == "a b"


def test_word_starts_never_at_continuation_pieces(wp):
    table = wp.word_start_table
    for i in range(wp.vocab_size):
        tok = wp.id_to_token(i)
        assert table[i] == (i < 5 or not tok.startswith("##")), tok
    texts = EN + ZH + [DOCS[3][:2000], "unbelievable tokenization " * 20]
    pairs = wp.encode_batch_with_word_starts(texts)
    for t, (ids, starts) in zip(texts, pairs, strict=True):
        assert ids.tolist() == wp.encode(t).tolist()
        assert starts.dtype == bool and len(starts) == len(ids)
        if not len(ids):
            continue
        pieces = [wp.id_to_token(i) for i in ids]
        assert starts[0], t[:40]
        for k, p in enumerate(pieces):
            if p.startswith("##"):
                assert not starts[k], (t[:40], k, p)
            if ids[k] == wp.unk_id:  # specials (here [UNK]) always start a word
                assert starts[k], (t[:40], k)
        # every whitespace-separated word starts with a word start
        words = [w for w in t.lower().split() if wp.encode(w).size]
        assert starts.sum() >= len(words) or not words, t[:40]
    ids, starts = wp.encode_with_word_starts("cat " * 30 + "tokenization")
    assert starts.sum() == 31  # one per word, however the last one is split


def test_chinese_word_starts_add_jieba_words(wp):
    import jieba

    text = ZH[1]
    ids, starts = wp.encode_with_word_starts(text, segment_zh=True)
    assert ids.tolist() == wp.encode(text).tolist()
    chars = [wp.id_to_token(i) for i in ids]
    assert "".join(chars) == text  # one token per character here
    words = {s for _, s, _ in jieba.Tokenizer().tokenize(text)}
    assert all(starts[k] for k in words)  # every jieba word starts a word


def test_saved_directory_loads_back_as_the_same_tokenizer(wp, tmp_path):
    again = Tokenizer.load(wp.dir)
    assert again.fingerprint == wp.fingerprint and again.kind == "wordpiece"
    assert again.model_family == "bert"
    for t in TEXTS:
        assert np.array_equal(again.encode(t), wp.encode(t))
    wp.save(tmp_path / "copy", copy_from=wp.dir)
    again.save(tmp_path / "fresh")
    for d in ("copy", "fresh"):
        assert Tokenizer.load(tmp_path / d).fingerprint == wp.fingerprint
    # without our metadata: the same tokenizer, from tokenizer.json alone
    shutil.copytree(wp.dir, tmp_path / "plain")
    (tmp_path / "plain" / "tokenizer_meta.json").unlink()
    plain = Tokenizer.load(tmp_path / "plain")
    assert plain.fingerprint == wp.fingerprint and plain.describe() == wp.describe()


def test_plain_bert_vocab_txt_directory_loads(wp, tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    shutil.copy(wp.dir / "vocab.txt", d / "vocab.txt")
    tok = Tokenizer.load(d)
    assert (tok.kind, tok.family, tok.vocab_size) == ("wordpiece", "bert", wp.vocab_size)
    assert tok.fingerprint == wp.fingerprint and tok.appended == []
    for t in TEXTS:
        assert tok.encode(t).tolist() == wp.encode(t).tolist()
        assert tok.encode_for_model(t).tolist() == wp.encode_for_model(t).tolist()
    # a cased vocabulary says so in its config, as BERT-cased checkpoints do
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = Tokenizer.load(d)
    assert cased.fingerprint != wp.fingerprint
    assert cased.encode("Hello").tolist() != wp.encode("Hello").tolist()
    assert cased.encode("hello").tolist() == wp.encode("hello").tolist()


def test_preprocess_writes_wordpiece_shards(wp, tmp_path):
    docs = EN[:3] + ZH + [d[:2000] for d in DOCS[:20]]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), "utf-8"
    )
    out = tmp_path / "shards"
    argv = ["--input", str(corpus), "--tokenizer", str(wp.dir), "--out", str(out)]
    assert data_cli(["preprocess", *argv, "--segment-zh"]) == 0
    man = Manifest.load(out)
    assert man.tokenizer["kind"] == "wordpiece" and man.tokenizer["fingerprint"] == wp.fingerprint
    assert Tokenizer.load(out / "tokenizer").fingerprint == wp.fingerprint
    got = []
    for info in man.shards:
        r = ShardReader(out, info, man.dtype)
        got += [r.read(i) for i in range(len(r))]
        r.close()
    want = wp.encode_batch_with_word_starts(docs, segment_zh=True)
    assert sorted((i.tolist(), s.tolist()) for i, s in got) == sorted(
        (i.tolist(), s.tolist()) for i, s in want
    )
