"""``python -m data_pipeline COMMAND ...``: the data commands.

Each command is a module of ``data_pipeline.commands`` with ``add_arguments(parser)`` and
``main(args) -> int``; this table only wires names to modules (``data_pipeline.common.cli``
imports the one being run).
"""

from __future__ import annotations

from data_pipeline.common import dispatch

COMMANDS = {
    "sample-corpus": (
        "data_pipeline.commands.sample_corpus",
        "write the built-in sample corpus (no download)",
    ),
    "train-tokenizer": (
        "data_pipeline.commands.train_tokenizer",
        "train a tokenizer per model family (byte-level BPE, WordPiece or sentencepiece BPE)",
    ),
    "preprocess": ("data_pipeline.commands.preprocess", "tokenize a corpus into webdataset shards"),
    "inspect": (
        "data_pipeline.commands.inspect_shards",
        "totals, per-shard counts, checksums, decoded samples",
    ),
    "sample-batches": (
        "data_pipeline.commands.sample_batches",
        "dump masked batches exactly as training sees them",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(
        "python -m data_pipeline", "Corpus -> tokenizer -> shards -> batches.", COMMANDS, argv
    )
