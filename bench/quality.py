"""Training quality at equal compute: ours vs Hugging Face on real text, identical batches.

    python bench/quality.py [--corpus PATH] [--arch roberta,electra,deberta,deberta-rtd]
        [--row-arch roberta,electra] [--steps 2000] [--eval-at 1000,2000] [--seeds 0,1]
        [--quick] [--results FILE | --no-append]

Both sides train the same-size model from scratch with configs/quickstart.toml's settings
(hidden 64, 2 layers, seq 128, batch 32, AdamW lr 2e-3, betas (0.9, 0.98), eps 1e-6, weight
decay 0.01, 50 warm-up steps then linear decay to 0 at ``--steps``, gradient clip 1.0) on the
*same global batches*: each side gets them from our loader with the same config, so token
ids, packing and masks are identical (checked row by row against the trainer's sample audit):

- ours: ``pretrain.trainer.train`` (DeepSpeed, one rank, fp32), i.e. what users run, with
  packed documents kept apart (``data.attend_within_document = true``, the default) and with
  attention across the whole row (``false``, as HF);
- HF: ``RobertaForMaskedLM``, the ``ElectraForMaskedLM`` + ``ElectraForPreTraining`` pair
  (loss mlm + 50 rtd), ``DebertaV2ForMaskedLM``, initialised by ``transformers``, trained in
  a plain torch loop (``bench/quality_hf.py``).

Every side is scored at the same steps on the same fixed validation masks (the valid split,
``--val-masks`` mask draws) in the attention mode it was trained with ("as trained"), ours
also across rows. RTD sides report precision and recall on replaced tokens and the replaced
share (the majority class is right on 1 - share of the tokens) on validation and in training
(25-step windows). DeBERTa-v3's RTD with GDES has no HF model: DeBERTa is compared as MLM
(``objective = "mlm"``) and our RTD run is reported beside the ELECTRA pair.
The corpus is the built-in sample corpus unless ``--corpus`` names a jsonl/txt file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, run as a script
import common  # noqa: E402
import quality_report  # noqa: E402
from quality_hf import build_hf_side, hf_train  # noqa: E402

from data_pipeline.loader import PretrainLoader, validation_loader
from pretrain.config import load_config  # noqa: E402
from pretrain.metrics import read_metrics  # noqa: E402
from pretrain.train.objectives import SUM_KEYS, eval_metrics, raw_sums

CONFIG = common.REPO / "configs" / "quickstart.toml"
QUICK = [
    "data.seq_len=64",
    "batch.global_batch_size=8",
    "batch.micro_batch_size=8",
    "schedule.warmup_steps=2",
]
LOG_EVERY = quality_report.LOG_EVERY  # training-metric window (steps)


def prepare_shards(args) -> Path:
    """Shards of ``--corpus`` (tokenizer trained on it, ``--valid-fraction`` held out), or of
    the built-in sample corpus; built once under ``--work``."""
    from data_pipeline.cli import main as data
    from pretrain.testing import corpus_shards

    work = Path(args.work)
    if args.corpus is None:
        return corpus_shards(work / f"sample-v{args.vocab_size}", vocab_size=args.vocab_size)
    src = Path(args.corpus).resolve()
    out = work / f"{src.stem}-{abs(hash(str(src))) % 10**8}-v{args.vocab_size}"
    if not (out / ".complete").is_file():
        tok, shards = out / "tokenizer", out / "shards"
        steps = [
            [
                "train-tokenizer",
                "--input",
                str(src),
                "--out",
                str(tok),
                "--vocab-size",
                str(args.vocab_size),
                "--kind",
                "spm-bpe",  # the kind the recorded results were measured with
            ],
            [
                "preprocess",
                "--input",
                str(src),
                "--tokenizer",
                str(tok),
                "--out",
                str(shards),
                "--valid-fraction",
                str(args.valid_fraction),
                "--shard-size",
                "8M",
            ],
        ]
        for argv in steps:
            if data(argv) != 0:
                sys.exit(f"python -m data_pipeline {' '.join(argv)} failed")
        (out / ".complete").write_text("")
    return out / "shards"


def side_config(args, shards: Path, side: dict, seed: int, run_dir: Path):
    """The run config of one side (for HF: the data, optimizer and schedule it shares)."""
    arch = side["arch"]
    over = [
        f"data.shard_dir={json.dumps(str(shards))}",
        f"run_dir={json.dumps(str(run_dir))}",
        f"seed={seed}",
        f"max_steps={args.steps}",
        f"schedule.total_steps={args.steps}",
        "data.num_workers=0",  # batches built in-process: identical for any value
        f"data.attend_within_document={'true' if side['attention'] == 'doc' else 'false'}",
        f"model.arch={arch}",
        f"model.preset={arch}-debug",
        # One tokenizer for every architecture, so that all sides see the same tokens (the
        # comparison is of models and objectives, not of vocabularies).
        'data.tokenizer_mismatch="warn"',
        "eval.every_steps=0",
        "eval.at_end=false",
        "eval.at_start=false",
        "checkpoint.every_steps=0",
        "checkpoint.keep_last=1",
        "checkpoint.export_hf=false",
        f"logging.every_steps={LOG_EVERY}",
        "logging.tensorboard=false",
        "logging.progress=false",
        "logging.audit_samples=true",
    ]
    if arch == "deberta":
        over.append(f"model.overrides.objective={side['objective']}")
    return load_config(CONFIG, over + (QUICK if args.quick else []))


def validation(cfg, masks: int, max_sequences: int | None) -> list[dict]:
    """The valid split with ``masks`` fixed mask draws (data seeds 0..masks-1)."""
    out, per = [], 32
    n = None if max_sequences is None else -(-max_sequences // per)
    for k in range(masks):
        v = validation_loader(dataclasses.replace(cfg.data, seed=k), cfg.masking, per, 0, 1, n)
        out += [
            {key: b[key] for key in ("input_ids", "attention_mask", "labels", "segment_ids")}
            for b in v
        ]
        v.close()
    return out


@torch.no_grad()
def score(model, val: list[dict], segments: bool, rtd: bool, rtd_weight: float) -> dict:
    """Validation metrics (``pretrain.objectives.eval_metrics``) of ``model`` on ``val``."""
    was = model.training
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same RTD replacement draws for every model and step
        sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64)
        for b in val:
            out = model(
                b["input_ids"],
                b["attention_mask"],
                b["labels"],
                b["segment_ids"] if segments else None,
            )
            sums += raw_sums(out, rtd)
    model.train(was)
    return eval_metrics(sums, rtd, rtd_weight)


def run_ours(args, cfg, side: dict, val: list[dict], log: Path) -> dict:
    """Train with ``pretrain.trainer.train`` up to each evaluation step in turn (each call
    resumes the last; resume is bit-exact on CPU fp32) and score the trained model."""
    from pretrain.train import train

    scores = {}
    for step in args.eval_at:
        c = dataclasses.replace(cfg, max_steps=step)
        with open(log, "a") as f, contextlib.redirect_stdout(f):
            model = train(c).engine.module
        rtd = side["rtd"]
        w = getattr(model.config, "rtd_weight", 1.0)
        segments = side["attention"] == "doc"
        scores[step] = {"as trained": score(model, val, segments, rtd, w)}
        if segments:
            scores[step]["rows"] = score(model, val, False, rtd, w)
    return scores


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The trainer sizes its threads from OMP_NUM_THREADS when set (else cores / local ranks).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    shards = prepare_shards(args)
    work = Path(args.work) / "runs" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for side in quality_report.sides(args.arch, args.row_arch):
        for seed in args.seeds:
            name = quality_report.side_name(side) + f"-s{seed}"
            print(f"{name}: training {args.steps} steps", flush=True)
            cfg = side_config(args, shards, side, seed, work / name)
            val = validation(cfg, args.val_masks, 32 if args.quick else None)
            ts = time.time()
            if side["impl"] == "ours":
                scores = run_ours(args, cfg, side, val, work / f"{name}.log")
                curve = train_curve(work / name)
                rows = audit_rows(work / name)
            else:
                scores, curve, rows = run_hf(args, cfg, side, seed, val)
            results.append(
                dict(
                    side=side,
                    seed=seed,
                    scores=scores,
                    curve=curve,
                    rows=rows,
                    seconds=time.time() - ts,
                )
            )
            print(f"{name}: {json.dumps({k: v['as trained'] for k, v in scores.items()})}")
    (work / "results.json").write_text(json.dumps(results, indent=1))  # raw, for re-reading
    lines = quality_report.section(args, shards, results, time.time() - t0)
    common.emit(lines, args)
    return 0


def run_hf(args, cfg, side: dict, seed: int, val: list[dict]):
    """The HF side on the same batches: scores at ``eval_at``, training windows, rows seen."""
    from data_pipeline.shards import Manifest
    from pretrain.train.build import build_model, seed_all

    seed_all(seed)
    ours = build_model(cfg, Manifest.load(cfg.data.shard_dir).tokenizer)  # only its config
    model = build_hf_side(side["arch"], ours, seed)
    G = cfg.batch.global_batch_size
    loader = PretrainLoader(cfg.data, cfg.masking, G, G)
    rows, window = [], Window(side["rtd"], getattr(ours.config, "rtd_weight", 1.0))
    curve, scores, done = [], {}, 0

    def batches():
        for b in loader:
            rows.append((int(b["epoch"]), b["sample_ids"].tolist()))
            yield b

    it = batches()
    torch.manual_seed(seed + 1)  # dropout and RTD sampling
    w = getattr(ours.config, "rtd_weight", 1.0)

    def log(out):
        window.add(out)
        if window.steps == LOG_EVERY:
            curve.append({"step": len(rows), **window.take()})

    for step in args.eval_at:
        hf_train(model, it, cfg, step - done, w, log)
        done = step
        scores[step] = {"as trained": score(model, val, False, side["rtd"], w)}
    loader.close()
    return scores, curve, rows


class Window:
    """Training metrics summed over a window of steps, like the trainer's logging."""

    def __init__(self, rtd: bool, rtd_weight: float):
        from pretrain.train.objectives import Objective

        self.objective, self.steps = Objective(rtd, rtd_weight), 0

    def add(self, out: dict) -> None:
        counts = torch.tensor([float(out["mlm_count"]), float(out.get("rtd_count", 1)), 0.0])
        self.objective.set_step(counts, 1, 1)
        self.objective.loss(out)
        self.steps += 1

    def take(self) -> dict:
        sums, n = self.objective.take_sums()
        self.steps = 0
        return self.objective.metrics(sums, n)


def train_curve(run_dir: Path) -> list[dict]:
    """Training records of ``metrics.jsonl`` (one per LOG_EVERY steps)."""
    records, _ = read_metrics(run_dir / "metrics.jsonl")
    return [r for r in records if "loss" in r]


def audit_rows(run_dir: Path) -> list[tuple[int, list[int]]]:
    """(epoch, global row ids) of every step the trainer took (``logging.audit_samples``)."""
    lines = (run_dir / "audit" / "rank00000.jsonl").read_text().splitlines()
    return [(r["epoch"], r["rows"]) for r in map(json.loads, lines)]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="jsonl/txt corpus (default: the built-in sample corpus)")
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--valid-fraction", type=float, default=0.05)
    ap.add_argument(
        "--arch",
        default="roberta,electra,deberta,deberta-rtd",
        help="roberta, electra, deberta (as MLM, vs HF), deberta-rtd (ours only)",
    )
    ap.add_argument(
        "--row-arch",
        default="roberta,electra",
        help="architectures also trained with attention across rows (as HF)",
    )
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-at", default=None, help="steps to score at (default: 1000,STEPS)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--val-masks", type=int, default=4, help="fixed mask draws of the valid split")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "quality"))
    ap.add_argument("--quick", action="store_true", help="tiny run (< 1 min): not a measurement")
    common.add_output_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.val_masks = 10, 1
    args.arch = [a for a in args.arch.split(",") if a]
    args.row_arch = [a for a in args.row_arch.split(",") if a]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    at = args.eval_at or (str(args.steps) if args.quick else f"1000,{args.steps}")
    args.eval_at = sorted({int(s) for s in at.split(",") if int(s) <= args.steps})
    return args


if __name__ == "__main__":
    sys.exit(main())
