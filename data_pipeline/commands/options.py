"""Flags more than one command takes, defined once."""

from __future__ import annotations

from data_pipeline.readers import DOC_SEPS, ENCODING_ERRORS, ReadOptions


def add_read_options(add) -> None:
    """How input files become documents (``--text-field``, ``--doc-sep``,
    ``--encoding-errors``): ``train-tokenizer`` and ``preprocess`` read input alike."""
    add(
        "--text-field", default="text", help="jsonl key / parquet column of the text (default text)"
    )
    add("--doc-sep", choices=DOC_SEPS, default="file", help="txt documents: per file, block, line")
    add(
        "--encoding-errors",
        choices=ENCODING_ERRORS,
        default="replace",
        help="invalid UTF-8: replace (counted), skip the document (counted), or error",
    )


def read_options(args) -> ReadOptions:
    """The ``ReadOptions`` of those flags (``ReaderError`` if they are inconsistent)."""
    return ReadOptions(args.text_field, args.doc_sep, args.encoding_errors)
