"""Word starts for whole-word masking, and cutting huge texts for encoding.

A token *starts a word* (fairseq's rule for byte-level BPE, extended to every tokenizer) iff
it is the first token of the text, or a special token, or its text begins with whitespace,
or the previous token's text ends with whitespace. Byte-fallback / byte-level pieces of one
multi-byte character: only the first one can start a word (a continuation byte never does).
"Whitespace" is the Unicode White_Space property, the set HF ``tokenizers`` uses for
``lstrip`` (Python's ``str.isspace`` would add the ASCII separators U+001C..U+001F).

Everything here works on whole id arrays with per-vocabulary-id tables, so the cost per
token is a few numpy gathers: no Python loop over tokens.

Chinese (``segment_zh``): each maximal run of Han characters is segmented with jieba; a
token whose first character is a jieba word start also starts a word, as does the first
character after a Han run (a script change is a word boundary).
"""

from __future__ import annotations

import logging
import re
import threading

import numpy as np

WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS_SET = frozenset(WHITESPACE)
_WS_CODES = np.array(sorted(ord(c) for c in WHITESPACE), dtype=np.uint32)
HAN_RUN = re.compile(
    "[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ebef"
    "\U00030000-\U0003134f]+"
)
# A safe cut: one space or newline with non-whitespace on both sides. No piece of a
# sentencepiece model trained with split_by_whitespace, and no GPT-2 pre-token, spans such a
# position, so encoding the two sides separately gives exactly the ids of the whole text.
_SAFE_CUT = re.compile(f"(?<=[^{WHITESPACE}])[ \n](?=[^{WHITESPACE}])")


def surface_tables(surfaces: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per id: (text begins with whitespace, text ends with whitespace, byte length).

    A surface that begins with a UTF-8 continuation byte, or ends inside a character,
    decodes to U+FFFD at that end, which is not whitespace: exactly the byte-piece rule.
    """
    n = len(surfaces)
    begins, ends = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    nbytes = np.zeros(n, dtype=np.int64)
    for i, b in enumerate(surfaces):
        if not b:
            continue
        s = b.decode("utf-8", "replace")
        begins[i], ends[i], nbytes[i] = s[0] in _WS_SET, s[-1] in _WS_SET, len(b)
    return begins, ends, nbytes


def starts_from_tables(
    ids: np.ndarray,
    doc_starts: np.ndarray,
    begins: np.ndarray,
    ends: np.ndarray,
    special: np.ndarray,
) -> np.ndarray:
    """Word-start flags for the concatenated ``ids`` of several texts.

    ``doc_starts`` holds the position of each text's first token (the rule's "first token").
    """
    starts = begins[ids]
    if len(ids) > 1:
        starts[1:] |= ends[ids[:-1]]
    starts |= special[ids]
    starts[doc_starts[doc_starts < len(ids)]] = True
    return starts


def first_of_char(offsets: np.ndarray) -> np.ndarray:
    """Per token (character offsets ``(n, 2)``): it begins a character, i.e. it is not a
    later byte piece of a character split over several tokens. Libraries give such pieces
    the same span (sentencepiece) or a span starting inside the previous token's (HF)."""
    first = np.ones(len(offsets), dtype=bool)
    if len(offsets) > 1:
        first[1:] = (offsets[1:, 0] != offsets[:-1, 0]) & (offsets[:-1, 1] <= offsets[1:, 0])
    return first


def starts_from_offsets(
    text: str, offsets: np.ndarray, special: np.ndarray, first_is_start: bool = True
) -> np.ndarray:
    """Word-start flags from each token's character span (tokenizers that drop or rewrite
    whitespace, e.g. WordPiece): the token's first character is whitespace or follows
    whitespace, and the token begins that character.
    """
    char_starts = offsets[:, 0] if len(offsets) else np.zeros(0, np.int64)
    n = len(char_starts)
    if n == 0:
        return np.zeros(0, dtype=bool)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    is_ws = np.isin(codes, _WS_CODES)
    cs = np.clip(char_starts, 0, max(len(codes) - 1, 0))
    here = is_ws[cs] if len(codes) else np.zeros(n, dtype=bool)
    before = np.where(cs > 0, is_ws[np.maximum(cs - 1, 0)], False) if len(codes) else here
    starts = (here | before) & first_of_char(offsets)
    starts |= special
    starts[0] |= first_is_start
    return starts


_jieba_lock = threading.Lock()
_jieba = None


def _segmenter():
    """A private jieba tokenizer, initialised on first use without its start-up chatter."""
    global _jieba
    with _jieba_lock:
        if _jieba is None:
            import jieba

            logging.getLogger("jieba").setLevel(logging.WARNING)
            tok = jieba.Tokenizer()
            tok.initialize()
            _jieba = tok
        return _jieba


def zh_word_start_chars(text: str) -> np.ndarray:
    """Sorted character offsets that start a word by Chinese segmentation (may be empty)."""
    out: list[int] = []
    runs = list(HAN_RUN.finditer(text))
    if not runs:
        return np.zeros(0, dtype=np.int64)
    seg = _segmenter()
    for m in runs:
        base = m.start()
        out.extend(base + start for _, start, _ in seg.tokenize(m.group(), HMM=True))
        if m.end() < len(text):
            out.append(m.end())
    return np.asarray(out, dtype=np.int64)


def zh_starts_from_bytes(text: str, byte_starts: np.ndarray) -> np.ndarray:
    """Flags for tokens whose start (a byte offset into ``text``'s UTF-8) is a jieba word
    start. A token starting inside a character (a continuation byte piece) never is."""
    zh = zh_word_start_chars(text)
    if len(zh) == 0 or len(byte_starts) == 0:
        return np.zeros(len(byte_starts), dtype=bool)
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    lead = (raw & 0xC0) != 0x80
    char_of_byte = np.cumsum(lead) - 1
    inside = byte_starts < len(raw)
    b = np.where(inside, byte_starts, 0)
    return inside & lead[b] & np.isin(char_of_byte[b], zh)


def zh_starts_from_chars(text: str, offsets: np.ndarray) -> np.ndarray:
    """Like ``zh_starts_from_bytes`` for character spans ``(n, 2)``; of the byte pieces
    of one character only the first carries the flag."""
    zh = zh_word_start_chars(text)
    if len(zh) == 0 or len(offsets) == 0:
        return np.zeros(len(offsets), dtype=bool)
    return first_of_char(offsets) & np.isin(offsets[:, 0], zh)


def cut_text(text: str, max_chars: int) -> list[str]:
    """``text`` as consecutive pieces of at most ``max_chars`` characters (joined: ``text``).

    Cuts go at the last safe position (see ``_SAFE_CUT``) in the second half of each
    window, where encoding piece by piece gives the same ids as the whole text for the
    tokenizers this project trains. Only a window without any such position (e.g. a
    megabyte of Chinese with no space or newline) is cut hard, at a character boundary:
    there the ids near the cut may differ, but decoding still gives back the exact text.
    """
    if len(text) <= max_chars:
        return [text]
    pieces, i = [], 0
    while len(text) - i > max_chars:
        hi = i + max_chars
        cut = _last_safe_cut(text, i + max_chars // 2, hi)
        cut = cut if cut is not None and cut > i else hi
        pieces.append(text[i:cut])
        i = cut
    pieces.append(text[i:])
    return pieces


def _last_safe_cut(text: str, lo: int, hi: int) -> int | None:
    """The last safe cut position in ``[lo, hi)``, looking at a short tail first (cheap)."""
    # endpos hides text[hi:], so a cut at hi - 1 is checked separately with full context.
    if _SAFE_CUT.match(text, hi - 1):
        return hi - 1
    start = hi
    for span in (4096, hi - lo):
        start = max(lo, hi - span)
        found = None
        for m in _SAFE_CUT.finditer(text, start, hi):
            found = m.start()
        if found is not None:
            return found
        if start == lo:
            break
    return None
