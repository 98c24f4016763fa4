"""Tokenizers: train (byte-level BPE, WordPiece, sentencepiece BPE), load (ours,
sentencepiece, HF ``tokenizer.json``, GPT-2 files, BERT ``vocab.txt``), save (also loadable
by ``transformers.AutoTokenizer``), encode with word starts, decode.

``Tokenizer`` (``core``) is the one class; see its module for the guarantees (lossless
round trip for ``spm-bpe`` and ``bytelevel``; ``wordpiece`` lowercases and drops
whitespace, so its decode is approximate; special-token strings never interpreted in
documents; long texts encoded in pieces with identical ids). Modules, lowest first:
``words`` (word starts, Chinese word segmentation, safe cut positions), ``sentences``
(sentence starts: end punctuation, CJK marks, line breaks), ``specials`` (the
special tokens per family, the model families and their usual kinds),
``hf_files`` (HF ``tokenizer.json`` / configs), ``backends`` (sentencepiece and HF
``tokenizers`` engines), ``training``, ``storage`` (tokenizer directories), ``core``.
"""

from data_pipeline.tokenizer.core import GROUP_CHARS, MAX_CHARS, Tokenizer
from data_pipeline.tokenizer.specials import (
    FAMILIES,
    FIELDS,
    KINDS,
    MODEL_FAMILIES,
    SpecialTokens,
    TokenizerError,
)

__all__ = [
    "FAMILIES",
    "FIELDS",
    "GROUP_CHARS",
    "KINDS",
    "MAX_CHARS",
    "MODEL_FAMILIES",
    "SpecialTokens",
    "Tokenizer",
    "TokenizerError",
]
