"""Training the three tokenizer kinds from an iterable of texts (lazily consumed).

``spm-bpe``: sentencepiece BPE, lossless. Identity normalisation (no NFKC), spaces kept as
they are (no collapsing, no dummy prefix), whitespace-only pieces allowed (indentation
becomes a few tokens, not one per space), "\\n" and "\\t" as user-defined symbols (always
one piece each), and byte fallback so that any character outside the learned alphabet
becomes its UTF-8 bytes: zero UNK on any text. sentencepiece learns from "sentences" and
drops those longer than ``max_sentence_length``, so texts are fed line by line (the
newline itself is the user symbol) and long lines are cut before a space.

``bytelevel``: GPT-2/RoBERTa byte-level BPE with HF ``tokenizers`` (256 byte symbols, no
normalisation, no prefix space), lossless by construction.

``wordpiece``: BERT-uncased WordPiece with HF ``tokenizers``: ``BertNormalizer`` (clean
text, lowercase, strip accents, spaces around CJK characters), ``BertPreTokenizer``
(whitespace and punctuation), "##" marking word-internal pieces. Lossy by design: case,
accents and whitespace are gone, and a word with a character outside the learned alphabet
becomes [UNK]. The alphabet keeps the most frequent characters, at most a quarter of the
vocabulary (their "##" forms take up to another quarter), so the vocabulary never exceeds
``vocab_size``.

All put the family's five special tokens at ids 0-4.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator

from data_pipeline.tokenizer.words import cut_text

USER_SYMBOLS = ("\n", "\t")
MAX_LINE_CHARS = 4096  # <= 16 KiB of UTF-8: well under max_sentence_length below
MAX_SENTENCE_BYTES = 1 << 15
MIN_VOCAB = {
    "spm-bpe": 256 + 5 + len(USER_SYMBOLS) + 1,
    "bytelevel": 256 + 5 + 1,
    "wordpiece": 5 + 4 * 32,  # room for an alphabet of 32 characters
}
# why a kind needs at least MIN_VOCAB ids (for error messages)
MIN_VOCAB_REASON = {
    "spm-bpe": "256 byte symbols + special tokens",
    "bytelevel": "256 byte symbols + special tokens",
    "wordpiece": "special tokens + an alphabet",
}


class TrainingError(ValueError):
    """Training could not produce a tokenizer (one-line reason)."""


class Budget:
    """Counts the UTF-8 bytes handed to a trainer and stops after ``max_bytes``.

    An exception from the input (e.g. a reader error) is kept in ``error`` and ends the
    input: the trainers pull texts from C++/Rust, which would turn it into a bare
    RuntimeError or lose it; ``check`` re-raises it after training.
    """

    def __init__(self, max_bytes: int | None):
        self.max_bytes, self.bytes, self.texts, self.truncated = max_bytes, 0, 0, False
        self.error: BaseException | None = None

    def take(self, texts: Iterable[str]) -> Iterator[str]:
        """``texts`` until the budget is spent, counted; an input error ends them."""
        it = iter(texts)
        while True:
            try:
                text = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - re-raised by check()
                self.error = e
                return
            if self.max_bytes is not None and self.bytes >= self.max_bytes:
                self.truncated = True  # over budget with input left unread
                return
            if not isinstance(text, str):
                self.error = TypeError(f"training texts must be str, got {type(text).__name__}")
                return
            self.bytes += len(text.encode("utf-8"))
            self.texts += 1
            yield text

    def check(self) -> None:
        """Re-raise the input's exception, if there was one."""
        if self.error is not None:
            raise self.error


def spm_lines(texts: Iterable[str]) -> Iterator[str]:
    """Non-empty lines of every text, each at most ``MAX_LINE_CHARS`` characters."""
    for text in texts:
        for line in text.split("\n"):
            if line:
                yield from cut_text(line, MAX_LINE_CHARS)


def train_spm_bpe(
    texts: Iterable[str], vocab_size: int, order: list[tuple[str, str]], budget: Budget
) -> bytes:
    """A serialized sentencepiece BPE ModelProto. ``order``: (field, token) of the five
    specials in id order, e.g. RoBERTa's ``cls <s>, pad <pad>, sep </s>, unk <unk>, mask``."""
    import sentencepiece as spm

    ids = {field: (i, tok) for i, (field, tok) in enumerate(order)}
    if ids["mask"][0] != 4:
        raise ValueError("the mask token must come last (a control symbol takes id 4)")
    fed = [0]

    def sentences() -> Iterator[str]:
        for line in spm_lines(budget.take(texts)):
            fed[0] += 1
            yield line

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_by_whitespace=True,
            user_defined_symbols=list(USER_SYMBOLS),
            control_symbols=[ids["mask"][1]],
            byte_fallback=True,
            character_coverage=0.9995,
            max_sentence_length=MAX_SENTENCE_BYTES,
            max_sentencepiece_length=16,
            bos_id=ids["cls"][0],
            bos_piece=ids["cls"][1],
            eos_id=ids["sep"][0],
            eos_piece=ids["sep"][1],
            pad_id=ids["pad"][0],
            pad_piece=ids["pad"][1],
            unk_id=ids["unk"][0],
            unk_piece=ids["unk"][1],
            num_threads=max(1, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as e:
        budget.check()
        if fed[0] == 0:
            raise TrainingError("no training text (every document is empty)") from e
        raise TrainingError(f"sentencepiece training failed: {_one_line(e)}") from e
    budget.check()
    return model.getvalue()


def train_bytelevel(
    texts: Iterable[str], vocab_size: int, order: list[tuple[str, str]], budget: Budget
) -> dict:
    """The JSON (dict) of an HF byte-level BPE tokenizer without post-processor."""

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[t for _, t in order],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    return _train_hf(tok, trainer, texts, budget)


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, order: list[tuple[str, str]], budget: Budget
) -> dict:
    """The JSON (dict) of an HF BERT-uncased WordPiece tokenizer without post-processor."""

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    unk = dict(order)["unk"]
    tok = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix="##"))
    # strip_accents=None: follows lowercase, as in transformers' BertTokenizer
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[t for _, t in order],
        limit_alphabet=(vocab_size - len(order)) // 4,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    return _train_hf(tok, trainer, texts, budget)


def _train_hf(tok, trainer, texts: Iterable[str], budget: Budget) -> dict:
    """Train an HF ``tokenizers`` pipeline; its JSON (dict)."""

    def pieces() -> Iterator[str]:  # bounded memory per item for huge documents
        for text in budget.take(texts):
            yield from cut_text(text, 1 << 20)

    tok.train_from_iterator(pieces(), trainer)
    budget.check()
    if budget.texts == 0 or budget.bytes == 0:
        raise TrainingError("no training text (every document is empty)")
    # the specials come back as added tokens; Tokenizer re-adds them with its own flags
    return json.loads(tok.to_str())


def _one_line(e: Exception) -> str:
    msg = " ".join(str(e).split())
    return msg.split("] ", 1)[-1] if "] " in msg else msg
