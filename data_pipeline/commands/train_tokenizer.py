"""``python -m data_pipeline train-tokenizer``: train a tokenizer on a corpus.

    python -m data_pipeline train-tokenizer --input PATH... --out TOK_DIR --vocab-size N
        [--family roberta|bert|electra|albert|deberta] [--kind spm-bpe|bytelevel|wordpiece]
        [--text-field text] [--doc-sep file|blank-line|line]
        [--encoding-errors replace|skip|error] [--max-train-bytes 1G]

``--family`` names the model family the tokenizer is for; it chooses the special tokens
(roberta: ``<s> </s> <pad> <unk> <mask>``; the others: ``[CLS] [SEP] [PAD] [UNK] [MASK]``)
and the kind its papers use: roberta byte-level BPE (``bytelevel``), bert and electra
``wordpiece``, albert and deberta sentencepiece (``spm-bpe``). An explicit ``--kind`` wins
(with a one-line note when it is not the family's usual one); ``--kind`` alone keeps the
roberta special tokens, except ``wordpiece``, which gets BERT's. Neither: roberta,
byte-level BPE.

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
from data_pipeline.tokenizer import KINDS, MODEL_FAMILIES, Tokenizer, TokenizerError
from data_pipeline.tokenizer.storage import META_NAME


def add_arguments(parser) -> None:
    """The command's flags."""
    a = parser.add_argument
    a("--input", nargs="+", required=True, metavar="PATH", help="corpus files, directories, globs")
    a("--out", required=True, metavar="TOK_DIR", help="output tokenizer directory")
    a(
        "--vocab-size",
        type=int,
        required=True,
        metavar="N",
        help="number of token ids, special tokens (and the 256 byte symbols of spm-bpe and "
        "bytelevel) included",
    )
    a(
        "--family",
        choices=list(MODEL_FAMILIES),
        default=None,
        help="the model family: its special tokens (roberta <s> </s> <pad> <unk> <mask>; "
        "the others [CLS] [SEP] [PAD] [UNK] [MASK]) and default --kind (roberta bytelevel, "
        "bert/electra wordpiece, albert/deberta spm-bpe); default roberta",
    )
    a(
        "--kind",
        choices=KINDS,
        default=None,
        help="bytelevel: GPT-2/RoBERTa byte-level BPE; wordpiece: BERT-uncased WordPiece "
        "(lossy); spm-bpe: sentencepiece BPE with byte fallback; default: the family's",
    )
    add_read_options(a)
    a(
        "--max-train-bytes",
        type=parse_size,
        default=1 << 30,
        metavar="BYTES",
        help="read at most this much text (UTF-8 bytes; K/M/G suffixes; default 1G)",
    )


def resolve_family_kind(family: str | None, kind: str | None) -> tuple[str, str, str | None]:
    """(family, kind, a note or None) for the flags as given (see the module docstring)."""
    if family is None:
        family = "bert" if kind == "wordpiece" else "roberta"
        return family, kind or MODEL_FAMILIES[family][1], None
    usual = MODEL_FAMILIES[family][1]
    if kind is None or kind == usual:
        return family, usual, None
    note = f"note: {family} models usually use {usual} tokenizers; training {kind} (--kind)"
    return family, kind, note


def main(args) -> int:
    """Train, save and print a summary; 0 on success (``CommandError`` otherwise)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / META_NAME).is_file():
        # never mix tokenizer files into a directory that holds something else
        raise CommandError(
            f"{out}: directory is not empty and holds no tokenizer; choose a new --out"
        )
    family, kind, note = resolve_family_kind(args.family, args.kind)
    if note:
        print(note)
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
            kind=kind,
            family=family,
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
        f"trained {tok.kind} tokenizer for {family} ({tok.family} special tokens), "
        f"{tok.vocab_size:,} ids, on {used['bytes']:,} bytes of text in {time.monotonic() - start:.1f} s"
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
