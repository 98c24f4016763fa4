"""``python -m pretrain export --run RUN_DIR | --model-dir HF_DIR --out HF_DIR``: a run's
newest checkpoint (or an HF directory, for a round trip) written as an HF directory
(``pretrain.export``)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.common import CommandError
from pretrain.export import arch_of, export_model, is_run_dir, load_model_dir


def add_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="training run directory (latest checkpoint)")
    src.add_argument(
        "--model-dir",
        metavar="HF_DIR",
        help="an HF directory written by this command (re-export / round trip)",
    )
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="output directory")


def main(args) -> int:
    source = Path(args.run or args.model_dir)
    if args.run and (source / "config.json").is_file() and not is_run_dir(source):
        raise CommandError(f"{source}: an HF model directory, not a run; use --model-dir")
    if args.model_dir and not (source / "config.json").is_file():
        raise CommandError(f"{source}: no config.json; not a Hugging Face model directory")
    model, tokenizer_dir = load_model_dir(source)
    try:
        out = export_model(model, tokenizer_dir, args.out)
    except ValueError as e:
        raise CommandError(str(e)) from e
    arch = arch_of(model)
    extra = f" (+ generator in {out / 'generator'})" if (out / "generator").is_dir() else ""
    print(f"exported {arch} model from {source} to {out}{extra}")
    return 0
