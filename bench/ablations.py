"""Small equal-compute ablations on the sample corpus: do the seeds' comparisons reproduce?

    python bench/ablations.py [--only masking-static,masking-kind,embedding-sharing]
        [--steps 2500] [--seeds 0,1] [--threads 1] [--quick] [--results FILE | --no-append]

Every variant is a real training run (``pretrain.train.train``) of a shipped debug config
(batch 16 x seq 64, AdamW lr 1e-3, warm-up steps/20 then linear decay) with the same steps,
batch, seeds and data; only the switch differs. Three groups:

- masking-static (RoBERTa, ``data.shuffle = false`` so rows recur every epoch): dynamic vs
  static masking with 10 copies (RoBERTa's baseline) and 1 copy. RoBERTa (Table 1): dynamic
  as good or slightly better.
- masking-kind (BERT, WordPiece, ``data.packing = "doc"``): token vs whole-word vs span vs
  span + SBO, each scored on its own masking and on one common token-masked validation set.
  SpanBERT (Tables 6-7): span >= whole word >= token, SBO helps (downstream, not MLM loss).
- embedding-sharing (DeBERTa-v3 RTD, sentencepiece): ES vs NES vs GDES. DeBERTa-v3 (section
  3.2): the tug-of-war slows ES, NES embeddings drift apart, GDES is best downstream.

Validation is the whole valid split with fixed masks. One thread by default: two threads on
two cores shared with other work ran these tiny models ~60x slower. ``--quick`` (20 steps)
only checks that the script works.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, run as a script
import common  # noqa: E402

VOCAB = 2000
SC, KIND, ES = "masking.static_copies=", "masking.kind=", "model.overrides.embedding_sharing="
# group -> (debug config, tokenizer family, overrides of every run, {variant: its overrides})
GROUPS = {
    "masking-static": (
        "roberta",
        None,
        "data.shuffle=false",
        {"dynamic": SC + "0", "static-10": SC + "10", "static-1": SC + "1"},
    ),
    "masking-kind": (
        "bert",
        "bert",
        'data.packing="doc"',
        {
            "token": KIND + '"mlm"',
            "wwm": KIND + '"wwm"',
            "span": KIND + '"span"',
            "span+sbo": KIND + '"span" masking.boundaries=true model.overrides.sbo=true',
        },
    ),
    "embedding-sharing": (
        "deberta",
        "deberta",
        "",
        {v: f'{ES}"{v}"' for v in ("es", "nes", "gdes")},
    ),
}
# Every run: one evaluation at the end on the whole valid split, the final checkpoint only.
FIXED = (
    "eval.every_steps=0 eval.at_end=true eval.max_sequences=1000000 checkpoint.every_steps=0 "
    "checkpoint.keep_last=1 checkpoint.export_hf=false logging.progress=false"
)
# group -> [(column, metric key)]; every table also has tokens seen and wall time
COLUMNS = {
    "masking-static": [("eval MLM loss", "eval_mlm_loss"), ("eval MLM acc", "eval_mlm_acc")],
    "masking-kind": [
        ("own-masking MLM loss", "eval_mlm_loss"),
        ("token-masked MLM loss", "common_mlm_loss"),
        ("token-masked MLM acc", "common_mlm_acc"),
        ("SBO loss", "eval_sbo_loss"),
    ],
    "embedding-sharing": [
        ("generator MLM loss", "eval_mlm_loss"),
        ("RTD loss", "eval_rtd_loss"),
        ("RTD acc", "eval_rtd_acc"),
        ("RTD majority", "rtd_majority"),
        ("gen/disc embedding cosine", "eval_embedding_cosine"),
    ],
}


def run_variant(args, group: str, name: str, shards: Path, seed: int, work: Path) -> dict:
    """Train one variant in a temporary run directory; its final metrics and costs."""
    from pretrain.testing import debug_config
    from pretrain.train import train

    arch, _, base, variants = GROUPS[group]
    run_dir = work / f"{group}-{name}-s{seed}"
    over = [
        *base.split(),
        *variants[name].split(),
        f"seed={seed}",
        f"data.seed={seed}",
        f"max_steps={args.steps}",
        f"schedule.total_steps={args.steps}",
        f"schedule.warmup_steps={max(1, args.steps // 20)}",
        f"logging.every_steps={max(1, args.steps // 10)}",
        *FIXED.split(),
    ]
    cfg = debug_config(arch, shards, run_dir, *over)
    log = work / f"{run_dir.name}.log"
    t0 = time.time()
    try:
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            train(cfg)
    except Exception:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    seconds = time.time() - t0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "eval_loss" in r][-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    res = {**final, "seconds": seconds, "tokens": summary["tokens"]}
    res["content_tokens"] = sum(d["content_tokens"] for d in summary["data"])
    if "eval_rtd_replaced" in final:
        res["rtd_majority"] = 1.0 - final["eval_rtd_replaced"]
    if group == "masking-kind":
        res.update(common_eval(cfg, run_dir))
    return res


_COMMON: dict[Path, list[dict]] = {}  # shard dir -> its token-masked validation batches
SPANS = ("span_left", "span_right")


@torch.no_grad()
def common_eval(cfg, run_dir: Path) -> dict:
    """The final model (``load_run_model``) on the valid split with token-level masks (data
    seed 0, fixed): the same batches for every run of the group."""
    from data_pipeline.loader import validation_loader
    from pretrain.checkpoint.run_model import load_run_model
    from pretrain.train.objectives import SUM_KEYS, eval_metrics, raw_sums

    key = Path(cfg.data.shard_dir)
    if key not in _COMMON:
        masking = dataclasses.replace(cfg.masking, kind="mlm", boundaries=True, static_copies=0)
        val = validation_loader(dataclasses.replace(cfg.data, seed=0), masking, 32, 0, 1)
        _COMMON[key] = list(val)
        val.close()
    model, _ = load_run_model(run_dir)  # in eval mode
    segments = cfg.data.attention_segments()
    sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64)
    for b in _COMMON[key]:
        # span_left / span_right: read by the SBO head only (its loss is not reported here)
        inputs = {k: b[k] for k in ("input_ids", "attention_mask", "labels", *SPANS)}
        out = model(**inputs, segment_ids=b["segment_ids"] if segments else None)
        sums += raw_sums(out, rtd=False)
    m = eval_metrics(sums, rtd=False, rtd_weight=1.0)
    return {"common_mlm_loss": m["eval_mlm_loss"], "common_mlm_acc": m["eval_mlm_acc"]}


def stat(runs: list[dict], key: str) -> tuple[float, float] | None:
    """(mean, sample sd; 0 for one seed) of ``key`` over seeds, None where no run has it."""
    xs = [r[key] for r in runs if key in r]
    if not xs:
        return None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def fmt(s: tuple[float, float] | None, seeds: int) -> str:
    if s is None:
        return "-"
    return f"{s[0]:.4f}" + (f" ± {s[1]:.4f}" if seeds > 1 else "")


def compare(res: dict, key: str, a: str, b: str, paper: str, expect: str) -> str:
    """One line: the difference of the means of ``key``, a - b, and whether it goes the way
    ``paper`` found (``expect``: "+" if a's value should be higher), or is within seed noise."""
    sa, sb = stat(res[a], key), stat(res[b], key)
    d = sa[0] - sb[0]
    if len(res[a]) > 1 and abs(d) <= sa[1] + sb[1]:
        verdict = f"within the seed spread ({sa[1]:.4f}, {sb[1]:.4f}): no direction"
    else:
        same = (d > 0) == (expect == "+")
        verdict = ("same direction as " if same else "opposite to ") + paper
    return f"- {a} - {b} = {d:+.4f} ({key}): {verdict}"


def directions(group: str, res: dict, epochs: float) -> list[str]:
    """The group's comparisons with the paper's direction, computed from the means."""
    if group == "masking-static":
        p = "RoBERTa (dynamic as good or slightly better)"
        out = [
            compare(res, "eval_mlm_loss", v, "dynamic", p, "+") for v in ("static-10", "static-1")
        ]
        if epochs < 10:  # no mask repeats yet: static-10 only draws other masks than dynamic
            out[0] = out[0].split("): ")[0] + f"): a control at ~{epochs:.1f} < 10 epochs "
            out[0] += "(static-10 has repeated no mask yet), so this is seed noise, not an effect"
        return out
    if group == "masking-kind":
        p, k = "SpanBERT's order (downstream; MLM loss is not their metric)", "common_mlm_loss"
        return [
            compare(res, k, "span", "wwm", p, "-"),
            compare(res, k, "wwm", "token", p, "-"),
            compare(res, k, "span+sbo", "span", "SpanBERT (SBO helps)", "-"),
            compare(res, "eval_mlm_loss", "span+sbo", "span", "SpanBERT (SBO helps)", "-"),
        ]
    p = "DeBERTa-v3"
    out = [
        compare(res, "eval_mlm_loss", "es", "nes", p + " (tug-of-war slows ES's generator)", "+"),
        compare(res, "eval_mlm_loss", "es", "gdes", p + " (tug-of-war slows ES's generator)", "+"),
        compare(res, "eval_rtd_loss", "gdes", "es", p + " (GDES best)", "-"),
        compare(res, "eval_rtd_loss", "gdes", "nes", p + " (GDES best)", "-"),
        compare(res, "eval_embedding_cosine", "gdes", "nes", p + " (NES tables drift apart)", "+"),
    ]
    gain = max(stat(r, "eval_rtd_acc")[0] - stat(r, "rtd_majority")[0] for r in res.values())
    if gain < 0.01:
        out.append(
            f"- every discriminator beats always-'original' by {gain:.4f} accuracy at most: RTD "
            "has barely started learning at this scale, so its losses say little"
        )
    return out


NOTES = {
    "masking-static": "Static-10 repeats a mask only after 10 epochs; static-1 shows every row "
    "with one mask every epoch, about the repetition of RoBERTa's 40 epochs x 10 copies (each "
    "mask seen 4 times). Rows come in corpus order (data.shuffle = false) for all three.",
    "masking-kind": "Own-masking losses are different tasks (a span is harder to fill in than a "
    "token): compare kinds on the token-masked column. Token-masked loss favours the run "
    "trained on token masks; SpanBERT's gains are downstream (SQuAD, coreference), which this "
    "bench does not measure, so an opposite direction here does not contradict the paper.",
    "embedding-sharing": "Generator MLM losses are on the same fixed masks; RTD losses are not "
    "on the same task (each discriminator sees its own generator's samples: a better generator "
    "makes RTD harder). RTD majority = accuracy of always answering 'original'. ES's cosine is "
    "1 by construction. The paper's claims are about downstream tasks (GLUE), not these losses.",
}


def section(args, results: dict, shards: dict, elapsed: float) -> list[str]:
    from data_pipeline.shards import Manifest

    load = common.load_average()
    lines = common.section_start(
        "ablations.py",
        args.quick,
        f"{common.machine()}; {args.threads} torch thread(s); load average {load:.2f} at the end",
    )
    n = len(args.seeds)
    lines += [
        "",
        f"{args.steps} steps per run (debug configs: batch 16 x seq 64, lr 1e-3), seeds "
        f"{','.join(map(str, args.seeds))}"
        + (" (mean ± sample sd)" if n > 1 else "")
        + f", sample corpus, vocab {VOCAB}; total {elapsed / 60:.1f} min.",
    ]
    for group, res in results.items():
        cols = COLUMNS[group]
        train_tokens = Manifest.load(shards[group]).stats["splits"]["train"]["tokens"]
        rows = []
        for name, runs in res.items():
            seen = statistics.fmean(r["tokens"] for r in runs)
            wall = statistics.fmean(r["seconds"] for r in runs)
            vals = [fmt(stat(runs, k), n) for _, k in cols]
            rows.append([name, *vals, common.si(seen, digits=2), f"{wall:.0f}"])
        seen_content = statistics.fmean(r["content_tokens"] for r in next(iter(res.values())))
        epochs = seen_content / train_tokens
        lines += [
            "",
            f"**{group}** ({GROUPS[group][0]} debug config, {train_tokens:,} train tokens; "
            f"~{epochs:.1f} epochs):",
            "",
            *common.table(["variant", *(c for c, _ in cols), "tokens seen", "wall s/run"], rows),
            "",
            *directions(group, res, epochs),
            "",
            NOTES[group],
        ]
    if n == 1:
        lines += ["", "One seed: no difference above is tested against seed noise (--seeds 0,1,2)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the trainer keeps it when set
    torch.set_num_threads(args.threads)
    from pretrain.testing import corpus_shards

    t0 = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # Every corpus first: sample-corpus reads live module attributes, and a training run
    # replaces sys.excepthook (torch.distributed), which would drop one document.
    with contextlib.redirect_stdout(sys.stderr):  # the build's chatter off the table
        shards = {
            g: corpus_shards(
                work / f"sample-{GROUPS[g][1] or 'roberta'}-v{VOCAB}", VOCAB, GROUPS[g][1]
            )
            for g in args.only
        }
    results = {g: {name: [] for name in GROUPS[g][3]} for g in args.only}
    with tempfile.TemporaryDirectory(dir=work, prefix="runs-") as tmp:
        for group, runs in results.items():
            for name, seed in itertools.product(runs, args.seeds):
                r = run_variant(args, group, name, shards[group], seed, Path(tmp))
                runs[name].append(r)
                shown = {k: round(v, 4) for k, v in r.items() if k.startswith(("eval_", "common_"))}
                print(f"{group}/{name}/s{seed}: {r['seconds']:.0f} s {shown}", flush=True)
    common.emit(section(args, results, shards, time.time() - t0), args)
    return 0


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(GROUPS), help="groups: " + ", ".join(GROUPS))
    ap.add_argument(
        "--steps", type=int, default=2500, help="optimizer steps per run (~13 min in all)"
    )
    ap.add_argument("--seeds", default="0", help="comma-separated (mean ± sd when several)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "ablations"))
    ap.add_argument("--quick", action="store_true", help="20 steps: checks the script only")
    common.add_output_args(ap)
    args = ap.parse_args(argv)
    args.only = [g for g in args.only.split(",") if g]
    unknown = set(args.only) - set(GROUPS)
    if unknown:
        ap.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.steps = 20
    return args


if __name__ == "__main__":
    sys.exit(main())
