"""The tokenizer: train, load, save, encode with word and sentence starts, decode.

One class, ``Tokenizer``, over two engines (``backends``): sentencepiece for
``spm-bpe`` (trained here, lossless) and foreign ``spm.model`` files (``spm-unigram``,
e.g. DeBERTa-v3), and HF ``tokenizers`` for ``bytelevel`` (GPT-2/RoBERTa BPE, trained
here or read from ``vocab.json`` + ``merges.txt`` / ``tokenizer.json``) and any other
``tokenizer.json`` (``hf``).

Guarantees: ``encode`` never interprets special-token strings (a document that contains
"<mask>" is text); ``encode_for_model`` does, like HF. The tokenizers trained here are
lossless: ``decode(encode(t)) == t`` for any Unicode text, with zero UNK. Texts longer than
``MAX_CHARS`` are encoded in pieces cut at a single space/newline between non-space
characters, which gives exactly the ids of the whole text for both trained kinds; only a
window without such a position is cut hard (ids near the cut may then differ; decoding is
still exact). Sentence starts (``sentences``) are found on the whole text, so the cuts do
not move them. A saved directory also loads in ``transformers.AutoTokenizer`` with the same
ids; the one known difference: ``spm-bpe`` spells a literal U+2581 ("▁", sentencepiece's
space symbol) with byte pieces to stay lossless, where sentencepiece and HF treat it as a
space.

Directory layout written by ``save``: ``tokenizer_meta.json`` (ours: kind, family,
special tokens, fingerprint), the engine file (``spm.model`` or ``tokenizer.json``; plus
``vocab.json``/``merges.txt`` for byte-level BPE) and the HF files ``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict
from itertools import chain

import numpy as np

from data_pipeline.tokenizer.hf_files import split_added_tokens
from data_pipeline.tokenizer.sentences import (
    flags_at_chars,
    sentence_start_chars,
    sentence_starts_from_bytes,
)
from data_pipeline.tokenizer.specials import (
    APPEND_ORDER,
    FIELDS,
    SpecialTokens,
    TokenizerError,
)
from data_pipeline.tokenizer.storage import load_dir, save_dir, train_and_save
from data_pipeline.tokenizer.words import (
    HAN_RUN,
    WHITESPACE,
    cut_text,
    starts_from_offsets,
    starts_from_tables,
    surface_tables,
    zh_starts_from_bytes,
    zh_starts_from_chars,
)

MAX_CHARS = 1 << 20  # texts longer than this are encoded in pieces (bounded memory)
GROUP_CHARS = 1 << 23  # characters per engine call


class Tokenizer:
    """See the module docstring. Build with ``load`` or ``train``."""

    def __init__(
        self,
        backend,
        tokens: SpecialTokens,
        added: dict[str, int] | None = None,
        flags: dict[str, tuple[bool, bool]] | None = None,
    ):
        """``added``: special tokens the engine does not know (content -> id);
        ``flags``: content -> (lstrip, rstrip) for ``encode_for_model``."""
        self._backend, self.specials = backend, tokens
        self.kind: str = backend.kind
        self.family: str = "roberta" if tokens.cls == "<s>" else "bert"
        self._added = dict(added or {})
        next_id = max([backend.size - 1, *self._added.values()]) + 1
        self.appended: list[str] = []  # specials this tokenizer had to add to the vocabulary
        for field in APPEND_ORDER:
            tok = getattr(tokens, field)
            if tok not in self._added and backend.token_to_id(tok) is None:
                self._added[tok], next_id = next_id, next_id + 1
                self.appended.append(tok)
        ids = {f: self._id_of(getattr(tokens, f)) for f in FIELDS}
        self.cls_id, self.sep_id, self.pad_id = ids["cls"], ids["sep"], ids["pad"]
        self.unk_id, self.mask_id = ids["unk"], ids["mask"]
        self.vocab_size: int = next_id
        self._flags = {tokens.mask: (True, False)}  # the mask eats the space before it
        self._flags.update(flags or {})
        self._special = {getattr(tokens, f): i for f, i in ids.items()}
        self._special.update(self._added)
        for i in backend.special_pieces():
            self._special.setdefault(backend.id_to_token(i), i)
        self._special_tok = {i: t for t, i in self._special.items()}
        self.special_ids = np.array(sorted(self._special_tok), dtype=np.int64)
        self._build_tables()
        atoms = sorted({*self._special, *backend.atomic_pieces()}, key=lambda s: (-len(s), s))
        self._atoms = re.compile("|".join(map(re.escape, atoms)))
        self.fingerprint: str = self._fingerprint()

    def _id_of(self, tok: str) -> int:
        i = self._added.get(tok)
        return i if i is not None else self._backend.token_to_id(tok)

    def _build_tables(self) -> None:
        n = self.vocab_size
        surfaces = self._backend.surfaces()[:n]
        surfaces += [b""] * (n - len(surfaces))
        self._begins, self._ends, self._nbytes = surface_tables(surfaces)
        self._special_mask = np.zeros(n, dtype=bool)
        self._special_mask[self.special_ids] = True
        prefix = getattr(self._backend, "continuing_prefix", None)
        if prefix:  # WordPiece: a piece starts a word unless it is marked as a continuation
            table = np.array([not s.startswith(prefix.encode()) for s in surfaces], dtype=bool)
        else:
            table = self._begins.copy()
        self.word_start_table: np.ndarray = table | self._special_mask
        # tokenizers that drop whitespace (WordPiece, ...) need character offsets
        self._offsets_only = self.kind in ("hf", "wordpiece")

    def _fingerprint(self) -> str:
        payload = {
            "kind": self.kind,
            "family": self.family,
            "engine": self._backend.digest(),
            "specials": sorted(self._special.items()),
            "fields": asdict(self.specials),
            # effective (lstrip, rstrip) of every special, however the flags were given
            "flags": sorted((t, list(self._flags.get(t, (False, False)))) for t in self._special),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> Tokenizer:
        """A tokenizer directory: ours, or HF/sentencepiece files (see ``tokenizer_io``)."""
        return load_dir(cls, path)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        out_dir,
        vocab_size: int,
        kind: str = "spm-bpe",
        family: str = "roberta",
        *,
        max_train_bytes: int | None = None,
    ) -> Tokenizer:
        """Train on ``texts`` (consumed once, at most ``max_train_bytes`` of UTF-8), save to
        ``out_dir`` and return the tokenizer loaded back from there."""
        return train_and_save(cls, texts, out_dir, vocab_size, kind, family, max_train_bytes)

    def save(self, out_dir, copy_from=None) -> None:
        """Write our files plus HF's (tokenizer.json, tokenizer_config.json, ...).

        ``copy_from``: the directory this tokenizer was loaded from; when ``save`` wrote it
        for this very tokenizer (same fingerprint), its files are copied as they are."""
        save_dir(self, out_dir, copy_from)

    # -- encoding --------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """int64 ids of ``text``; no specials added, special-token strings are plain text."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        flat, bounds = self._encode_flat(texts)
        return _split(flat, bounds)

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids of ``texts`` concatenated, and the token bounds of each text (n + 1)."""
        if not set(map(type, texts)) <= {str}:
            k, t = next((k, t) for k, t in enumerate(texts) if not isinstance(t, str))
            raise TokenizerError(f"texts[{k}] is {type(t).__name__}, not str")
        chars = list(map(len, texts))
        counts = np.ones(len(texts), dtype=np.int64)
        if max(chars, default=0) <= MAX_CHARS and sum(chars) <= GROUP_CHARS:
            groups = [texts]  # the common case: one engine call, no Python loop per text
        else:
            pieces = []
            for k, t in enumerate(texts):
                cut = cut_text(t, MAX_CHARS) if chars[k] > MAX_CHARS else [t]
                pieces += cut
                counts[k] = len(cut)
            groups, size = [[]], 0
            for p in pieces:  # a few MB per engine call: bounded transient memory
                if size >= GROUP_CHARS:
                    groups.append([])
                    size = 0
                groups[-1].append(p)
                size += len(p)
        arrays, lens = [], []
        for group in groups:
            lists = self._backend.encode_lists(group)
            n = list(map(len, lists))
            arrays.append(np.fromiter(chain.from_iterable(lists), np.int64, sum(n)))
            lens += n
        piece_bounds = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
        bounds = np.concatenate([[0], piece_bounds[np.cumsum(counts)]]).astype(np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        return flat, bounds

    def encode_with_word_starts(
        self, text: str, segment_zh: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, bool flags: the token starts a word); see ``tokenizer_words``."""
        return self.encode_batch_with_word_starts([text], segment_zh)[0]

    def encode_batch_with_word_starts(
        self, texts: list[str], segment_zh: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        flat, starts, bounds = self.encode_flat_with_word_starts(texts, segment_zh)
        return list(zip(_split(flat, bounds), _split(starts, bounds), strict=True))

    def encode_flat_with_word_starts(
        self, texts: list[str], segment_zh: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``encode_batch_with_word_starts`` concatenated: (all ids, all flags, the token
        bounds of each text, ``len(texts) + 1``). Preprocessing writes whole batches from
        these, with no array per text."""
        ids, words, _, bounds = self._encode_flat_starts(texts, segment_zh, False, None)
        return ids, words, bounds

    def encode_with_starts(
        self, text: str, segment_zh: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, word-start flags, sentence-start flags) of one text; see
        ``encode_flat_with_starts``."""
        ids, words, sentences, _ = self.encode_flat_with_starts([text], segment_zh)
        return ids, words, sentences

    def encode_flat_with_starts(
        self,
        texts: list[str],
        segment_zh: bool = False,
        contexts: list[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(all ids, word-start flags, sentence-start flags, token bounds of each text):
        ``encode_flat_with_word_starts`` plus sentence starts (``tokenizer.sentences``: the
        first token of each non-empty text and the token holding each later sentence's
        first character). Every sentence start is also a word start.

        ``contexts[k]``, when given and not None, is the text before ``texts[k]`` in the
        same document (``texts[k]`` is a later piece of it): sentence rules then apply
        across the join and the first token is not forced to start a sentence."""
        if contexts is not None and len(contexts) != len(texts):
            raise ValueError("contexts must have one entry (or None) per text")
        ids, words, sentences, bounds = self._encode_flat_starts(texts, segment_zh, True, contexts)
        words |= sentences
        return ids, words, sentences, bounds

    def _encode_flat_starts(
        self, texts: list[str], segment_zh: bool, sentences: bool, contexts
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(ids, word starts, sentence starts or None unless ``sentences``, bounds)."""
        lossless = self._backend.lossless
        if self._offsets_only or (not lossless and (segment_zh or sentences)):
            ctxs = contexts if contexts is not None else [None] * len(texts)
            triples = [
                self._encode_by_offsets(t, segment_zh, sentences, c)
                for t, c in zip(texts, ctxs, strict=True)
            ]
            bounds = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum([len(ids) for ids, _, _ in triples], out=bounds[1:])
            if not triples:
                empty = np.zeros(0, bool)
                return np.zeros(0, np.int64), empty, empty.copy() if sentences else None, bounds
            return (
                np.concatenate([p[0] for p in triples]),
                np.concatenate([p[1] for p in triples]),
                np.concatenate([p[2] for p in triples]) if sentences else None,
                bounds,
            )
        flat, bounds = self._encode_flat(texts)
        starts = starts_from_tables(flat, bounds[:-1], self._begins, self._ends, self._special_mask)
        if segment_zh:
            for k, t in enumerate(texts):
                if HAN_RUN.search(t):
                    lo, hi = bounds[k], bounds[k + 1]
                    starts[lo:hi] |= self._zh_flags(t, flat[lo:hi])
        sents = None
        if sentences:  # lossless: token byte offsets are a cumulative sum of byte counts
            sents = sentence_starts_from_bytes(texts, self._nbytes[flat], bounds, contexts)
        return flat, starts, sents, bounds

    def _zh_flags(self, text: str, ids: np.ndarray) -> np.ndarray:
        """jieba word starts of a lossless encoding, one ~MAX_CHARS piece at a time."""
        nbytes = self._nbytes[ids]
        byte_starts = np.cumsum(nbytes) - nbytes
        out, pos = np.zeros(len(ids), dtype=bool), 0
        for piece in cut_text(text, MAX_CHARS):
            size = len(piece.encode("utf-8"))
            lo, hi = np.searchsorted(byte_starts, [pos, pos + size])
            out[lo:hi] = zh_starts_from_bytes(piece, byte_starts[lo:hi] - pos)
            pos += size
        return out

    def _encode_by_offsets(
        self, text: str, segment_zh: bool, sentences: bool = False, context: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Word starts (and sentence starts if ``sentences``) from the engine's character
        offsets (lossy or whitespace-dropping tokenizers), one ``MAX_CHARS`` piece at a time:
        (ids, word starts, sentence starts or None)."""
        all_ids, all_starts, all_sents, prev_ws = [], [], [], True
        marks = sentence_start_chars(text, context) if sentences else None
        base, carry = 0, not context  # a sentence flag owed to the next token
        for piece in cut_text(text, MAX_CHARS):
            ids, offs = self._backend.encode_offsets(piece)
            if self.kind == "wordpiece":
                # BERT's whole-word masking: every piece not marked "##" starts a word (so
                # punctuation and each CJK character are words of their own, as in BERT).
                st = self.word_start_table[ids]
            elif self._offsets_only:
                st = starts_from_offsets(piece, offs, self._special_mask[ids], prev_ws)
            else:
                st = starts_from_tables(
                    ids,
                    np.zeros(1, np.int64) if not all_ids else np.zeros(0, np.int64),
                    self._begins,
                    self._ends,
                    self._special_mask,
                )
                if all_ids and len(ids) and len(all_ids[-1]):
                    st[0] |= self._ends[all_ids[-1][-1]]
            if segment_zh and HAN_RUN.search(piece):
                st |= zh_starts_from_chars(piece, offs)
            if sentences:
                lo, hi = np.searchsorted(marks, [base, base + len(piece)])
                ss, past_end = flags_at_chars(offs, marks[lo:hi] - base)
                if len(ids):
                    ss[0] |= carry
                    carry = False
                carry |= past_end
                all_sents.append(ss)
            all_ids.append(ids)
            all_starts.append(st)
            prev_ws = prev_ws if not piece else piece[-1] in WHITESPACE
            base += len(piece)
        sents = np.concatenate(all_sents) if sentences else None
        return np.concatenate(all_ids), np.concatenate(all_starts), sents

    def encode_for_model(self, text: str) -> np.ndarray:
        """[cls] + ids + [sep]; special-token strings in ``text`` become their ids (a mask
        also takes the whitespace before it, as in RoBERTa), as ``AutoTokenizer`` does."""
        segments, specials = split_added_tokens(text, self._atoms, self._special, self._flags)
        encoded = self.encode_batch(segments)
        parts = [np.array([self.cls_id], dtype=np.int64)]
        for k, ids in enumerate(encoded):
            parts.append(ids)
            if k < len(specials):
                parts.append(np.array([specials[k]], dtype=np.int64))
        parts.append(np.array([self.sep_id], dtype=np.int64))
        return np.concatenate(parts)

    # -- decoding and lookups --------------------------------------------------------------
    def decode(self, ids, skip_special: bool = False) -> str:
        arr = np.asarray(ids, dtype=np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise TokenizerError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        special = self._special_mask[arr]
        if not special.any():
            return self._backend.decode(arr.tolist())
        out, prev = [], 0
        for j in np.flatnonzero(special):
            if j > prev:
                out.append(self._backend.decode(arr[prev:j].tolist()))
            if not skip_special:
                out.append(self._special_tok[int(arr[j])])
            prev = j + 1
        if prev < arr.size:
            out.append(self._backend.decode(arr[prev:].tolist()))
        return "".join(out)

    def id_to_token(self, i: int) -> str:
        i = int(i)
        if i in self._special_tok:
            return self._special_tok[i]
        tok = self._backend.id_to_token(i) if 0 <= i < self._backend.size else None
        if tok is None:
            raise TokenizerError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return tok

    def token_to_id(self, s: str) -> int | None:
        i = self._special.get(s)
        return i if i is not None else self._backend.token_to_id(s)

    def describe(self) -> dict:
        """The ``tokenizer`` entry of a shard manifest."""
        return {
            "kind": self.kind,
            "family": self.family,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "special_ids": {f: int(getattr(self, f"{f}_id")) for f in FIELDS},
        }

    def __repr__(self) -> str:
        return (
            f"Tokenizer(kind={self.kind!r}, family={self.family!r}, "
            f"vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]!r})"
        )


def _split(a: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    """Views ``a[bounds[k]:bounds[k + 1]]`` (3x faster than ``np.split`` for short texts)."""
    b = bounds.tolist()
    return [a[lo:hi] for lo, hi in zip(b[:-1], b[1:], strict=True)]
