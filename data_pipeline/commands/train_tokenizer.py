"""``python -m data_pipeline train-tokenizer``: train a tokenizer on a corpus.

    python -m data_pipeline train-tokenizer --input PATH... --out TOK_DIR --vocab-size N
        [--kind spm-bpe|bytelevel] [--family roberta|bert] [--text-field text]
        [--doc-sep file|blank-line|line] [--encoding-errors replace|skip|error]
        [--max-train-bytes 1G]

Documents come from ``data_pipeline.readers`` (files, directories, globs of .txt, .jsonl,
.jsonl.gz, .txt.gz, .parquet), in order, until ``--max-train-bytes`` of text. TOK_DIR gets
the tokenizer files (see ``data_pipeline.tokenizer``); it must be new, empty, or an
earlier tokenizer directory (which is replaced).
"""

from __future__ import annotations

import time
from pathlib import Path

from data_pipeline.commands.options import add_read_options
from data_pipeline.common import CommandError
from data_pipeline.preprocess.out_dir import parse_size
from data_pipeline.readers import ReaderError, ReadStats, iter_documents
from data_pipeline.tokenizer import FAMILIES, KINDS, Tokenizer, TokenizerError
from data_pipeline.tokenizer.storage import META_NAME


def add_arguments(parser) -> None:

    a = parser.add_argument
    a("--input", nargs="+", required=True, metavar="PATH", help="corpus files, directories, globs")
    a("--out", required=True, metavar="TOK_DIR", help="output tokenizer directory")
    a(
        "--vocab-size",
        type=int,
        required=True,
        metavar="N",
        help="number of token ids, special tokens and 256 byte symbols included",
    )
    a(
        "--kind",
        choices=KINDS,
        default="spm-bpe",
        help="spm-bpe: sentencepiece BPE with byte fallback (default); "
        "bytelevel: GPT-2/RoBERTa byte-level BPE",
    )
    a(
        "--family",
        choices=sorted(FAMILIES),
        default="roberta",
        help="special tokens: roberta <s> </s> <pad> <unk> <mask> (default), "
        "bert [CLS] [SEP] [PAD] [UNK] [MASK]",
    )
    add_read_options(a)
    a(
        "--max-train-bytes",
        type=parse_size,
        default=1 << 30,
        metavar="BYTES",
        help="read at most this much text (UTF-8 bytes; K/M/G suffixes; default 1G)",
    )


def main(args) -> int:

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / META_NAME).is_file():
        # never mix tokenizer files into a directory that holds something else
        raise CommandError(
            f"{out}: directory is not empty and holds no tokenizer; choose a new --out"
        )
    stats = ReadStats()
    docs = iter_documents(
        args.input,
        text_field=args.text_field,
        doc_sep=args.doc_sep,
        encoding_errors=args.encoding_errors,
        stats=stats,
    )
    start = time.monotonic()
    try:
        tok = Tokenizer.train(
            (d.text for d in docs),
            out,
            args.vocab_size,
            kind=args.kind,
            family=args.family,
            max_train_bytes=args.max_train_bytes,
        )
    except (ReaderError, TokenizerError) as e:
        raise CommandError(str(e)) from e
    used = tok.train_stats
    for line in stats.summary_lines():
        print(line)
    if used["truncated"]:
        print(
            f"stopped reading after {used['bytes']:,} bytes (--max-train-bytes); "
            "later documents were not used"
        )
    print(
        f"trained {tok.kind} tokenizer ({tok.family} special tokens), {tok.vocab_size:,} ids, "
        f"on {used['bytes']:,} bytes of text in {time.monotonic() - start:.1f} s"
    )
    if tok.vocab_size < args.vocab_size:
        print(
            f"note: the text supports only {tok.vocab_size:,} ids "
            f"(--vocab-size {args.vocab_size:,}); train on more text for more"
        )
    ids = ", ".join(f"{k}={v}" for k, v in tok.describe()["special_ids"].items())
    print(f"special ids: {ids}")
    print(f"fingerprint: {tok.fingerprint}")
    print(f"wrote {out}")
    return 0
