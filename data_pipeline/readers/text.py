"""Byte-range reading of ``.txt`` and ``.jsonl`` files (plain or gzip).

A segment ``[start, end)`` yields exactly the documents whose *first line starts* in it:
reading aligns ``start`` to the next line start and finishes the last document even when it
runs past ``end``. For blank-line blocks, a block that began before ``start`` is recognised
by looking back at the previous line (blank or not) and left to the segment that owns it.
So any partition of a file into segments yields every document exactly once.

Lines are read with ``readline(chunk)``, so a 100 MB line never becomes one Python object
here: a txt document longer than ``chunk`` is scanned once (to find its end, validate its
UTF-8 and check it is not empty) and then re-read and decoded in bounded pieces.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from data_pipeline.readers.base import (
    Document,
    InputFile,
    ReaderError,
    ReadOptions,
    ReadStats,
    Segment,
)
from data_pipeline.readers.pieces import split_pieces, stream_pieces

BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class _Line:
    start: int  # byte offset of the line
    end: int  # byte offset just past its terminator
    lineno: int  # 1-based
    data: bytes | None  # the whole line incl. terminator; None for a long line not kept
    term: int  # terminator length: 0 (EOF), 1 ("\n") or 2 ("\r\n")
    blank: bool  # only ASCII whitespace


@dataclass
class _RawDoc:
    start: int  # byte offset of the first line
    end: int  # byte offset of the end of its content (final terminator excluded)
    lineno: int
    data: bytes | None  # content, or None when it must be re-read from [start, end)


def _term(tail: bytes) -> int:
    return 2 if tail.endswith(b"\r\n") else 1 if tail.endswith(b"\n") else 0


def _iter_lines(fh, pos: int, lineno: int, chunk: int, keep_long: bool) -> Iterator[_Line]:
    while frag := fh.readline(chunk):
        start = pos
        pos += len(frag)
        if len(frag) < chunk or frag.endswith(b"\n"):  # the common case: one read, one line
            yield _Line(start, pos, lineno, frag, _term(frag), not frag or frag.isspace())
        else:
            ln = _rest_of_line(fh, frag, start, lineno, chunk, keep_long)
            pos = ln.end
            yield ln
        lineno += 1


def _rest_of_line(fh, frag: bytes, start: int, lineno: int, chunk: int, keep: bool) -> _Line:
    """The line that starts with ``frag`` (a full ``chunk`` without its end), read to its end."""
    pos = start + len(frag)
    parts = [frag] if keep else None
    blank, tail = frag.isspace(), frag[-2:]
    while frag := fh.readline(chunk):
        pos += len(frag)
        blank = blank and frag.isspace()
        tail = (tail + frag)[-2:]
        if parts is not None:
            parts.append(frag)
        if len(frag) < chunk or frag.endswith(b"\n"):
            break
    data = b"".join(parts) if parts is not None else None
    return _Line(start, pos, lineno, data, _term(tail), blank)


def _align(fh, start: int, chunk: int) -> int:
    """Offset of the first line that starts at or after ``start``."""
    if start == 0:
        return 0
    fh.seek(start - 1)
    while frag := fh.readline(chunk):
        if frag.endswith(b"\n"):
            break
    return fh.tell()


def _prev_line_blank(fh, pos: int) -> bool:
    """Is the line that ends just before ``pos`` (byte ``pos-1`` is a newline) blank?"""
    i = pos - 1
    while i > 0:
        lo = max(0, i - 4096)
        fh.seek(lo)
        block = fh.read(i - lo)
        k = block.rfind(b"\n")
        tail = block[k + 1 :]
        if tail and not tail.isspace():
            return False
        if k >= 0:
            return True
        i = lo
    return True


def _line_docs(lines: Iterator[_Line], end: int) -> Iterator[_RawDoc]:
    for ln in lines:
        if ln.start >= end:
            return
        if not ln.blank:
            data = ln.data[: len(ln.data) - ln.term] if ln.data is not None else None
            yield _RawDoc(ln.start, ln.end - ln.term, ln.lineno, data)


def _block_docs(
    lines: Iterator[_Line], end: int, skipping: bool, chunk: int, keep: bool
) -> Iterator[_RawDoc]:
    cur: _RawDoc | None = None
    parts: list[bytes] | None = None
    last: _Line | None = None
    for ln in lines:
        if ln.blank:
            skipping = False
            if cur is not None:
                yield _finish_block(cur, parts, last)
                cur = None
            continue
        if ln.start >= end and cur is None:
            return  # no document can start in this segment any more
        if skipping:
            continue  # the rest of a block owned by the previous segment
        if cur is None:
            cur, parts = _RawDoc(ln.start, 0, ln.lineno, None), []
        if parts is not None:
            if ln.data is None or (not keep and ln.end - cur.start > chunk):
                parts = None  # too long to hold: re-read later in pieces
            else:
                parts.append(ln.data)
        last = ln
    if cur is not None:
        yield _finish_block(cur, parts, last)


def _finish_block(cur: _RawDoc, parts: list[bytes] | None, last: _Line) -> _RawDoc:
    cur.end = last.end - last.term
    if parts is not None:
        cur.data = b"".join(parts)[: cur.end - cur.start]
    return cur


def _file_doc(fh, f: InputFile, chunk: int) -> Iterator[_RawDoc]:
    if f.gz or f.size <= chunk:
        data = fh.read()
        yield _RawDoc(0, len(data) - _term(data[-2:]), 1, data[: len(data) - _term(data[-2:])])
    else:
        fh.seek(max(0, f.size - 2))
        yield _RawDoc(0, f.size - _term(fh.read(2)), 1, None)


def _decode_error(where: str, e: UnicodeDecodeError, offset: int) -> ReaderError:
    return ReaderError(
        f"{where}: invalid UTF-8 at byte {offset + e.start} "
        "(use --encoding-errors replace or skip to continue)"
    )


def _decode(data: bytes, where: str, start: int, opts: ReadOptions, stats: ReadStats) -> str | None:
    """Decode one document's bytes under the invalid-UTF-8 policy; None if it is skipped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if opts.encoding_errors == "error":
            raise _decode_error(where, e, start) from None
        if opts.encoding_errors == "skip":
            stats.note("invalid_utf8", where)
            return None
        stats.replaced(where)
        return data.decode("utf-8", "replace")


def _stream_long(fh, raw: _RawDoc, where: str, opts: ReadOptions, stats: ReadStats):
    """Pieces of a document too long to hold: check it in one pass, then decode it in pieces."""
    saved = fh.tell()
    start = raw.start + (3 if raw.start == 0 and _has_bom(fh) else 0)

    def blocks():
        fh.seek(start)
        left = raw.end - start
        while left > 0:
            block = fh.read(min(opts.chunk_bytes, left))
            if not block:
                raise ReaderError(f"{where}: file changed while being read")
            left -= len(block)
            yield block

    # Pass 1: validate and look for content, holding one block at a time.
    strict = codecs.getincrementaldecoder("utf-8")("strict")
    offset, bad, nonblank = start, None, False
    for block in blocks():
        nonblank = nonblank or not block.isspace()
        if bad is None:
            try:
                strict.decode(block)
            except UnicodeDecodeError as e:
                bad = _decode_error(where, e, offset)
        offset += len(block)
    if bad is None:
        try:
            strict.decode(b"", final=True)
        except UnicodeDecodeError as e:
            bad = _decode_error(where, e, offset)
    if bad is not None and opts.encoding_errors == "error":
        raise bad
    if bad is not None and opts.encoding_errors == "skip":
        stats.note("invalid_utf8", where)
    elif not nonblank:
        stats.note("empty", where)
    else:  # pass 2: decode in bounded pieces
        if bad is not None:
            stats.replaced(where)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")

        def chunks():
            for b in blocks():
                yield decoder.decode(b)
            yield decoder.decode(b"", final=True)

        yield from stream_pieces(chunks(), opts.max_piece_chars)
    fh.seek(saved)


def _has_bom(fh) -> bool:
    fh.seek(0)
    return fh.read(3) == BOM


def _emit(doc_id: str, pieces, stats: ReadStats) -> Iterator[Document]:
    prev = None
    for p in pieces:
        if prev is not None:
            yield Document(doc_id, prev, final=False)
        prev = p
    if prev is not None:
        stats.documents += 1
        yield Document(doc_id, prev, final=True)


def _txt_text(
    data: bytes, start: int, where: str, opts: ReadOptions, stats: ReadStats
) -> str | None:
    """The text of a txt document held in memory (``data``, from byte ``start`` of the
    file); None if it is skipped (and counted)."""
    data = data[3:] if start == 0 and data.startswith(BOM) else data
    return _decode(data, where, start, opts, stats)


_scan_json = json.JSONDecoder().scan_once  # json's C scanner, what json.loads calls inside


def _json_object(line: str):
    """``json.loads(line)``, or None when it is not JSON. A line that starts with "{" goes
    straight to the scanner: ``json.loads`` adds ~1 us of Python wrappers per call."""
    try:
        if line.startswith("{"):
            obj, end = _scan_json(line, 0)
            # what json.loads allows after the value: JSON whitespace only
            return obj if end == len(line) or not line[end:].strip(" \t\n\r") else None
        return json.loads(line)
    except (ValueError, StopIteration):
        return None


def _jsonl_text(
    data: bytes, start: int, where: str, opts: ReadOptions, stats: ReadStats
) -> str | None:
    """The text field of one jsonl line (``data``, from byte ``start`` of the file); None if
    it is skipped (and counted)."""
    data = data[3:] if start == 0 and data.startswith(BOM) else data
    line = _decode(data, where, start, opts, stats)
    if line is None:
        return None
    obj = _json_object(line)
    if not isinstance(obj, dict):
        stats.note("invalid_json", where)
        return None
    if opts.text_field not in obj:
        keys = ", ".join(list(obj)[:8])
        raise ReaderError(f"{where}: no field {opts.text_field!r} (keys: {keys}); see --text-field")
    text = obj[opts.text_field]
    if text is None:
        stats.note("null_text", where)
        return None
    if not isinstance(text, str):
        raise ReaderError(
            f"{where}: field {opts.text_field!r} is {type(text).__name__}, not a string"
        )
    if "\\u" in line:  # JSON escapes can encode lone surrogates, which are not valid text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            if opts.encoding_errors == "error":
                raise ReaderError(f"{where}: lone surrogate escape in the text") from None
            if opts.encoding_errors == "skip":
                stats.note("invalid_utf8", where)
                return None
            stats.replaced(where)
            text = _SURROGATE.sub("\ufffd", text)
    return text


def _documents(fh, f: InputFile, raws, opts: ReadOptions, stats: ReadStats) -> Iterator[Document]:
    """Raw documents -> Documents (pieces for long ones); one flat loop, as it runs per document."""
    by_file = f.fmt == "txt" and opts.doc_sep == "file"
    jsonl, limit = f.fmt == "jsonl", opts.max_piece_chars
    for raw in raws:
        where = f.name if by_file else f"{f.name}:{raw.lineno}"
        if raw.data is None:  # too long to hold: checked, then streamed in pieces
            yield from _emit(where, _stream_long(fh, raw, where, opts, stats), stats)
            continue
        text = (_jsonl_text if jsonl else _txt_text)(raw.data, raw.start, where, opts, stats)
        if text is None:
            continue
        if not text or text.isspace():
            stats.note("empty", where)
        elif len(text) <= limit:
            stats.documents += 1
            yield Document(where, text)
        else:
            yield from _emit(where, split_pieces(text, limit), stats)


def _line_documents(
    fh, f: InputFile, pos: int, lineno: int, end: int, opts: ReadOptions, stats: ReadStats
) -> Iterator[Document]:
    """One document per line (jsonl, txt with ``line``): ``_iter_lines``, ``_line_docs`` and
    ``_documents`` fused into one loop with no record per line, as this runs once per
    document of most corpora. A line longer than ``chunk_bytes`` takes the general path."""
    chunk, name, limit = opts.chunk_bytes, f.name, opts.max_piece_chars
    keep = f.gz or f.fmt == "jsonl"  # jsonl needs whole lines; gzip cannot re-read
    text_of = _jsonl_text if f.fmt == "jsonl" else _txt_text
    readline, note = fh.readline, stats.note
    while pos < end and (frag := readline(chunk)):
        start = pos
        pos += len(frag)
        if len(frag) >= chunk and not frag.endswith(b"\n"):
            ln = _rest_of_line(fh, frag, start, lineno, chunk, keep)
            pos, lineno = ln.end, lineno + 1
            yield from _documents(fh, f, _line_docs(iter([ln]), end), opts, stats)
            continue
        lineno += 1
        if frag.isspace():
            continue
        where = f"{name}:{lineno - 1}"
        data = frag[:-2] if frag.endswith(b"\r\n") else frag[:-1] if frag[-1] == 10 else frag
        text = text_of(data, start, where, opts, stats)
        if text is None:
            continue
        if not text or text.isspace():
            note("empty", where)
        elif len(text) <= limit:
            stats.documents += 1
            yield Document(where, text)
        else:
            yield from _emit(where, split_pieces(text, limit), stats)


def read_text_segment(
    f: InputFile, seg: Segment, opts: ReadOptions, stats: ReadStats
) -> Iterator[Document]:
    """The documents of a txt/jsonl file whose first line starts in ``seg``."""
    chunk = opts.chunk_bytes
    try:
        fh = gzip.open(f.path, "rb") if f.gz else open(f.path, "rb", buffering=1 << 20)
    except OSError as e:
        raise ReaderError(f"{f.path}: cannot read ({e.strerror or e})") from e
    try:
        with fh:
            if f.fmt == "txt" and opts.doc_sep == "file":
                raws = _file_doc(fh, f, chunk) if seg.start == 0 else iter(())
            else:
                pos = _align(fh, seg.start, chunk)
                lineno = seg.first + (1 if pos > seg.start else 0)
                skipping = False
                if f.fmt == "txt" and opts.doc_sep == "blank-line" and pos > 0:
                    skipping = not _prev_line_blank(fh, pos)
                fh.seek(pos)
                if f.fmt == "jsonl" or opts.doc_sep == "line":
                    yield from _line_documents(fh, f, pos, lineno, seg.end, opts, stats)
                    return
                keep = f.gz  # gzip cannot re-read
                lines = _iter_lines(fh, pos, lineno, chunk, keep)
                raws = _block_docs(lines, seg.end, skipping, chunk, keep)
            yield from _documents(fh, f, raws, opts, stats)
    except (gzip.BadGzipFile, EOFError) as e:
        raise ReaderError(f"{f.path}: corrupt or truncated gzip file ({e})") from e
    except OSError as e:
        raise ReaderError(f"{f.path}: read error ({e.strerror or e})") from e
