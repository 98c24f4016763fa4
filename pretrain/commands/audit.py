"""``python -m pretrain audit RUN_DIR [--json]`` (also ``python -m pretrain.audit``): check a
run's per-step sample audit (``logging.audit_samples = true``, see ``pretrain.train.audit``):
within every epoch each row consumed exactly once, in global-batch order. Exit status 1 and
the problems otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.common import CommandError
from pretrain.train.audit import AUDIT_DIR, check


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args) -> int:
    if not (Path(args.run_dir) / AUDIT_DIR).is_dir():
        raise CommandError(
            f"{args.run_dir}: no {AUDIT_DIR}/ (train with logging.audit_samples=true)"
        )
    report = check(args.run_dir)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['steps']} steps audited")
        for epoch, e in sorted(report["epochs"].items()):
            state = "complete" if e["complete"] else "in progress"
            print(
                f"epoch {epoch} ({state}): {e['steps']} steps, {e['rows']} rows, "
                f"{e['repeated']} repeated, {e['missing']} missing, {e['misplaced']} misplaced"
            )
        for p in report["problems"]:
            print(f"problem: {p}")
        print("OK" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1
