"""``python -m pretrain train --config CONFIG.toml [key=value ...]``: one rank of training.

Run it directly for a single process, or under a launcher for many: ``deepspeed
launch/pretrain.sh ...`` (what users run), ``torchrun``, ``mpirun`` or ``srun``; the rank,
world size and device come from the environment (see ``pretrain.engine.init_distributed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from data_pipeline.common import CommandError
from data_pipeline.shards import Manifest, ShardFormatError
from pretrain import engine
from pretrain.config import ConfigError, RunConfig, load_config, to_toml
from pretrain.engine.ds_config import build_ds_config, resolve_dtype
from pretrain.models import arch_module
from pretrain.train import train
from pretrain.train.build import build_model, check_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="CONFIG.toml", help="run config (TOML)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, values as TOML literals (optimizer.lr=6e-4)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and derived quantities, then exit",
    )
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|PATH",
        help="auto: continue from RUN_DIR's newest complete checkpoint if any "
        "(default); never: start fresh; PATH: a checkpoint or run directory",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --resume never: delete RUN_DIR's checkpoints, metrics, "
        "tensorboard and hf export first",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="--dry-run: derive accumulation for this many ranks",
    )
    # Passed by the DeepSpeed launcher to every rank (launch/pretrain.sh strips it already).
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )


def dry_run(cfg: RunConfig, world_size: int | None) -> int:
    """Print the resolved config, accumulation, DeepSpeed config and parameter counts."""

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tok = Manifest.load(cfg.data.shard_dir).tokenizer
        vocab_note = f"vocab_size {tok.get('vocab_size')} from {cfg.data.shard_dir}"
    except ShardFormatError:
        tok, vocab_note = {}, "shards not found: vocab_size from the preset"
    try:
        accum = cfg.batch.grad_accum(world)
        dtype = resolve_dtype(cfg.precision.dtype, device)
        ds = build_ds_config(cfg, world, dtype)
        note = check_tokenizer(cfg, tok)
        with torch.device("meta"):  # parameter counts without allocating the weights
            model = build_model(dataclasses.replace(cfg, init_from=None), tok)
    except (ConfigError, ValueError) as e:
        raise CommandError(str(e)) from e
    counts = arch_module(cfg.model.arch).param_counts(model)
    print("# resolved config\n" + to_toml(cfg))
    print("# derived")
    print(f"world_size = {world}  ({device.type})")
    print(
        f"gradient accumulation = {accum}  "
        f"({cfg.batch.global_batch_size} = {world} x {cfg.batch.micro_batch_size} x {accum})"
    )
    print(f"tokens per step = {cfg.batch.global_batch_size * cfg.data.seq_len:,}")
    print(f"precision = {dtype}")
    print(f"parameters = {counts}  ({vocab_note})")
    if note:
        print(note)
    if (d := cfg.distill).enabled:  # the teacher itself is loaded (and checked) by training
        print(
            f"distillation = recipe {d.recipe}, weights {d.weights()}, temperature "
            f"{d.resolved_temperature()}, student_init {d.resolved_student_init()}, "
            f"teacher {d.teacher}{'' if Path(d.teacher).is_dir() else ' (not found yet)'}"
        )
    print("deepspeed config = " + json.dumps(ds, indent=1, sort_keys=True))
    return 0


def main(args) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise CommandError(str(e)) from e
    if args.dry_run:
        return dry_run(cfg, args.world_size)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if args.resume not in ("auto", "never") and not Path(args.resume).exists():
        raise CommandError(f"--resume {args.resume}: no such checkpoint or run directory")

    try:
        session = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except engine.AgreedError as e:
        # Every rank raised it together: rank 0 says it once; the barrier keeps the others
        # (whose exit makes a launcher stop the job) until it has.
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        engine.shutdown()
        return 2
    except dist.DistError as e:  # a peer died or hung: its own error (if any) says why
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CommandError(
            f"rank {dist.get_rank()}: lost contact with another rank (it stopped or the "
            f"network failed): {first}"
        ) from None
    # Only after success: a barrier while another rank is failing would wait forever.
    engine.shutdown()
    if session.dist.rank == 0:
        print(f"done: step {session.state.step}; run directory {cfg.run_dir}", flush=True)
    return 0
