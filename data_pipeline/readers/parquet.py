"""Parquet input: the text column, a record batch at a time (never a whole file in memory)."""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.readers.base import (
    Document,
    InputFile,
    ReaderError,
    ReadOptions,
    ReadStats,
    Segment,
)
from data_pipeline.readers.pieces import split_pieces

BATCH_ROWS = 256  # rows per record batch: bounded memory even with long documents


def _open(path: str):
    import pyarrow.lib
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pyarrow.lib.ArrowException) as e:
        raise ReaderError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from e


def row_groups(path: str) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes) of every row group, from the file footer only."""
    md = _open(path).metadata
    return [
        (md.row_group(i).num_rows, md.row_group(i).total_byte_size)
        for i in range(md.num_row_groups)
    ]


def num_row_groups(path: str) -> int:
    return _open(path).metadata.num_row_groups


def _column_kind(pf, path: str, field: str) -> str:
    import pyarrow as pa

    schema = pf.schema_arrow
    if field not in schema.names:
        cols = ", ".join(schema.names[:8])
        raise ReaderError(f"{path}: no column {field!r} (columns: {cols}); see --text-field")
    t = schema.field(field).type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "str"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    raise ReaderError(f"{path}: column {field!r} has type {t}, not a string column")


def _text(v, kind: str, where: str, opts: ReadOptions, stats: ReadStats) -> str | None:
    if kind == "str":
        return v
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError as e:
        if opts.encoding_errors == "error":
            raise ReaderError(
                f"{where}: invalid UTF-8 at byte {e.start} "
                "(use --encoding-errors replace or skip to continue)"
            ) from None
        if opts.encoding_errors == "skip":
            stats.note("invalid_utf8", where)
            return None
        stats.replaced(where)
        return v.decode("utf-8", "replace")


def read_parquet(
    f: InputFile, seg: Segment, opts: ReadOptions, stats: ReadStats
) -> Iterator[Document]:
    """Documents of row groups ``[seg.start, seg.end)``; ids ``<name>:row<N>`` (0-based)."""
    import pyarrow.lib

    pf = _open(f.path)
    kind = _column_kind(pf, f.path, opts.text_field)
    row = seg.first
    if seg.end <= seg.start:
        return
    batches = pf.iter_batches(
        batch_size=BATCH_ROWS,
        row_groups=list(range(seg.start, seg.end)),
        columns=[opts.text_field],
        use_threads=False,
    )
    try:
        for batch in batches:
            for v in batch.column(0).to_pylist():
                where = f"{f.name}:row{row}"
                row += 1
                if v is None:
                    stats.note("null_text", where)
                    continue
                text = _text(v, kind, where, opts, stats)
                if text is None:
                    continue
                if not text or text.isspace():
                    stats.note("empty", where)
                    continue
                pieces = split_pieces(text, opts.max_piece_chars)
                stats.documents += 1
                for k, p in enumerate(pieces):
                    yield Document(where, p, final=k == len(pieces) - 1)
    except (OSError, pyarrow.lib.ArrowException) as e:
        raise ReaderError(f"{f.path}: parquet read error near row {row} ({e})") from e
