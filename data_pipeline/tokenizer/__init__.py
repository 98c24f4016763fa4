"""Tokenizers: train, load (ours, sentencepiece, HF ``tokenizer.json``, GPT-2 files), save
(also loadable by ``transformers.AutoTokenizer``), encode with word starts, decode.

``Tokenizer`` (``core``) is the one class; see its module for the guarantees (lossless
round trip, special-token strings never interpreted in documents, long texts encoded in
pieces with identical ids). Modules, lowest first: ``words`` (word starts, Chinese word
segmentation, safe cut positions), ``specials`` (the special tokens per family),
``hf_files`` (HF ``tokenizer.json`` / configs), ``backends`` (sentencepiece and HF
``tokenizers`` engines), ``training``, ``storage`` (tokenizer directories), ``core``.
"""

from data_pipeline.tokenizer.core import GROUP_CHARS, MAX_CHARS, Tokenizer
from data_pipeline.tokenizer.specials import (
    FAMILIES,
    FIELDS,
    KINDS,
    SpecialTokens,
    TokenizerError,
)

__all__ = [
    "FAMILIES",
    "FIELDS",
    "GROUP_CHARS",
    "KINDS",
    "MAX_CHARS",
    "SpecialTokens",
    "Tokenizer",
    "TokenizerError",
]
