"""Cutting very long documents into pieces that a tokenizer can take one at a time.

Tokenizers keep per-token bookkeeping (offsets, strings) for a whole input, so a 100 MB
document encoded in one call costs gigabytes. Readers therefore deliver documents longer
than ``max_chars`` as consecutive pieces. The cuts are the tokenizer's own safe cuts
(``tokenizer_words.cut_text``: a single space or newline between non-whitespace), where
encoding piece by piece gives exactly the ids of the whole text; only a window without any
such position is cut hard. Documents of at most ``max_chars`` characters are never cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data_pipeline.tokenizer.words import cut_text


def split_pieces(text: str, max_chars: int) -> list[str]:
    """``text`` as consecutive pieces of at most ``max_chars`` characters (joined: ``text``)."""
    return cut_text(text, max_chars)


def stream_pieces(chunks: Iterable[str], max_chars: int) -> Iterator[str]:
    """``split_pieces`` over the concatenation of ``chunks``, holding about two pieces.

    A cut is only taken once the text after it is in the buffer, so it sees the same
    context as in the whole text and the pieces equal ``split_pieces(''.join(chunks))``
    except where a window offered no safe cut.
    """
    buf = ""
    for c in chunks:
        buf += c
        if len(buf) > 2 * max_chars:
            pieces = cut_text(buf, max_chars)
            yield from pieces[:-1]
            buf = pieces[-1]
    if buf:
        yield from cut_text(buf, max_chars)
