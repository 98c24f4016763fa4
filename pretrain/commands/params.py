"""``python -m pretrain params``: parameter counts of size presets.

Counts come from the architecture's own ``Model(Config(**preset))`` and ``param_counts``
(tied weights counted once), built on the ``meta`` device so that even large presets take no
memory. Each architecture defines its keys (see its ``param_counts``): ``total`` is every
parameter of the pretraining model; for RoBERTa and ELECTRA ``embedding`` is the token /
position / type embeddings with their LayerNorm and ``backbone = total - embedding``; RTD
models also show each network as its HF class counts it (both with the shared embeddings).
Presets from a paper (``PAPER_PARAMS`` of the module) also show the paper's rounded figure.
"""

from __future__ import annotations

import json
import sys

import torch

from data_pipeline.common import CommandError
from pretrain.models import ARCHITECTURES, arch_module


def preset_counts(arch: str, preset_kwargs: dict, vocab_size: int | None = None) -> dict[str, int]:
    """``param_counts`` of ``arch``'s model built from ``preset_kwargs`` (+ vocab_size)."""
    mod = arch_module(arch)
    kwargs = dict(preset_kwargs)
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    config = mod.Config(**kwargs)
    with torch.device("meta"):
        model = mod.Model(config)
    return {"vocab_size": config.vocab_size, **mod.param_counts(model)}


def available_presets() -> tuple[dict[str, tuple[str, dict]], list[str]]:
    """({preset: (arch, kwargs)}, [architectures whose module cannot be imported])."""
    presets, missing = {}, []
    for arch in ARCHITECTURES:
        try:
            mod = arch_module(arch)
        except ModuleNotFoundError:
            missing.append(arch)
            continue
        for name, kwargs in mod.PRESETS.items():
            presets[name] = (arch, dict(kwargs))
    return presets, missing


def _fmt(n: int) -> str:
    return f"{n:>13,} ({n / 1e6:7.2f} M)"


def add_arguments(parser) -> None:
    parser.add_argument("--preset", metavar="NAME", help="one preset (default: all presets)")
    parser.add_argument(
        "--vocab-size",
        type=int,
        metavar="V",
        help="vocabulary size of the tokenizer in use (default: the preset's)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args) -> int:
    if args.vocab_size is not None and args.vocab_size < 1:
        raise CommandError("--vocab-size must be >= 1")
    presets, missing = available_presets()
    for arch in missing:
        print(
            f"note: architecture {arch!r} is not available ({ARCHITECTURES[arch]} missing)",
            file=sys.stderr,
        )
    if args.preset is not None and args.preset not in presets:
        raise CommandError(
            f"unknown preset {args.preset!r}; known presets: {', '.join(sorted(presets))}"
        )
    names = [args.preset] if args.preset else list(presets)
    rows = {}
    for name in names:
        arch, kwargs = presets[name]
        try:
            rows[name] = {"arch": arch, **preset_counts(arch, kwargs, args.vocab_size)}
            paper = getattr(arch_module(arch), "PAPER_PARAMS", {}).get(name)
            if paper:  # the paper's rounded figure, beside our exact count
                rows[name]["paper"] = paper
        except (TypeError, ValueError) as e:
            raise CommandError(f"preset {name}: {e}") from e
    if args.json:
        print(json.dumps(rows if args.preset is None else rows[args.preset], indent=2))
        return 0
    for name, row in rows.items():
        print(f"{name}  ({row['arch']}, vocab {row['vocab_size']:,})")
        for key, value in row.items():
            if key not in ("arch", "vocab_size", "paper"):
                print(f"  {key:<14}{_fmt(value)}")
        if "paper" in row:
            print(f"  {'paper':<14}{row['paper']:>13}  (the paper's rounded figure)")
    return 0
