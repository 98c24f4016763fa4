"""Corpus readers: files, directories and globs of txt / jsonl[.gz] / parquet -> ``Document``s.

``iter_documents(paths)`` is the whole-corpus entry point (used by ``train-tokenizer``);
preprocessing reads the same files in byte-range work units through ``read_segment``
(see ``data_pipeline.preprocess.partition``), and both yield exactly the same documents.

Formats, chosen by file name (case-insensitive):

- ``.txt`` / ``.txt.gz``: one document per file (``doc_sep="file"``), per block of
  non-blank lines (``"blank-line"``) or per non-blank line (``"line"``). A document's
  final line terminator is not part of it; whitespace-only lines are separators.
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, text in ``text_field``.
- ``.parquet``: the ``text_field`` column, read a record batch at a time.

Document ids are ``<name>:<line>`` (1-based first line; txt blocks/lines and jsonl),
``<name>:row<N>`` (parquet, 0-based row) or ``<name>`` (txt, one document per file), where
``<name>`` is the file's path relative to the *parent* of the directory named on the
command line (so it starts with that directory's name, and does not depend on the cwd),
its base name when the file itself was named, and for a glob its path relative to the
parent of the glob's leading fixed directory. Two files with the same name are an error.

Very long documents (over ``ReadOptions.max_piece_chars``) come as consecutive pieces with
the same id, all but the last with ``final=False``; plain ``.txt`` input streams them with
bounded memory (jsonl, gzip and parquet hold one document in memory, never a whole file).

Modules: ``base`` (documents, options, statistics), ``inputs`` (finding files, reading a
segment or everything), ``text`` (txt/jsonl by lines, streamed), ``parquet``, ``pieces``
(cutting very long documents where the tokenizer allows).
"""

from data_pipeline.readers.base import (
    DOC_SEPS,
    ENCODING_ERRORS,
    Document,
    InputFile,
    ReaderError,
    ReadOptions,
    ReadStats,
    Segment,
)
from data_pipeline.readers.inputs import (
    iter_documents,
    list_inputs,
    read_segment,
    whole_file_segment,
)

__all__ = [
    "DOC_SEPS",
    "ENCODING_ERRORS",
    "Document",
    "InputFile",
    "ReadOptions",
    "ReadStats",
    "ReaderError",
    "Segment",
    "iter_documents",
    "list_inputs",
    "read_segment",
    "whole_file_segment",
]
