"""Which sides ``bench/quality.py`` trains, and the RESULTS.md section it writes."""

from __future__ import annotations

import math
import platform
import statistics

import common

MODES = {"doc": "within documents", "row": "across rows"}
LOG_EVERY = 25  # steps per training-metric window (ours: logging.every_steps)


def sides(archs: list[str], row_archs: list[str]) -> list[dict]:
    """Per architecture: ours within documents (the default), ours across rows (for the
    architectures in ``row_archs``: the same attention as HF), then HF (across rows).
    "deberta" is DeBERTa-v3 as MLM (HF has no DeBERTa RTD model); "deberta-rtd" is our
    DeBERTa-v3 RTD run on its own."""
    out = []
    for arch in archs:
        if arch == "deberta-rtd":
            out.append(dict(arch="deberta", impl="ours", attention="doc", objective="rtd"))
            continue
        objective = "rtd" if arch == "electra" else "mlm"
        for impl, attention in (("ours", "doc"), ("ours", "row"), ("hf", "row")):
            if impl == "ours" and attention == "row" and arch not in row_archs:
                continue
            out.append(dict(arch=arch, impl=impl, attention=attention, objective=objective))
    for s in out:
        s["rtd"] = s["objective"] == "rtd"
    return out


def side_name(s: dict) -> str:
    return f"{s['arch']}-{s['objective']}-{s['impl']}-{s['attention']}"


def _label(s: dict) -> str:
    if s["impl"] == "hf":
        return {
            "roberta": "HF RobertaForMaskedLM",
            "electra": "HF ElectraForMaskedLM + ElectraForPreTraining",
            "deberta": "HF DebertaV2ForMaskedLM",
        }[s["arch"]]
    return "ours (pretrain.trainer)"


def _mean(results: list[dict], step: int, scored: str, key: str) -> float | None:
    vals = [r["scores"][step][scored][key] for r in results if scored in r["scores"].get(step, {})]
    return statistics.fmean(vals) if vals else None


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return ""
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _groups(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(side_name(r["side"]), []).append(r)
    return out


def mlm_table(args, results: list[dict]) -> list[str]:
    """Validation MLM loss (the generator's for RTD) per side, scoring mode and step."""
    groups = _groups(results)
    steps = args.eval_at
    header = ["arch", "objective", "side", "trained attention", "scored attention"]
    header += [f"step {s}" for s in steps] + [f"minus HF, step {s}" for s in steps]
    rows = []
    for rs in groups.values():
        s = rs[0]["side"]
        hf = groups.get(f"{s['arch']}-{s['objective']}-hf-row")
        for scored in ("as trained", "rows"):
            if scored not in rs[0]["scores"][steps[0]]:
                continue
            mode = s["attention"] if scored == "as trained" else "row"
            vals = [_mean(rs, st, scored, "eval_mlm_loss") for st in steps]
            ref = [_mean(hf, st, "as trained", "eval_mlm_loss") if hf else None for st in steps]
            diffs = [
                v - h if (h is not None and s["impl"] == "ours") else None
                for v, h in zip(vals, ref, strict=True)
            ]
            rows.append(
                [s["arch"], s["objective"], _label(s), MODES[s["attention"]], MODES[mode]]
                + [_fmt(v) for v in vals]
                + [_fmt(d, sign=True) for d in diffs]
            )
    return common.table(header, rows, "lllll" + "r" * 2 * len(steps))


def rtd_table(args, results: list[dict]) -> list[str]:
    """RTD sides at each evaluation step: validation as trained, fixed masks and draws."""
    header = [
        "arch",
        "side",
        "trained attention",
        "step",
        "generator MLM",
        "RTD loss",
        "minus constant guess",
        "RTD acc",
        "majority acc",
        "precision",
        "recall",
        "combined loss",
    ]
    rows = []
    for rs in _groups(results).values():
        s = rs[0]["side"]
        if not s["rtd"]:
            continue
        for st in args.eval_at:

            def m(k, rs=rs, st=st):
                return _mean(rs, st, "as trained", k)

            rows.append(
                [
                    s["arch"],
                    _label(s),
                    MODES[s["attention"]],
                    st,
                    _fmt(m("eval_mlm_loss")),
                    _fmt(m("eval_rtd_loss"), 4),
                    _fmt(m("eval_rtd_loss") - entropy(m("eval_rtd_replaced")), 4, sign=True),
                    _fmt(m("eval_rtd_acc"), 4),
                    _fmt(1 - m("eval_rtd_replaced"), 4),
                    _fmt(m("eval_rtd_precision")),
                    _fmt(m("eval_rtd_recall")),
                    _fmt(m("eval_loss")),
                ]
            )
    return common.table(header, rows, "lllr" + "r" * 8) if rows else []


def entropy(p: float) -> float:
    """Binary entropy (nats): the RTD loss of the best constant guess at a replaced share p."""
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def beats_majority(curve: list[dict]) -> int | None:
    """First logged training step whose window beats the majority class: accuracy minus the
    majority's is (TP - FP) / tokens, so it needs precision > 0.5; recall >= 1 % keeps a
    handful of lucky flags from counting."""
    for r in curve:
        if r["rtd_precision"] > 0.5 and r["rtd_recall"] >= 0.01:
            return r["step"]
    return None


def rtd_curve_table(args, results: list[dict]) -> list[str]:
    """Training windows: when the discriminator leaves the majority class."""
    header = [
        "arch",
        "side",
        "trained attention",
        "seed",
        "first window with RTD loss below the constant guess (step)",
        "first window above majority (step)",
        "precision / recall at that step",
        "at the last step",
        "replaced share: first / last",
    ]
    rows = []
    for r in results:
        s, c = r["side"], r["curve"]
        if not s["rtd"] or not c:
            continue
        first = beats_majority(c)
        at = next((x for x in c if x["step"] == first), None)
        below = next((x["step"] for x in c if x["rtd_loss"] < entropy(x["rtd_replaced"])), None)
        rows.append(
            [
                s["arch"],
                _label(s),
                MODES[s["attention"]],
                r["seed"],
                below if below is not None else f"none in {c[-1]['step']}",
                first if first is not None else f"none in {c[-1]['step']}",
                _pr(at),
                _pr(c[-1]),
                f"{c[0]['rtd_replaced']:.3f} / {c[-1]['rtd_replaced']:.3f}",
            ]
        )
    return common.table(header, rows, "lllrrrrrr") if rows else []


def _pr(rec: dict | None) -> str:
    return f"{rec['rtd_precision']:.2f} / {rec['rtd_recall']:.2f}" if rec else ""


def same_batches(results: list[dict]) -> str:
    """How the HF sides' rows compare with the trainer's audit (same seed and attention)."""
    ours = {}  # the rows do not depend on the attention mode or objective
    for r in results:
        if r["side"]["impl"] == "ours":
            ours.setdefault((r["side"]["arch"], r["seed"]), r["rows"])
    checked, bad = 0, 0
    for r in results:
        ref = ours.get((r["side"]["arch"], r["seed"]))
        if r["side"]["impl"] == "hf" and ref is not None:
            checked += len(ref)
            pairs = zip(ref, r["rows"], strict=False)  # a length mismatch counts below
            bad += sum(a != b for a, b in pairs) + abs(len(ref) - len(r["rows"]))
    if not checked:
        return "Batches: not checked (no HF side)."
    return (
        f"Batches: the HF sides consumed the trainer's rows (epoch and global row ids from its "
        f"sample audit) at every step: {checked} steps compared, {bad} differing."
    )


def section(args, shards, results: list[dict], seconds: float) -> list[str]:
    import torch
    import transformers

    from data_pipeline.shards import Manifest

    st = Manifest.load(shards).stats["splits"]
    corpus = args.corpus or "the built-in sample corpus (Python's documentation)"
    out = common.section_start("quality.py", args.quick, common.machine())
    out[-1] += (
        f"; load average {common.load_average():.1f} at the end; torch {torch.__version__}"
        f", transformers {transformers.__version__}, Python {platform.python_version()}, "
        f"{args.threads} threads."
    )
    out += [
        "",
        f"Corpus: {corpus}, vocabulary {args.vocab_size}: train {st['train']['tokens']:,} tokens "
        f"in {st['train']['documents']:,} documents, valid {st['valid']['tokens']:,} tokens in "
        f"{st['valid']['documents']:,}. configs/quickstart.toml sizes and optimizer (hidden 64, "
        f"2 layers; DeBERTa/ELECTRA: their -debug presets), {args.steps} steps "
        f"(schedule over {args.steps}), seeds {', '.join(map(str, args.seeds))} (values are "
        f"means), validation: the whole valid split x {args.val_masks} fixed mask draws. "
        f"{same_batches(results)}",
        "",
        "Validation MLM loss (nats; generator's for RTD); 'minus HF' < 0: ours is better:",
        "",
        *mlm_table(args, results),
    ]
    rtd = rtd_table(args, results)
    if rtd:
        out += [
            "",
            "Replaced-token detection on validation (as trained; majority acc = 1 - "
            "replaced share):",
            "",
            *rtd,
        ]
        out += ["", f"Training ({LOG_EVERY}-step windows):", "", *rtd_curve_table(args, results)]
    out += ["", f"({seconds:.0f} s)"]
    return out
