"""Trained tokenizers (spm-bpe, bytelevel): lossless round trip, ids, specials, word starts,
HF parity, fingerprints, huge texts. Tokenizers are trained here on Python's own docs."""

from __future__ import annotations

import random
from pydoc_data.topics import topics

import numpy as np
import pytest

import data_pipeline.tokenizer.core as tokmod
from data_pipeline.tokenizer import FAMILIES, Tokenizer, TokenizerError

DOCS = [topics[k] for k in sorted(topics)]
ZH = [
    "我爱北京天安门。今天天气很好，我们去公园散步吧！",
    "机器学习是人工智能的一个分支，深度学习是机器学习的一种方法。",
    "自然语言处理研究人与计算机之间用自然语言进行有效通信的理论和方法。",
]
TRICKY = [
    "Hello  world\t\ttab\n\nnew\r\nline\r\n",
    "   leading and trailing   ",
    "中文 emoji 😀👍🏽 mixed, 👨‍👩‍👧 family",
    "\x00\x01\x07\x1b\x7f control \u200b\u200d zero width \ufeff bom",
    "\u3000ideographic\u00a0nbsp\u2028line sep",
    "e\u0301 combining, ﬁ ligature, Ａ fullwidth, 𝔘𝔫𝔦 astral",
    "",
    " ",
    "\n",
    "\t",
    "\r\n",
    "a",
    "x\n\n\n   \t y",
]


def random_unicode(rng: random.Random, n: int) -> str:
    """Text from every kind of character: ASCII, whitespace, controls, CJK, emoji, astral."""
    pools = [
        (0x20, 0x7E),
        (0x00, 0x1F),
        (0x80, 0x2FF),
        (0x4E00, 0x9FFF),
        (0x1F300, 0x1FAFF),
        (0x10000, 0x10FFF),
        (0xE000, 0xE0FF),
        (0x3000, 0x303F),
    ]
    out = []
    for _ in range(n):
        if rng.random() < 0.15:
            out.append(rng.choice([" ", "  ", "\t", "\n", "\r\n", "\u00a0"]))
        else:
            lo, hi = rng.choice(pools)
            out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def corpus() -> list[str]:
    return DOCS + ZH * 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[tuple[str, str], Tokenizer]:
    out = {}
    for kind in ("spm-bpe", "bytelevel"):
        for family in ("roberta", "bert"):
            d = tmp_path_factory.mktemp(f"{kind}-{family}")
            out[kind, family] = Tokenizer.train(corpus(), d, 1200, kind=kind, family=family)
            out[kind, family].dir = d
    return out


KIND_FAMILY = [(k, f) for k in ("spm-bpe", "bytelevel") for f in ("roberta", "bert")]


@pytest.mark.parametrize("kind", ["spm-bpe", "bytelevel"])
def test_round_trip_is_exact_with_zero_unk(trained, kind):
    tok = trained[kind, "roberta"]
    rng = random.Random(0)
    texts = TRICKY + DOCS[:20] + ["".join(ZH)] + [random_unicode(rng, 400) for _ in range(20)]
    texts.append("literal \u2581 block \u2581\u2581 and ▁x")
    for t, ids in zip(texts, tok.encode_batch(texts), strict=True):
        assert ids.dtype == np.int64
        assert tok.decode(ids) == t
        assert not np.isin(ids, tok.special_ids).any(), "plain text never yields special ids"
        assert ((ids >= 0) & (ids < tok.vocab_size)).all()


@pytest.mark.parametrize("kind,family", KIND_FAMILY)
def test_special_tokens_are_in_the_vocabulary(trained, kind, family):
    tok = trained[kind, family]
    sp = FAMILIES[family]
    assert tok.kind == kind and tok.family == family and tok.vocab_size == 1200
    expected = {
        "roberta": dict(cls=0, pad=1, sep=2, unk=3, mask=4),
        "bert": dict(pad=0, cls=1, sep=2, unk=3, mask=4),
    }[family]
    assert tok.describe() == {
        "kind": kind,
        "family": family,
        "vocab_size": 1200,
        "fingerprint": tok.fingerprint,
        "special_ids": {k: expected[k] for k in ("cls", "sep", "pad", "unk", "mask")},
    }
    for field, i in expected.items():
        assert tok.id_to_token(i) == getattr(sp, field)
        assert tok.token_to_id(getattr(sp, field)) == i
    assert tok.special_ids.dtype == np.int64 and list(tok.special_ids) == [0, 1, 2, 3, 4]
    assert tok.word_start_table.shape == (tok.vocab_size,) and tok.word_start_table[:5].all()
    assert tok.token_to_id("no-such-token-anywhere") is None


@pytest.mark.parametrize("kind,family", KIND_FAMILY)
def test_special_strings_only_count_in_encode_for_model(trained, kind, family):
    tok = trained[kind, family]
    mask = tok.specials.mask
    text = f"The answer is {mask}. {tok.specials.sep} stays"
    plain = tok.encode(text)
    assert tok.mask_id not in plain and tok.sep_id not in plain and tok.decode(plain) == text
    model = tok.encode_for_model(text)
    assert model[0] == tok.cls_id and model[-1] == tok.sep_id
    assert list(model).count(tok.mask_id) == 1 and list(model[1:-1]).count(tok.sep_id) == 1
    # the mask takes the space before it (RoBERTa's convention): "is" + <mask>
    i = list(model).index(tok.mask_id)
    assert tok.decode(model[1:i]) == "The answer is"
    assert (
        tok.decode(model) == f"{tok.specials.cls}The answer is{mask}. {tok.specials.sep} stays"
        f"{tok.specials.sep}"
    )
    assert tok.decode(model, skip_special=True) == "The answer is.  stays"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_spm_bpe_ids_equal_sentencepiece(trained):
    import sentencepiece as spm

    tok = trained["spm-bpe", "roberta"]
    sp = spm.SentencePieceProcessor(model_file=str(tok.dir / "spm.model"))
    rng = random.Random(1)
    texts = TRICKY + DOCS + ZH + [random_unicode(rng, 300) for _ in range(30)]
    for t in texts:
        assert tok.encode(t).tolist() == sp.encode(t), t[:40]
    # U+2581 is sentencepiece's space symbol: sentencepiece itself decodes it as a space;
    # we spell it with its UTF-8 byte pieces so that the round trip stays exact
    t = "a\u2581b"
    assert sp.decode(sp.encode(t)) == "a b"
    assert tok.decode(tok.encode(t)) == t


@pytest.mark.parametrize("kind,family", KIND_FAMILY)
def test_saved_directory_loads_in_autotokenizer_with_same_ids(trained, kind, family):
    transformers = pytest.importorskip("transformers")
    tok = trained[kind, family]
    hf = transformers.AutoTokenizer.from_pretrained(str(tok.dir))
    assert len(hf) == tok.vocab_size
    assert (hf.mask_token_id, hf.pad_token_id, hf.cls_token_id, hf.sep_token_id) == (
        tok.mask_id,
        tok.pad_id,
        tok.cls_id,
        tok.sep_id,
    )
    rng = random.Random(2)
    sp = tok.specials
    texts = TRICKY + DOCS[:40] + ZH + [random_unicode(rng, 200) for _ in range(10)]
    with_specials = [
        f"a {sp.mask} b",
        f"x\n{sp.mask}",
        f"{sp.cls}{sp.sep} {sp.pad}\t{sp.mask}",
        f"  {sp.mask}  {sp.mask}",
        f"{sp.unk}",
    ]
    for t in texts + with_specials:
        if t not in with_specials:
            assert hf(t, add_special_tokens=False).input_ids == tok.encode(t).tolist(), t[:40]
            assert hf.decode(hf(t, add_special_tokens=False).input_ids) == t
        assert hf(t).input_ids == tok.encode_for_model(t).tolist(), t[:40]
    # Corpus text never holds special tokens (a literal "<mask>" stays text, as `encode`
    # and preprocessing read it): HF gives those ids only with split_special_tokens=True.
    split = transformers.AutoTokenizer.from_pretrained(str(tok.dir), split_special_tokens=True)
    for t in with_specials:
        ids = tok.encode(t).tolist()
        assert hf(t, add_special_tokens=False).input_ids != ids, t
        assert split(t, add_special_tokens=False).input_ids == ids, t
        assert hf(t, add_special_tokens=False, split_special_tokens=True).input_ids == ids, t
        assert split(t).input_ids == [tok.cls_id, *ids, tok.sep_id], t


def _first_of_char(spans: list[tuple[int, int]], k: int) -> bool:
    """Token k begins a character: later byte pieces of one character share its span
    (sentencepiece) or start inside the previous token's span (HF byte-level)."""
    return k == 0 or (spans[k][0] != spans[k - 1][0] and spans[k - 1][1] <= spans[k][0])


def _expected_starts(text: str, spans: list[tuple[int, int]]) -> list[bool]:
    """The rule, from the character spans given by the underlying library."""
    out = []
    for k, (o, _) in enumerate(spans):
        ws = o < len(text) and text[o].isspace() or o > 0 and text[o - 1].isspace()
        out.append(k == 0 or (_first_of_char(spans, k) and ws))
    return out


def _library_offsets(tok: Tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character spans) from sentencepiece / HF tokenizers directly."""
    if tok.kind == "spm-bpe":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tok.dir / "spm.model"))
        r = sp.encode(text, out_type="offset_mapping")
        return r["ids"], [tuple(o) for o in r["offsets"]]
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(tok.dir / "tokenizer.json"))
    e = hf.encode(text, add_special_tokens=False)
    return e.ids, [tuple(o) for o in e.offsets]


@pytest.mark.parametrize("kind", ["spm-bpe", "bytelevel"])
def test_word_starts_follow_whitespace(trained, kind):
    tok = trained[kind, "roberta"]
    texts = [
        "Hello  world\tfoo\nbar baz, qux!",
        "   indented code(x)\n\treturn y",
        "naïve café — résumé 😀 ok",
        DOCS[3][:2000],
        "x",
        "",
    ]
    pairs = tok.encode_batch_with_word_starts(texts)
    for t, (ids, starts) in zip(texts, pairs, strict=True):
        lib_ids, offsets = _library_offsets(tok, t)
        assert ids.tolist() == lib_ids
        assert starts.dtype == bool and starts.tolist() == _expected_starts(t, offsets), t[:40]
        assert np.array_equal(tok.encode_with_word_starts(t)[1], starts)
    ids, starts = tok.encode_with_word_starts("a " * 50 + "b")
    assert starts.sum() == 51  # one per word, whatever the merges


@pytest.mark.parametrize("kind", ["spm-bpe", "bytelevel"])
def test_chinese_word_starts_come_from_jieba(trained, kind):
    import jieba

    tok = trained[kind, "roberta"]
    text = ZH[1]
    ids, starts = tok.encode_with_word_starts(text, segment_zh=True)
    _, plain_starts = tok.encode_with_word_starts(text)
    lib_ids, spans = _library_offsets(tok, text)
    assert ids.tolist() == lib_ids
    words = {s for _, s, _ in jieba.Tokenizer().tokenize(text)}
    expected = [
        k == 0 or (_first_of_char(spans, k) and o in words) or plain_starts[k]
        for k, (o, _) in enumerate(spans)
    ]
    assert starts.tolist() == expected
    assert starts.sum() > plain_starts.sum()  # segmentation adds word starts inside the run
    # non-Chinese text is unaffected by segment_zh
    en = DOCS[0][:500]
    with_zh, without = tok.encode_with_word_starts(en, True), tok.encode_with_word_starts(en)
    assert np.array_equal(with_zh[1], without[1])


def test_fingerprint_is_stable_and_discriminating(trained, tmp_path):
    a = trained["spm-bpe", "roberta"]
    again = Tokenizer.train(corpus(), tmp_path / "again", 1200, kind="spm-bpe", family="roberta")
    assert again.fingerprint == a.fingerprint  # training is deterministic
    a.save(tmp_path / "copy")
    assert Tokenizer.load(tmp_path / "copy").fingerprint == a.fingerprint
    b = Tokenizer.train(corpus(), tmp_path / "b", 1200, kind="bytelevel")
    assert b.fingerprint == trained["bytelevel", "roberta"].fingerprint
    prints = {t.fingerprint for t in trained.values()}
    smaller = Tokenizer.train(corpus(), tmp_path / "small", 1100, kind="spm-bpe")
    assert len(prints | {smaller.fingerprint}) == 5


@pytest.mark.parametrize("kind", ["spm-bpe", "bytelevel"])
def test_long_texts_cut_into_pieces_give_the_same_ids(trained, kind, monkeypatch):
    tok = trained[kind, "roberta"]
    text = "\n\n".join(DOCS[:60])  # ~300 KB
    whole = tok.encode_with_word_starts(text)
    monkeypatch.setattr(tokmod, "MAX_CHARS", 4096)
    cut = tok.encode_with_word_starts(text)
    assert np.array_equal(cut[0], whole[0]) and np.array_equal(cut[1], whole[1])
    # no whitespace to cut at: hard cuts, still lossless
    zh = "".join(ZH) * 200
    assert tok.decode(tok.encode(zh)) == zh
    assert tok.decode(tok.encode_with_word_starts(zh, segment_zh=True)[0]) == zh


def test_huge_text_goes_to_the_engine_in_bounded_pieces(trained):
    tok = trained["spm-bpe", "roberta"]
    text = (" ".join(DOCS) + "\n") * (20_000_000 // (len(" ".join(DOCS)) + 1) + 1)
    assert len(text) >= 20_000_000
    calls = []
    real = tok._backend.encode_lists

    def spy(texts):
        calls.append([len(t) for t in texts])
        return [[len(t) % 7] for t in texts]  # cheap stand-in ids: this test is about sizes

    tok._backend.encode_lists = spy
    try:
        ids = tok.encode(text)
    finally:
        tok._backend.encode_lists = real
    sizes = [n for call in calls for n in call]
    assert sum(sizes) == len(text) and max(sizes) <= tokmod.MAX_CHARS
    assert max(sum(c) for c in calls) <= tokmod.GROUP_CHARS + tokmod.MAX_CHARS
    assert len(ids) == len(sizes)


def test_batches_and_edge_cases(trained):
    tok = trained["bytelevel", "bert"]
    texts = ["", "one", "", "two words", "\n"]
    batch = tok.encode_batch(texts)
    assert [b.tolist() for b in batch] == [tok.encode(t).tolist() for t in texts]
    pairs = tok.encode_batch_with_word_starts(texts)
    assert [len(i) for i, _ in pairs] == [len(b) for b in batch]
    assert all(s[0] for i, s in pairs if len(i)) and len(pairs[0][1]) == 0
    assert tok.encode_batch([]) == [] and tok.encode_batch_with_word_starts([]) == []
    assert tok.encode_for_model("").tolist() == [tok.cls_id, tok.sep_id]
    with pytest.raises(TokenizerError, match="not str"):
        tok.encode_batch([b"bytes"])


def test_training_errors_are_one_line(tmp_path):
    cases = [
        (dict(kind="unigram"), "unknown tokenizer kind"),
        (dict(family="gpt"), "unknown family"),
        (dict(vocab_size=100), "vocab_size must be"),
        (dict(texts=["", ""]), "no training text"),
        (dict(texts=["", ""], kind="bytelevel"), "no training text"),
        (dict(texts=DOCS[:2], vocab_size=50_000), "Vocabulary size too high"),
    ]
    for kw, msg in cases:
        args = dict(texts=DOCS[:5], out_dir=tmp_path / "t", vocab_size=600) | kw
        with pytest.raises(TokenizerError, match=msg) as e:
            Tokenizer.train(**args)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "t").exists()

    def broken():
        yield DOCS[0]
        raise ValueError("corpus.jsonl:3: bad JSON")

    for kind in ("spm-bpe", "bytelevel"):
        with pytest.raises(ValueError, match="corpus.jsonl:3"):
            Tokenizer.train(broken(), tmp_path / kind, 600, kind=kind)


@pytest.mark.parametrize("kind", ["spm-bpe", "bytelevel"])
def test_max_train_bytes_limits_the_input(tmp_path, kind):
    seen = []

    def texts():
        for d in DOCS:
            seen.append(d)
            yield d

    tok = Tokenizer.train(texts(), tmp_path, 600, kind=kind, max_train_bytes=100_000)
    s = tok.train_stats
    assert s["truncated"] and 100_000 <= s["bytes"] < 100_000 + max(map(len, DOCS)) * 4
    assert s["texts"] == len(seen) - 1 < len(DOCS)  # one text read to see that more exist
    everything = Tokenizer.train(
        DOCS, tmp_path / "all", 600, kind=kind, max_train_bytes=sum(len(d.encode()) for d in DOCS)
    )
    assert not everything.train_stats["truncated"]
