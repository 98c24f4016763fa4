"""The five special tokens every model here needs, per family, the tokenizer kinds, and
the model families ``train`` knows (shared by the tokenizer and its storage, which must
not import each other)."""

from __future__ import annotations

from dataclasses import dataclass


class TokenizerError(ValueError):
    """Not a tokenizer, a broken tokenizer, or bad arguments (one-line message)."""


@dataclass(frozen=True)
class SpecialTokens:
    """The strings of the five special tokens every model here needs."""

    cls: str  # starts every sequence (RoBERTa's <s>)
    sep: str  # ends every sequence (RoBERTa's </s>)
    pad: str
    unk: str
    mask: str


FAMILIES: dict[str, SpecialTokens] = {
    "roberta": SpecialTokens("<s>", "</s>", "<pad>", "<unk>", "<mask>"),
    "bert": SpecialTokens("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"),  # DeBERTa, ELECTRA
}
FIELDS = ("cls", "sep", "pad", "unk", "mask")
KINDS = ("spm-bpe", "bytelevel", "wordpiece")  # the kinds ``train`` makes
# The model families ``train`` accepts: (their special-token family in ``FAMILIES``, the
# tokenizer kind of their papers). RoBERTa: GPT-2 byte-level BPE; BERT and ELECTRA:
# WordPiece (uncased); ALBERT and DeBERTa-v3: sentencepiece (trained here as ``spm-bpe``).
MODEL_FAMILIES: dict[str, tuple[str, str]] = {
    "roberta": ("roberta", "bytelevel"),
    "bert": ("bert", "wordpiece"),
    "electra": ("bert", "wordpiece"),
    "albert": ("bert", "spm-bpe"),
    "deberta": ("bert", "spm-bpe"),
}
# ids 0-4 of trained tokenizers: RoBERTa's order, and DeBERTa-v3's ([PAD]=0 [CLS]=1 ...)
TRAIN_ORDER = {
    "roberta": ("cls", "pad", "sep", "unk", "mask"),
    "bert": ("pad", "cls", "sep", "unk", "mask"),
}
# specials missing from a loaded vocabulary are appended in transformers' order
APPEND_ORDER = ("cls", "sep", "unk", "pad", "mask")
