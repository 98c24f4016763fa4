"""Sentence starts: the character rules (English, Chinese, mixed, quotes, "?!" runs, line
breaks), their mapping to tokens of the trained spm-bpe and byte-level tokenizers, texts
encoded in pieces, documents continued across reader pieces, and the offsets path."""

from __future__ import annotations

import random
from pydoc_data.topics import topics

import numpy as np
import pytest

import data_pipeline.tokenizer.core as tokmod
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.tokenizer.sentences import (
    byte_offsets,
    sentence_start_chars,
    sentence_starts_from_bytes,
)
from data_pipeline.tokenizer.words import cut_text

DOCS = [topics[k] for k in sorted(topics)]
ZH = [
    "我爱北京天安门。今天天气很好，我们去公园散步吧！你呢？",
    "机器学习是人工智能的一个分支。深度学习是机器学习的一种方法。",
]
KINDS = ["spm-bpe", "bytelevel"]

# (text, its sentences): the text is the sentences joined by what lies between them.
CASES = [
    ("Hello world. How are you? I am fine!", ["Hello world.", "How are you?", "I am fine!"]),
    ("Really?! Yes... Sure.", ["Really?!", "Yes...", "Sure."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("(See below.) Next one ends here", ["(See below.)", "Next one ends here"]),
    ("line one\nline two\r\n\n   line three", ["line one", "line two", "line three"]),
    ("  \n\n leading space. Second", ["leading space.", "Second"]),
    ("3.14 is pi, e.g.x stays, ３．１４ too.", ["3.14 is pi, e.g.x stays, ３．１４ too."]),
    ("Trailing?!  \n", ["Trailing?!"]),
    ("我爱北京。今天天气很好！你呢？", ["我爱北京。", "今天天气很好！", "你呢？"]),
    ("他说：「好。」然后走了。", ["他说：「好。」", "然后走了。"]),
    ("English first. 中文句子。Another one.", ["English first.", "中文句子。", "Another one."]),
    ("全角句号． 之后", ["全角句号．", "之后"]),
    ("问题？！答案", ["问题？！", "答案"]),
]


def _sentences_by_chars(text: str) -> list[str]:
    cuts = [0, *sentence_start_chars(text).tolist(), len(text)]
    return [text[a:b].strip() for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


@pytest.mark.parametrize(("text", "sentences"), CASES)
def test_character_rules(text, sentences):
    assert _sentences_by_chars(text) == sentences


def test_context_carries_the_rules_across_a_join():
    assert sentence_start_chars(" Next", context="the end.").tolist() == [1]
    assert sentence_start_chars("\nNext", context="no stop").tolist() == [1]
    assert sentence_start_chars(" next", context="no stop").tolist() == []
    assert sentence_start_chars("然后", context="好。」").tolist() == [0]
    assert sentence_start_chars("Hi. Yo", context="").tolist() == [4]


def test_byte_offsets_of_any_text(monkeypatch):
    import data_pipeline.tokenizer.sentences as sentmod

    rng = random.Random(0)
    pools = [(0x20, 0x7E), (0x80, 0x7FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]
    text = "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(5000))
    chars = np.array(sorted(rng.sample(range(len(text) + 1), 300)) + [len(text)], np.int64)
    want = [len(text[:c].encode()) for c in chars]
    assert byte_offsets(text, chars).tolist() == want
    monkeypatch.setattr(sentmod, "_WINDOW", 97)  # many windows, offsets on their edges
    assert byte_offsets(text, chars[::-1]).tolist() == want[::-1]
    assert byte_offsets("abc", np.array([3, 0])).tolist() == [3, 0]


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Tokenizer]:
    corpus = DOCS[:150] + ZH * 30
    return {k: Tokenizer.train(corpus, tmp_path_factory.mktemp(k), 900, kind=k) for k in KINDS}


def _token_sentences(tok, ids, flags) -> list[str]:
    cuts = [*np.flatnonzero(flags).tolist(), len(ids)]
    return [tok.decode(ids[a:b]).strip() for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_start_the_sentences_of_the_rules(toks, kind):
    tok = toks[kind]
    texts = [t for t, _ in CASES]
    ids, words, sents, bounds = tok.encode_flat_with_starts(texts)
    old_ids, old_words, old_bounds = tok.encode_flat_with_word_starts(texts)
    assert np.array_equal(ids, old_ids) and np.array_equal(bounds, old_bounds)
    assert np.array_equal(words, old_words | sents)  # a sentence start is a word start
    assert sents.dtype == bool and sents[bounds[:-1]].all()  # each text's first token
    for k, (text, sentences) in enumerate(CASES):
        lo, hi = bounds[k], bounds[k + 1]
        assert _token_sentences(tok, ids[lo:hi], sents[lo:hi]) == sentences, text
        one = tok.encode_with_starts(text)
        assert np.array_equal(one[2], sents[lo:hi]) and np.array_equal(one[1], words[lo:hi])


@pytest.mark.parametrize("kind", KINDS)
def test_the_token_holding_the_first_character_starts_the_sentence(toks, kind):
    """Whitespace before a sentence stays where the tokenizer put it ("ĠThe" starts one; a
    separate newline token ends the previous one), and never is a sentence on its own."""
    tok = toks[kind]
    text = "\n\n".join(DOCS[:20]) + "".join(ZH)
    ids, _, sents = tok.encode_with_starts(text)
    pieces = [tok.decode([i]) for i in ids]
    starts = np.flatnonzero(sents)
    assert len(starts) > 100
    for k in starts[1:]:
        assert pieces[k].strip() or pieces[k] == "\ufffd", (k, pieces[k - 1 : k + 2])
    # every sentence the characters give, and no other, starts at one of these tokens
    assert len(starts) == 1 + len(sentence_start_chars(text))


@pytest.mark.parametrize("kind", KINDS)
def test_pieces_and_batches_give_the_flags_of_the_whole(toks, kind, monkeypatch):
    tok = toks[kind]
    text = "\n\n".join(DOCS[:40]) + " " + " ".join(ZH * 20)  # ~200 KB
    short = ["", "One. Two", "x", "\n"]
    whole = tok.encode_flat_with_starts([text, *short])
    monkeypatch.setattr(tokmod, "MAX_CHARS", 3000)
    cut = tok.encode_flat_with_starts([text, *short])
    for a, b in zip(whole, cut, strict=True):
        assert np.array_equal(a, b)
    # the offsets path (for tokenizers without byte tables) gives the same flags
    monkeypatch.setattr(tok, "_offsets_only", True)
    by_offsets = tok.encode_flat_with_starts([text, *short])
    assert np.array_equal(by_offsets[0], whole[0]) and np.array_equal(by_offsets[2], whole[2])


@pytest.mark.parametrize("kind", KINDS)
def test_a_document_continued_across_pieces_has_the_flags_of_the_whole(toks, kind):
    tok = toks[kind]
    text = "\n\n".join(DOCS[5:15]) + " 结束了。" + " ".join(ZH * 5)
    pieces = cut_text(text, 700)
    assert len(pieces) > 20
    contexts = [None, *pieces[:-1]]
    for offsets in (False, True):
        tok._offsets_only = offsets
        try:
            ids, words, sents, _ = tok.encode_flat_with_starts(pieces, contexts=contexts)
            want = tok.encode_with_starts(text)
        finally:
            tok._offsets_only = False
        assert np.array_equal(ids, want[0]) and np.array_equal(sents, want[2])
    with pytest.raises(ValueError, match="contexts"):
        tok.encode_flat_with_starts(["a", "b"], contexts=[None])


def test_batched_scan_equals_one_text_at_a_time():
    """``sentence_starts_from_bytes`` scans a batch as one string: nothing leaks between
    texts (a text ending in ". " does not start the next one twice, an empty one is fine)."""
    rng = random.Random(1)
    words = ["Hi.", "ok", "是。", "\n", "?!", '"', " ", "x", "", "．"]
    texts = ["".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    texts += ["end. ", "", "Next"]
    nbytes = [np.array([len(c.encode()) for c in t], np.int64) for t in texts]  # a char a token
    bounds = np.cumsum([0] + [len(t) for t in texts])
    batch = sentence_starts_from_bytes(texts, np.concatenate(nbytes), bounds)
    for k, t in enumerate(texts):
        one = sentence_starts_from_bytes([t], nbytes[k], np.array([0, len(t)]))
        assert np.array_equal(batch[bounds[k] : bounds[k + 1]], one), t
        want = np.zeros(len(t), bool)
        want[sentence_start_chars(t)] = True
        want[:1] = True
        assert np.array_equal(one, want), t
