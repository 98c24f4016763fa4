"""Loading tokenizers made elsewhere: GPT-2/RoBERTa vocab.json + merges.txt, sentencepiece
models (DeBERTa-v3 style, [MASK] appended), HF tokenizer.json (WordPiece); bad directories.
Every foreign tokenizer is built inside the test from Python's own docs."""

from __future__ import annotations

import io
import json
import re
import shutil
from pydoc_data.topics import topics

import numpy as np
import pytest

from data_pipeline.tokenizer import Tokenizer, TokenizerError

DOCS = [topics[k] for k in sorted(topics)]
TEXTS = DOCS[:30] + ["Hello  world\t\ttab\n\nnew\r\nline", "naïve café 😀", "x", ""]
ROBERTA = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def bytelevel_files(d, specials: list[str]) -> None:
    """GPT-2-style vocab.json + merges.txt trained with HF tokenizers."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(DOCS, trainer)
    d.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(d))


def test_roberta_vocab_and_merges_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    bytelevel_files(tmp_path, ROBERTA)
    tok = Tokenizer.load(tmp_path)
    hf = transformers.RobertaTokenizerFast.from_pretrained(str(tmp_path))
    assert (tok.kind, tok.family, tok.vocab_size) == ("bytelevel", "roberta", 800)
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert (hf.cls_token_id, hf.pad_token_id, hf.mask_token_id) == (0, 1, 4)
    for t in TEXTS:
        assert tok.encode(t).tolist() == hf(t, add_special_tokens=False).input_ids
        assert tok.encode_for_model(t).tolist() == hf(t).input_ids
        assert tok.decode(tok.encode(t)) == t


def test_gpt2_files_get_the_roberta_specials_appended(tmp_path):
    transformers = pytest.importorskip("transformers")
    bytelevel_files(tmp_path, ["<|endoftext|>"])
    tok = Tokenizer.load(tmp_path)
    hf = transformers.RobertaTokenizerFast.from_pretrained(str(tmp_path))
    assert tok.appended == ["<s>", "</s>", "<unk>", "<pad>", "<mask>"]
    assert tok.vocab_size == 805 == len(hf)
    assert [tok.cls_id, tok.sep_id, tok.unk_id, tok.pad_id, tok.mask_id] == list(range(800, 805))
    assert [
        hf.cls_token_id,
        hf.sep_token_id,
        hf.unk_token_id,
        hf.pad_token_id,
        hf.mask_token_id,
    ] == list(range(800, 805))
    for t in TEXTS[:10]:
        assert tok.encode_for_model(t).tolist() == hf(t).input_ids
    assert tok.decode([tok.mask_id, *tok.encode("hi")]) == "<mask>hi"
    # saving writes the appended specials into tokenizer.json; the copy is the same tokenizer
    tok.save(tmp_path / "saved")
    again = Tokenizer.load(tmp_path / "saved")
    assert again.fingerprint == tok.fingerprint and again.mask_id == 804


@pytest.fixture(scope="module")
def deberta_spm(tmp_path_factory):
    """A DeBERTa-v3-style sentencepiece unigram model: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3,
    default (NFKC) normalisation and dummy prefix, no [MASK] piece."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([ln for d in DOCS for ln in d.split("\n") if ln.strip()]),
        model_writer=model,
        model_type="unigram",
        vocab_size=1000,
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
        minloglevel=2,
        num_threads=1,
    )
    d = tmp_path_factory.mktemp("deberta")
    (d / "spm.model").write_bytes(model.getvalue())
    return d


def test_sentencepiece_model_with_appended_mask(deberta_spm, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(deberta_spm / "spm.model"))
    tok = Tokenizer.load(deberta_spm)
    assert (tok.kind, tok.family) == ("spm-unigram", "bert")
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.appended == ["[MASK]"] and tok.mask_id == sp.get_piece_size() == 1000
    assert tok.vocab_size == 1001 and tok.id_to_token(1000) == "[MASK]"
    for t in TEXTS:
        assert tok.encode(t).tolist() == sp.encode(t)
    ids = tok.encode_for_model("The value is [MASK] here.")
    assert ids[0] == 1 and ids[-1] == 2 and list(ids).count(1000) == 1
    assert tok.decode(ids, skip_special=True) == sp.decode(sp.encode("The value is")) + sp.decode(
        sp.encode(" here.")
    )
    # word starts come from "▁" (a piece that begins with it, or follows a lone "▁")
    ids, starts = tok.encode_with_word_starts("split words apart")
    pieces = [tok.id_to_token(i) for i in ids]
    expected = [
        k == 0 or p.startswith("▁") or pieces[k - 1].endswith("▁") for k, p in enumerate(pieces)
    ]
    assert starts.tolist() == expected and any(p.startswith("▁") for p in pieces[1:])
    zh_ids, zh_starts = tok.encode_with_word_starts("我爱北京天安门", segment_zh=True)
    assert zh_ids.tolist() == sp.encode("我爱北京天安门") and zh_starts[0]
    tok.save(tmp_path / "copy")
    assert Tokenizer.load(tmp_path / "copy").fingerprint == tok.fingerprint


def test_saved_sentencepiece_unigram_loads_in_autotokenizer(deberta_spm, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.load(deberta_spm)
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.mask_token_id == tok.mask_id == 1000 and len(hf) == 1001
    # HF's Unigram breaks ties between equal-score segmentations differently from
    # sentencepiece (seen only on runs of one punctuation character like "=====")
    lines = [ln for d in DOCS[:40] for ln in d.split("\n") if not re.search(r"(.)\1\1\1", ln)]
    for t in lines + ["A sentence with [MASK] in it.", "two  spaces", " lead", "trail "]:
        if "[MASK]" not in t:
            assert hf(t, add_special_tokens=False).input_ids == tok.encode(t).tolist(), t[:40]
        assert hf(t).input_ids == tok.encode_for_model(t).tolist(), t[:40]


def test_wordpiece_tokenizer_json(tmp_path):
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import BertProcessing

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(DOCS, vocab_size=800, show_progress=False)
    wp.post_processor = BertProcessing(
        ("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]"))
    )
    wp.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    assert (tok.kind, tok.family) == ("wordpiece", "bert")
    assert tok.mask_id == wp.token_to_id("[MASK]") and tok.vocab_size == wp.get_vocab_size()
    text = "Unbelievably, tokenization works; wordpieces split words."
    enc = wp.encode(text, add_special_tokens=False)
    assert tok.encode(text).tolist() == enc.ids
    assert tok.encode_for_model(text + " [MASK]").tolist() == wp.encode(text + " [MASK]").ids
    ids, starts = tok.encode_with_word_starts(text)
    # WordPiece, as BERT's whole-word masking: every piece without "##" starts a word
    # (punctuation included)
    expected = [not t.startswith("##") for t in enc.tokens]
    assert "," in enc.tokens and expected[enc.tokens.index(",")]
    assert starts.tolist() == expected
    assert not tok.word_start_table[wp.token_to_id("##s")]


def test_config_files_name_the_special_tokens(tmp_path):
    import sentencepiece as spm

    model = io.BytesIO()  # ALBERT-style: <pad> <unk> [CLS] [SEP] [MASK]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DOCS),
        model_writer=model,
        vocab_size=600,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2,
        num_threads=1,
    )
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": {"content": "[MASK]", "lstrip": True, "rstrip": False},
            }
        )
    )
    tok = Tokenizer.load(tmp_path)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.appended == [] and tok.vocab_size == 600


@pytest.mark.parametrize("kind", ["spm-bpe", "bytelevel"])
def test_our_directory_without_metadata_is_the_same_tokenizer(tmp_path, kind):
    tok = Tokenizer.train(DOCS, tmp_path / "a", 700, kind=kind, family="bert")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "tokenizer_meta.json").unlink()
    plain = Tokenizer.load(tmp_path / "b")
    assert plain.fingerprint == tok.fingerprint and plain.describe() == tok.describe()
    t = "a [MASK] b"
    assert np.array_equal(plain.encode_for_model(t), tok.encode_for_model(t))


def test_bad_directories_fail_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "badspm").mkdir()
    (tmp_path / "badspm" / "spm.model").write_bytes(b"not a model")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "tokenizer.json").write_text("{nope")
    (tmp_path / "notok").mkdir()
    (tmp_path / "notok" / "tokenizer.json").write_text('{"hello": 1}')
    (tmp_path / "badmeta").mkdir()
    (tmp_path / "badmeta" / "tokenizer_meta.json").write_text('{"format": "other"}')
    cases = {
        "empty": "not a tokenizer directory (expected tokenizer.json, vocab.json+merges.txt "
        "or spm.model)",
        "file.txt": "not a directory",
        "missing": "no such directory",
        "badspm": "spm.model: cannot load",
        "badjson": "tokenizer.json: not valid JSON",
        "notok": "not an HF tokenizers file",
        "badmeta": "not a valid tokenizer metadata file",
    }
    for name, msg in cases.items():
        with pytest.raises(TokenizerError) as e:
            Tokenizer.load(tmp_path / name)
        assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_retraining_into_a_tokenizer_directory_replaces_it(tmp_path):
    Tokenizer.train(DOCS, tmp_path, 700, kind="spm-bpe")
    tok = Tokenizer.train(DOCS, tmp_path, 700, kind="bytelevel", family="bert")
    names = {p.name for p in tmp_path.iterdir()}
    assert "spm.model" not in names and {"vocab.json", "merges.txt"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    Tokenizer.train(DOCS, tmp_path, 700, kind="spm-bpe")
    assert not (tmp_path / "vocab.json").exists() and (tmp_path / "spm.model").exists()
    # files of an earlier save are replaced only where our metadata says they are ours
    shutil.copytree(tmp_path, tmp_path.parent / "foreign")
    (tmp_path.parent / "foreign" / "tokenizer_meta.json").unlink()
    (tmp_path.parent / "foreign" / "vocab.json").write_text("{}")
    tok.save(tmp_path.parent / "foreign")
    assert (tmp_path.parent / "foreign" / "spm.model").exists()
    assert Tokenizer.load(tmp_path.parent / "foreign").fingerprint == tok.fingerprint
