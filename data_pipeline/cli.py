"""``python -m data_pipeline COMMAND ...``: the data commands.

Each command lives in its own module, which defines ``add_arguments(parser)`` and
``main(args) -> int``; this file only wires names to modules (imported lazily, so
``--help`` is fast and one command's dependencies never slow another). ``dispatch``
is shared with ``python -m pretrain``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "sample-corpus": (
        "data_pipeline.sample_corpus",
        "write the built-in sample corpus (no download)",
    ),
    "train-tokenizer": (
        "data_pipeline.tokenizer_cli",
        "train a tokenizer (sentencepiece BPE with byte fallback, or byte-level BPE)",
    ),
    "preprocess": ("data_pipeline.preprocess", "tokenize a corpus into webdataset shards"),
    "inspect": ("data_pipeline.inspect", "totals, per-shard counts, checksums, decoded samples"),
    "sample-batches": (
        "data_pipeline.sample_batches",
        "dump masked batches exactly as training sees them",
    ),
}


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def dispatch(prog: str, description: str, commands: dict, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:  # only import the module of the command being run
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(commands[args.command][0])
    try:
        return int(module.main(args) or 0)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return dispatch(
        "python -m data_pipeline", "Corpus -> tokenizer -> shards -> batches.", COMMANDS, argv
    )
