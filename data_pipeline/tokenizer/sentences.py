"""Sentence starts, for sentence-pair objectives (BERT's next-sentence prediction, ALBERT's
sentence-order prediction), recorded by preprocessing beside word starts.

**Where a sentence starts** (character rules, applied to a document's text by one regex):

- at the document's beginning;
- after Latin end punctuation: a run of ``.`` ``!`` ``?`` (or fullwidth ``．``), then any
  closing quotes or brackets (``" ' ) ] } » ’ ” ›`` and their CJK/fullwidth forms), then
  at least one whitespace character: ``Really?! "Yes." Then`` has three sentences. The
  whitespace is required, so ``3.14``, ``e.g.x`` and ``３．１４`` (fullwidth ``．`` is also a
  decimal point and an abbreviation mark) do not split;
- after CJK end punctuation ``。`` ``｡`` ``！`` ``？`` (a run, then closing quotes or brackets
  such as ``」』）》``), with or without whitespace: ``我爱北京。今天很好！你呢？`` has three;
- after a line break (``\\n``, ``\\r``, ``\\v``, ``\\f``, U+0085, U+2028, U+2029): a new
  non-empty line starts a sentence, so hard-wrapped text gives one "sentence" per line and
  one-sentence-per-line corpora (BERT's format) are split exactly.

In every case the sentence starts at its first non-whitespace character; blank lines and
indentation between sentences are skipped, and a text's leading whitespace belongs to its
first sentence. There is no abbreviation list: ``Mr. Smith`` and ``e.g. this`` split (rare
enough not to matter for NSP/SOP, which only need plausible segment boundaries).

**Which token starts it**: the token holding the sentence's first character (of a character
split into byte pieces, the first piece). Whitespace between sentences therefore belongs to
whichever token the tokenizer put it in: byte-level BPE's ``ĠThe`` and sentencepiece's
``▁The`` start the sentence, a separate ``\\n`` token ends the previous one. The first token
of every non-empty text is a sentence start, and ``Tokenizer.encode_flat_with_starts`` also
marks every sentence start as a word start.

Positions come from the whole text, so texts encoded in pieces (``MAX_CHARS``) get exactly
the flags of the whole; a text that continues a document (a reader's piece of a huge
document) passes the previous piece as its *context* (its last ``CONTEXT_CHARS`` are used):
then its first token starts a sentence only if the rules say so across the join.
"""

from __future__ import annotations

import re

import numpy as np

from data_pipeline.tokenizer.words import WHITESPACE

LATIN_ENDS = ".!?\uff0e"  # need whitespace after them
CJK_ENDS = "\u3002\uff61\uff01\uff1f"  # 。｡！？: no whitespace needed
CLOSERS = (
    "\"')]}\u00bb\u2019\u201d\u203a"  # " ' ) ] } » ’ ” ›
    "\u3009\u300b\u300d\u300f\u3011\u3015\u3017\u3019\u301b\u301e\u301f"  # 〉》」』】〕〗〙〛〞〟
    "\uff02\uff07\uff09\uff3d\uff5d\uff60\uff63"  # fullwidth ＂＇）］｝｠｣
)
LINE_BREAKS = "\n\r\x0b\x0c\x85\u2028\u2029"
CONTEXT_CHARS = 256  # of a previous piece: enough for any end-punctuation + closers run
_WS = re.escape(WHITESPACE)
_E = re.escape
# The first character is matched by one class so that the scanner can skip to candidates
# in C (a pattern starting with an alternation is tried at every position: 6x slower);
# the lookbehinds then tell which rule applies. Possessive quantifiers (``*+``, ``++``)
# never give back what they matched: "?!" at the end of a text is one run that fails to
# match, not "?" followed by a sentence starting at "!". ``m.end()`` is the first
# character of the next sentence (the final lookahead: not whitespace).
BOUNDARY = re.compile(
    f"[{_E(LATIN_ENDS + CJK_ENDS + LINE_BREAKS)}]"
    f"(?:(?<=[{_E(LATIN_ENDS)}])[{_E(LATIN_ENDS)}]*+[{_E(CLOSERS)}]*+[{_WS}]++"
    f"|(?<=[{_E(CJK_ENDS)}])[{_E(CJK_ENDS)}]*+[{_E(CLOSERS)}]*+[{_WS}]*+"
    f"|(?<=[{_E(LINE_BREAKS)}])[{_WS}]*+)"
    f"(?=[^{_WS}])"
)
_LEADING = re.compile(f"[{_WS}]*+")  # a text's leading whitespace: its first sentence's
_SEP = "\x00"  # between the texts of a batch: not whitespace, punctuation or a closer
_WINDOW = 1 << 20  # characters per step when converting character to byte offsets


def sentence_start_chars(text: str, context: str | None = None) -> np.ndarray:
    """Sorted character offsets into ``text`` of the first characters of its sentences,
    the first sentence's excepted (its start is the text's first token). With ``context``
    (the text before ``text`` in the same document), a sentence starting right at the join
    is included and nothing is excepted."""
    ctx = context[-CONTEXT_CHARS:] if context else ""
    pos = _boundaries(ctx + text) - len(ctx)
    if ctx:
        return pos[pos >= 0]
    return pos[pos > _LEADING.match(text).end()]


def _boundaries(text: str) -> np.ndarray:
    return np.fromiter((m.end() for m in BOUNDARY.finditer(text)), dtype=np.int64)


def byte_offsets(text: str, chars: np.ndarray) -> np.ndarray:
    """The UTF-8 byte offsets of the character offsets ``chars`` (any order, each at most
    ``len(text)``) of ``text``; a window at a time, so memory stays ~10 bytes per
    character of one window."""
    chars = np.asarray(chars, dtype=np.int64)
    if text.isascii():
        return chars
    order = np.argsort(chars, kind="stable")
    at = chars[order]
    out = np.empty(len(chars), dtype=np.int64)
    base, lo, start = 0, 0, 0
    while lo < len(at):
        window = text[start : start + _WINDOW]
        raw = np.frombuffer(window.encode("utf-8"), dtype=np.uint8)
        # the byte offset of each character of the window (its lead byte), then the end
        lead = np.append(np.flatnonzero((raw & 0xC0) != 0x80), len(raw))
        hi = int(np.searchsorted(at, start + len(window), side="right"))
        out[order[lo:hi]] = base + lead[at[lo:hi] - start]
        if hi < len(at) and not window:
            raise ValueError(f"character offset {int(at[hi])} beyond the text ({len(text)})")
        base, lo, start = base + len(raw), hi, start + len(window)
    return out


def sentence_starts_from_bytes(
    texts: list[str],
    token_bytes: np.ndarray,
    bounds: np.ndarray,
    contexts: list[str | None] | None = None,
) -> np.ndarray:
    """Sentence-start flags for the concatenated tokens of ``texts`` (``bounds``: each
    text's token range) from each token's UTF-8 byte count (a lossless encoding: a text's
    tokens spell exactly its bytes). The texts are scanned as one string, so the cost per
    text is a few list operations, not a numpy call."""
    n, lens = len(token_bytes), np.diff(bounds)
    flags = np.zeros(n, dtype=bool)
    if n == 0:
        return flags
    ctxs = [(c[-CONTEXT_CHARS:] if c else "") for c in (contexts or [None] * len(texts))]
    segments = [c + t for c, t in zip(ctxs, texts, strict=True)] if any(ctxs) else texts
    seg_len = np.fromiter(map(len, segments), dtype=np.int64, count=len(texts))
    seg_start = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(seg_len + 1, out=seg_start[1:])  # + 1: the separator after each text
    ctx_len = np.fromiter(map(len, ctxs), dtype=np.int64, count=len(texts))
    joined = _SEP.join(segments)
    pos = _boundaries(joined)
    # The text each boundary falls in; keep those inside the text proper (not its context,
    # not the separator after it), after its first sentence's first character.
    k = np.searchsorted(seg_start, pos, side="right") - 1
    rel = pos - seg_start[k] - ctx_len[k]
    first = np.fromiter((_LEADING.match(t).end() for t in texts), np.int64, len(texts))
    keep = (rel < seg_len[k] - ctx_len[k]) & np.where(ctx_len[k] > 0, rel >= 0, rel > first[k])
    pos, k = pos[keep], k[keep]
    # Byte offsets in the joined string: of each boundary, and of each text proper.
    text_chars = seg_start[:-1] + ctx_len
    both = byte_offsets(joined, np.concatenate([pos, text_chars]))
    pos_bytes, text_bytes = both[: len(pos)], both[len(pos) :]
    # Each token's end as a byte offset in the joined string; the boundary's token is the
    # first one ending after the boundary (it holds the sentence's first byte).
    ends = np.cumsum(token_bytes)
    before = np.concatenate([[0], ends])[bounds[:-1]]  # bytes of the earlier texts' tokens
    ends += np.repeat(text_bytes - before, lens)
    tok = np.searchsorted(ends, pos_bytes, side="right")
    inside = (tok >= bounds[k]) & (tok < bounds[k + 1])
    flags[tok[inside]] = True
    starts_doc = (lens > 0) & (ctx_len == 0)
    flags[bounds[:-1][starts_doc]] = True
    return flags


def flags_at_chars(offsets: np.ndarray, chars: np.ndarray) -> tuple[np.ndarray, bool]:
    """Per token (character spans ``(n, 2)``, for tokenizers that drop or rewrite
    characters): it holds one of the sentence-start characters ``chars`` (sorted, same
    coordinates), i.e. it is the first token that ends after one. Also returns whether a
    character lies past the last token's end (a dropped character: the flag belongs to the
    next token, in the next piece of the text)."""
    n = len(offsets)
    flags = np.zeros(n, dtype=bool)
    if n == 0:
        return flags, bool(len(chars))
    # sentencepiece gives the byte pieces of a character empty spans but the last, (c, c)
    # ... (c, c + 1): a token starting at c counts as reaching past c. The running maximum
    # keeps the ends in order whatever the spans.
    ends = np.maximum.accumulate(np.maximum(offsets[:, 1], offsets[:, 0] + 1))
    tok = np.searchsorted(ends, chars, side="right")
    flags[tok[tok < n]] = True
    return flags, bool((tok >= n).any())
