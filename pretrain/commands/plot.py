"""``python -m pretrain plot RUN_DIR [--out FILE.png]``: a PNG of a run's training curves
(losses, accuracies, learning rate, throughput; ``pretrain.metrics.plot``)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.common import CommandError
from pretrain.metrics import METRICS_FILE, read_metrics
from pretrain.metrics.plot import DEFAULT_OUT, plot_metrics


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory")
    parser.add_argument(
        "--out",
        metavar="FILE.png",
        default=None,
        help=f"output image (default RUN_DIR/{DEFAULT_OUT})",
    )
    parser.add_argument("--dpi", type=int, default=120, help="resolution of the PNG (default 120)")


def main(args) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CommandError(f"{run_dir}: not a directory")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise CommandError(f"{run_dir}: no {METRICS_FILE} (not a training run directory?)")
    records, bad = read_metrics(path)
    if not records:
        raise CommandError(f"{path}: no readable records")
    out = Path(args.out) if args.out else run_dir / DEFAULT_OUT
    if out.suffix.lower() != ".png":
        raise CommandError(f"{out}: the output must be a .png file")
    plot_metrics(records, out, title=str(run_dir), dpi=args.dpi)
    skipped = f" ({bad} unreadable line(s) skipped)" if bad else ""
    steps = [r["step"] for r in records]
    print(f"wrote {out}: {len(records)} records, steps {min(steps)}..{max(steps)}{skipped}")
    return 0
