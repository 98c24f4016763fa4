"""``python -m data_pipeline sample-batches SHARD_DIR --out FILE.npz``: batches as training sees them.

The batches come from the training loader itself (``PretrainLoader``; ``--split valid`` uses
``validation_loader``, with its fixed masks), so what is dumped and measured here is exactly
what a run with the same seq_len / packing / masking / seed gets for its first global batches
on one rank. With ``--packing pairs`` the file also holds ``token_type_ids`` and
``sentence_labels`` and the label balance is printed; with ``--boundaries`` it holds
``span_left`` / ``span_right``. Prints masking statistics (rate, mask / random / unchanged split), packing
efficiency and one decoded row when a tokenizer is available (default: SHARD_DIR/tokenizer,
which ``preprocess`` writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.common import CommandError
from data_pipeline.loader import LoaderConfig, PretrainLoader, validation_loader
from data_pipeline.masking import MaskingConfig, masking_stats
from data_pipeline.shards import Manifest, ShardFormatError
from data_pipeline.tokenizer import Tokenizer

_SHOW_CHARS = 600  # of a decoded row: enough to see masks in context without flooding


def add_arguments(parser) -> None:
    parser.add_argument("shard_dir", metavar="SHARD_DIR", help="directory made by preprocess")
    parser.add_argument(
        "--out", required=True, metavar="FILE.npz", help="where to write the batches"
    )
    parser.add_argument(
        "--tokenizer",
        metavar="TOK_DIR",
        help="tokenizer for the decoded example (default: SHARD_DIR/tokenizer)",
    )
    parser.add_argument("--seq-len", type=int, default=512, metavar="L", help="tokens per row")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="rows per batch")
    parser.add_argument("--num-batches", type=int, default=4, metavar="N", help="batches to dump")
    parser.add_argument("--seed", type=int, default=0, help="order and masking seed")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        metavar="W",
        help="DataLoader workers (the batches are the same for any value)",
    )
    parser.add_argument("--masking", choices=("mlm", "wwm", "span"), default="mlm")
    parser.add_argument("--mask-prob", type=float, default=0.15, metavar="P")
    parser.add_argument(
        "--boundaries",
        action="store_true",
        help="also write span_left / span_right (SpanBERT's span boundaries)",
    )
    parser.add_argument(
        "--static-copies",
        type=int,
        default=0,
        metavar="N",
        help="static masking: masks repeat every N epochs (0: dynamic)",
    )
    parser.add_argument("--packing", choices=("full", "doc", "pairs"), default="full")
    parser.add_argument(
        "--pair-task",
        choices=("nsp", "sop"),
        default="nsp",
        help="with --packing pairs: BERT's next-sentence or ALBERT's sentence-order pairs",
    )
    parser.add_argument("--split", choices=("train", "valid"), default="train")


def _batches(args):

    if min(args.batch_size, args.num_batches) < 1:
        raise CommandError("--batch-size and --num-batches must be >= 1")
    try:
        cfg = LoaderConfig(
            args.shard_dir,
            split=args.split,
            seq_len=args.seq_len,
            packing=args.packing,
            pair_task=args.pair_task,
            seed=args.seed,
            num_workers=args.num_workers,
        )
        masking = MaskingConfig(
            kind=args.masking,
            mask_prob=args.mask_prob,
            boundaries=args.boundaries,
            static_copies=args.static_copies,
        )
        if args.split == "valid":
            loader = validation_loader(cfg, masking, args.batch_size, 0, 1, args.num_batches)
        else:
            loader = PretrainLoader(cfg, masking, args.batch_size, args.batch_size)
        batches = [b for _, b in zip(range(args.num_batches), loader, strict=False)]
    except (ShardFormatError, ValueError) as e:  # includes ShardCheckError
        raise CommandError(str(e)) from e
    stats = loader.stats()
    loader.close()
    return batches, stats


def _tokenizer(args, manifest_fp):

    path = Path(args.tokenizer) if args.tokenizer else Path(args.shard_dir) / "tokenizer"
    if not args.tokenizer and not path.is_dir():
        return None, "no SHARD_DIR/tokenizer (pass --tokenizer TOK_DIR): no decoded example"
    try:
        tok = Tokenizer.load(path)
    except Exception as e:  # any unloadable directory: one line, from the tokenizer's message
        raise CommandError(f"{path}: cannot load tokenizer ({e})") from e
    if manifest_fp and getattr(tok, "fingerprint", manifest_fp) != manifest_fp:
        return tok, f"warning: {path} is not the tokenizer these shards were made with"
    return tok, None


def main(args) -> int:

    batches, stats = _batches(args)
    manifest_tok = Manifest.load(args.shard_dir).tokenizer
    tok, note = _tokenizer(args, manifest_tok.get("fingerprint"))  # fail before writing
    special = manifest_tok["special_ids"]
    if not batches:
        raise CommandError(f"{args.shard_dir}: the {args.split} split produced no batches")
    arrays = {
        k: np.stack([b[k].numpy() for b in batches])
        for k in ("input_ids", "labels", "attention_mask", "segment_ids", "sample_ids")
    }
    # Sentence pairs only; span boundaries only with --boundaries.
    for k in ("token_type_ids", "sentence_labels", "span_left", "span_right"):
        if k in batches[0]:
            arrays[k] = np.stack([b[k].numpy() for b in batches])
    arrays["epoch"] = np.array([int(b["epoch"]) for b in batches], dtype=np.int64)
    labels, ids = arrays["labels"], arrays["input_ids"]
    arrays["original_ids"] = np.where(labels != -100, labels, ids)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)

    orig = arrays["original_ids"]
    maskable = (arrays["attention_mask"] == 1) & ~np.isin(orig, list(special.values()))
    m = masking_stats(orig, ids, labels, maskable, special["mask"])
    n, b, seq = ids.shape
    print(
        f"wrote {out}: {n} batches x {b} rows x {seq} tokens "
        f"({args.split}, packing={args.packing}, masking={args.masking}, seed={args.seed})"
    )
    print(f"rows: {stats['rows']} real, {stats['empty_rows']} empty (epoch-end filler)")
    if "sentence_labels" in arrays:
        sl = arrays["sentence_labels"]
        pos, neg = int((sl == 0).sum()), int((sl == 1).sum())
        what = "random B" if args.pair_task == "nsp" else "swapped"
        print(
            f"pairs ({args.pair_task}): {pos} with label 0 (B follows A), {neg} with label 1 "
            f"({what}): share of label 1 {neg / max(pos + neg, 1):.4f}"
        )
    print(
        f"masking: {m['selected']} of {m['tokens']} maskable tokens selected "
        f"(rate {m['rate']:.4f}, asked {args.mask_prob}); of them mask {m['mask_frac']:.3f}, "
        f"random {m['random_frac']:.3f}, unchanged {m['unchanged_frac']:.3f}"
    )
    print(
        f"packing: efficiency {stats['packing_efficiency']:.4f} (attended / slots), "
        f"document tokens {stats['content_fraction']:.4f} of slots"
    )
    print(
        f"reads: {stats['docs_read']} documents, {stats['tokens_read']} tokens; "
        f"samples lost to damaged shards: {stats['samples_lost']}"
    )
    if note:
        print(note)
    if tok is not None:
        row = int(np.flatnonzero(arrays["sample_ids"][0] >= 0)[0])
        keep = arrays["attention_mask"][0, row] == 1
        for name, row_ids in (("masked", ids[0, row][keep]), ("original", orig[0, row][keep])):
            text = tok.decode(row_ids)
            cut = "..." if len(text) > _SHOW_CHARS else ""
            print(
                f"example row {int(arrays['sample_ids'][0, row])} ({name}): "
                f"{text[:_SHOW_CHARS]!r}{cut}"
            )
    return 0
