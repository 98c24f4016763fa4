"""The five special tokens every model here needs, per family, and the tokenizer kinds
(shared by the tokenizer and its storage, which must not import each other)."""

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
KINDS = ("spm-bpe", "bytelevel")  # the kinds ``train`` makes
# ids 0-4 of trained tokenizers: RoBERTa's order, and DeBERTa-v3's ([PAD]=0 [CLS]=1 ...)
TRAIN_ORDER = {
    "roberta": ("cls", "pad", "sep", "unk", "mask"),
    "bert": ("pad", "cls", "sep", "unk", "mask"),
}
# specials missing from a loaded vocabulary are appended in transformers' order
APPEND_ORDER = ("cls", "sep", "unk", "pad", "mask")
