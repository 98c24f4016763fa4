"""``python -m data_pipeline preprocess``: corpus -> webdataset shards + ``manifest.json``
(flags and the summary; the work is ``data_pipeline.preprocess.run``)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.commands.options import add_read_options, read_options
from data_pipeline.common import CommandError
from data_pipeline.preprocess import PreprocessConfig, run
from data_pipeline.preprocess.mpi import get_comm
from data_pipeline.preprocess.out_dir import parse_size
from data_pipeline.readers import ReaderError, ReadStats


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--input", nargs="+", required=True, metavar="PATH", help="corpus files, directories, globs")
    a("--valid-input", nargs="+", default=[], metavar="PATH", help="files for the valid split")
    a(
        "--valid-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of --input documents sent to valid by a stable hash of their id (default 0)",
    )
    a("--tokenizer", required=True, metavar="TOK_DIR", help="tokenizer directory")
    a("--out", required=True, metavar="SHARD_DIR", help="output shard directory")
    a(
        "--shard-size",
        type=parse_size,
        default=128 << 20,
        metavar="BYTES",
        help="close a shard at this size; K/M/G suffixes (default 128M)",
    )
    a(
        "--unit-bytes",
        type=parse_size,
        default=64 << 20,
        metavar="BYTES",
        help="input bytes per work unit (defines the shards, not the ranks; default 64M)",
    )
    add_read_options(a)
    a("--segment-zh", action="store_true", help="jieba word segmentation for Chinese word starts")
    a("--workers", type=int, default=1, help="local worker processes (per rank under mpirun)")


def main(args) -> int:
    try:
        read = read_options(args)
    except ReaderError as e:
        raise CommandError(str(e)) from e
    cfg = PreprocessConfig(
        inputs=args.input,
        tokenizer=args.tokenizer,
        out=args.out,
        valid_inputs=args.valid_input,
        valid_fraction=args.valid_fraction,
        shard_bytes=args.shard_size,
        unit_bytes=args.unit_bytes,
        read=read,
        segment_zh=args.segment_zh,
        workers=args.workers,
    )
    comm = get_comm()
    manifest = run(cfg, comm)
    if manifest is None:
        return 0
    s = manifest["stats"]
    for split in ("train", "valid"):
        t = s["splits"][split]
        print(f"{split}: {t['documents']} documents, {t['tokens']} tokens, {t['shards']} shards")
    print("\n".join(ReadStats.from_dict(s["read"]).summary_lines()))
    secs, cpu = manifest["seconds"], manifest["cpu_seconds"]
    rate, per_cpu = s["tokens"] / max(secs, 1e-9), s["tokens"] / max(cpu, 1e-9)
    print(
        f"{Path(cfg.out) / 'manifest.json'}: {s['units']} units in {secs:.1f} s "
        f"({rate:,.0f} tokens/s on {comm.size} rank(s) x {cfg.workers} worker(s); "
        f"{cpu:.1f} CPU-s, {per_cpu:,.0f} tokens per CPU-s)"
    )
    return 0
