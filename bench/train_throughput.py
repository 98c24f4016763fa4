"""End-to-end training throughput through DeepSpeed: ours next to transformers, same run.

    python bench/train_throughput.py [--device cpu|cuda]
        [--arch roberta deberta electra bert albert] [--presets cpu|cuda] [--steps N]
        [--warmup N] [--seq N] [--micro N] [--accum N]
        [--precision fp32|bf16] [--zero STAGE] [--optimizer-impl torch|deepspeed|auto]
        [--workers N] [--threads N] [--compile | --no-compile]
        [--attend-within-document 0|1] [--budget-s S] [--extras] [--quick] [--in-process]
        [--results FILE] [--no-append]

For each architecture, both sides train from the same synthetic shards (written here with
``data_pipeline.synthetic``; each preset's own vocabulary size), through our real
``PretrainLoader`` (``--workers`` DataLoader workers, default 2), ``pretrain.engine.Engine``
(the identical DeepSpeed config from ``pretrain.engine.ds_config`` and optimizer on both sides) and
the trainer's ``train_step``, with the same batch, sequence length, precision and ZeRO stage:

* ours: ``pretrain.models`` plus ``pretrain.train.perf`` (fixed-capacity sparse MLM head;
  ``--compile``: torch.compile of the blocks, default on CUDA);
* HF: ``RobertaForMaskedLM``, ``ElectraForMaskedLM`` + ``ElectraForPreTraining`` (RTD written
  around them: full-vocabulary logits, sampling, BCE), ``DebertaV2ForMaskedLM``,
  ``BertForPreTraining`` / ``AlbertForPreTraining`` (``labels=`` and the sentence label);
  same weights (``bench/hf_models.py``). DeBERTa runs the MLM objective on both sides (HF has
  no DeBERTa RTD) and, on CUDA, ours uses FlexAttention (``attention_impl="flex"``), which
  has no attention-probability dropout, so that dropout is 0 on both sides there.
* BERT / ALBERT train on sentence pairs on both sides (``data.packing = "pairs"``, task NSP /
  SOP: one ``[CLS] A [SEP] B [SEP]`` row each, token types and a sentence label), with AdamW
  at ZeRO 1 like the others (ALBERT's own recipe, LAMB at ZeRO 0, is not what is compared).

Reported per side: tokens/s (rows x seq_len per optimizer step over the median step time),
MFU = tokens/s x F / peak, with F = ``pretrain.metrics.flops.model_flops_per_token`` of OUR model
(attention included, MLM head on the predicted 15 % only; formula in ``pretrain/flops.py``)
applied to both sides, so the MFU ratio is exactly the time ratio; peak memory (CUDA: peak
allocated; CPU: peak RSS of the side's process); and the share of step time blocked on the
loader. Every side runs in a fresh process (``--in-process``: one process, for tests).
Defaults: CPU: roberta-base, electra-small, deberta-v3-xsmall, bert-base, albert-base, fp32,
seq 128, micro 4 x accumulation 2, one torch thread per side (on a shared machine, multi-threaded steps stall
whenever another process takes a core; one thread keeps the ratio meaningful); CUDA: the
base presets, bf16, seq 512, micro 32 x 2, torch.compile on. Both: ZeRO stage 1 (as the
base configs), torch's AdamW on both sides (DeepSpeed's FusedAdam would need nvcc to
JIT-build; under ZeRO the optimizer sees one flat fp32 partition per group anyway).
``--extras``: ours' variants (whole-row attention, DeBERTa RTD, eager) after every pair,
while ``--budget-s`` lasts. ``--quick``: debug presets, tiny batches (checks the bench
works, not a measurement). Prints a table and appends it to bench/RESULTS.md with the
machine, date and commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import throughput_child
from common import (
    HERE,
    PRESETS,
    add_output_args,
    emit,
    load_average,
    machine,
    section_start,
    si,
    table,
)

VOCAB = {"roberta": 50265, "electra": 30522, "deberta": 128100, "bert": 30522, "albert": 30000}
PAIR_TASK = {"bert": "nsp", "albert": "sop"}  # sentence-pair rows (data.packing = "pairs")


def write_shards(root: Path, arch: str, vocab: int, quick: bool) -> str:
    from data_pipeline.synthetic import write_synthetic_shards

    out = root / f"shards-{arch}"
    docs = [120] * 2 if quick else [1500] * 4  # ~1.8 M tokens: no epoch ends mid-bench
    write_synthetic_shards(out, docs, seed=0, vocab_size=vocab, mean_len=300, p_long=0.02)
    return str(out)


def sides(args, arch: str, shard_dir: str) -> tuple[list[dict], list[dict]]:
    """The specs of the two sides of ``arch`` (ours first), and ours' variants (--extras)."""
    cuda = args.device == "cuda"
    overrides = {}  # vocab_size and pad_token_id come from the shards, as in training
    if arch == "deberta":
        overrides["objective"] = "mlm"  # HF has no DeBERTa RTD pretraining model
        if cuda:  # the fused kernel; it has no attention dropout, so neither side gets any
            overrides.update(attention_impl="flex", attention_probs_dropout_prob=0.0)
    base = {
        "arch": arch,
        "preset": PRESETS["quick" if args.quick else args.presets][arch],
        "overrides": overrides,
        "shard_dir": shard_dir,
        "seq": args.seq,
        "micro": args.micro,
        "global_batch": args.micro * args.accum,
        "precision": args.precision,
        "zero": args.zero,
        "workers": args.workers,
        "optimizer_impl": args.optimizer_impl,
        "mask_prob": 0.15,
        "steps": args.steps,
        "warmup": args.warmup,
        "attend_within_document": bool(args.attend_within_document),
        "packing": "pairs" if arch in PAIR_TASK else "full",
        "pair_task": PAIR_TASK.get(arch),
        "compile": args.compile,
        "predict_capacity": "auto",
        "threads": args.threads,
    }
    main = [{**base, "side": "ours"}, {**base, "side": "hf", "compile": False}]
    extras = []
    if args.extras:  # in order of value: attention kernels, the real DeBERTa-v3, compile gain
        if arch not in ("electra", *PAIR_TASK):  # a pair row holds one pair: no documents
            extras.append({**base, "side": "ours", "variant": "whole-row attention"})
            extras[-1]["attend_within_document"] = False
        if arch == "deberta":  # the DeBERTa-v3 workload itself (no HF counterpart)
            rtd = {k: v for k, v in overrides.items() if k != "objective"}
            extras.append({**base, "side": "ours", "variant": "RTD (GDES)", "overrides": rtd})
        if args.compile:
            extras.append({**base, "side": "ours", "variant": "eager", "compile": False})
    return main, extras


def run_side(spec: dict, args, timeout: float) -> dict:
    """One side in a fresh process (or in this one with --in-process)."""
    if args.in_process:
        try:
            return throughput_child.run(spec)
        except Exception as e:  # same contract as the child process
            return {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    cmd = [sys.executable, str(HERE / "throughput_child.py"), f.name]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    finally:
        Path(f.name).unlink(missing_ok=True)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(throughput_child.RESULT_PREFIX):
            return json.loads(line[len(throughput_child.RESULT_PREFIX) :])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit status {p.returncode}"]
    return {"ok": False, "error": tail[0][:300]}


def flops_per_token(spec: dict, vocab: int) -> float:
    """Our formula for OUR model of ``spec`` (built on the meta device: no memory, no time)."""
    import torch

    from pretrain.metrics.flops import model_flops_per_token
    from pretrain.models import build_model

    with torch.device("meta"):
        model = build_model(
            spec["arch"], spec["preset"], **{"vocab_size": vocab, **spec["overrides"]}
        )
    return model_flops_per_token(
        model, spec["seq"], spec["mask_prob"], micro_batch_size=spec["micro"]
    )


def row(spec: dict, res: dict, fpt: float, ours_tps: float | None) -> list:
    extra = [x for x in (spec.get("variant"), spec.get("note")) if x]
    name = spec["side"] + (f" ({', '.join(extra)})" if extra else "")
    if spec["side"] == "ours" and res.get("ok") and res["perf"].get("compiled_modules"):
        name += ", compiled"
    if not res.get("ok"):
        return [spec["arch"], name, spec["preset"], f"failed: {res['error']}", "", "", "", "", ""]
    step = statistics.median(res["step_s"])
    tps = res["tokens_per_step"] / step
    wait = sum(res["wait_s"]) / sum(res["step_s"])
    mfu = tps * fpt / res["peak_flops"] if res.get("peak_flops") else None
    mem = res["peak_memory"]
    ratio = f"{ours_tps / tps:.2f}x" if spec["side"] == "hf" and ours_tps else ""
    return [
        spec["arch"],
        name,
        spec["preset"],
        f"{tps:,.0f}",
        f"{step * 1e3:,.0f}",
        "n/a" if mfu is None else f"{mfu:.1%}",
        si(mem, "B", 1) if mem else "n/a",
        f"{wait:.1%}",
        ratio,
    ]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--arch", nargs="+", default=["roberta", "deberta", "electra", "bert", "albert"]
    )
    ap.add_argument("--presets", choices=["cpu", "cuda"], help="size set (default: --device's)")
    ap.add_argument("--steps", type=int, help="timed optimizer steps per side (cpu 4, cuda 10)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (cpu 1, cuda 3)")
    ap.add_argument("--seq", type=int, help="sequence length (cpu 128, cuda 512)")
    ap.add_argument("--micro", type=int, help="sequences per micro-batch (cpu 4, cuda 32)")
    ap.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--precision", help="fp32 or bf16 (default: cpu fp32, cuda bf16)")
    ap.add_argument("--zero", type=int, default=1, help="ZeRO stage, both sides (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="loader workers per process")
    ap.add_argument("--threads", type=int, help="torch threads per side (cpu 1: see docstring)")
    ap.add_argument("--optimizer-impl", default="torch", choices=["torch", "deepspeed", "auto"])
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--attend-within-document", type=int, choices=[0, 1], default=1)
    ap.add_argument("--budget-s", type=float, help="stop starting sides after this (cuda 450)")
    ap.add_argument("--extras", action="store_true", help="also ours' variants (eager, ...)")
    ap.add_argument("--quick", action="store_true", help="debug presets, tiny batches")
    ap.add_argument("--in-process", action="store_true", help="every side in this process")
    add_output_args(ap)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    quick = args.quick
    args.steps = args.steps or (2 if quick else 10 if cuda else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick or not cuda else 3)
    args.seq = args.seq or (32 if quick else 512 if cuda else 128)
    args.micro = args.micro or (2 if quick else 32 if cuda else 4)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.compile = cuda if args.compile is None else args.compile
    args.budget_s = args.budget_s or (450.0 if cuda else 3600.0)
    args.threads = args.threads or (None if cuda else 1)
    args.presets = args.presets or args.device
    return args


def measure(spec: dict, args, started: float) -> tuple[dict, dict]:
    """Run one side; ours falls back (eager, then plain attention) rather than leave a hole
    in the table on a machine where a fast path breaks. Returns the spec that ran."""
    attempts = [spec]
    if spec["side"] == "ours" and spec["compile"]:
        attempts.append({**spec, "compile": False, "note": "eager: compile failed"})
    if spec["side"] == "ours" and spec["overrides"].get("attention_impl") == "flex":
        plain = {**spec["overrides"], "attention_impl": "plain"}
        attempts.append({**spec, "overrides": plain, "note": "plain attention: flex failed"})
    errors = []
    for attempt in attempts:
        left = args.budget_s - (time.monotonic() - started)
        if left < 30:
            errors.append("skipped: time budget spent")
            break
        res = run_side(attempt, args, left)
        if res.get("ok"):
            if errors:
                res["error"] = errors[0]
            return attempt, res
        errors.append(res["error"])
        print(f"{spec['arch']} {spec['side']}: {res['error']}", flush=True)
    return spec, {"ok": False, "error": "; ".join(errors)}


def main(argv=None) -> int:
    args = parse_args(argv)
    started, load0 = time.monotonic(), load_average()
    results, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        mains, extras = [], []
        for arch in args.arch:
            m, e = sides(args, arch, write_shards(Path(tmp), arch, VOCAB[arch], args.quick))
            mains += m
            extras += e
        extras.sort(
            key=lambda s: ["whole-row attention", "RTD (GDES)", "eager"].index(s["variant"])
        )
        for spec in mains + extras:  # every pair first: extras only with budget to spare
            if spec in extras and args.budget_s - (time.monotonic() - started) < 60:
                skipped.append(f"{spec['arch']} ({spec['variant']})")
                continue
            spec, res = measure(spec, args, started)
            results.append((spec, res, flops_per_token(spec, VOCAB[spec["arch"]])))
            print(" | ".join(map(str, row(*results[-1], None))), flush=True)
    lines = section(args, results, load0, time.monotonic() - started, skipped)
    emit(lines, args)
    return 0 if all(r.get("ok") for _, r, _ in results) else 1


def section(args, results, load0: float, elapsed: float, skipped: list[str]) -> list[str]:
    ok = [r for _, r, _ in results if r.get("ok")]
    dev = ok[0]["device_name"] if ok else args.device
    threads = ok[0]["threads"] if ok else "?"
    rows, ours_tps = [], {}
    for spec, res, fpt in results:
        if res.get("ok") and spec["side"] == "ours" and "variant" not in spec:
            ours_tps[spec["arch"]] = res["tokens_per_step"] / statistics.median(res["step_s"])
        rows.append(row(spec, res, fpt, ours_tps.get(spec["arch"])))
    fpts = ", ".join(f"{s['arch']} {si(f, 'FLOP', 2)}" for s, _, f in results if s["side"] == "hf")
    hw = machine("cpu") if args.device == "cpu" else f"{dev} (host: {machine('cpu')})"
    pair_archs = [a for a in args.arch if a in PAIR_TASK]
    packing = " and ".join(
        (["FULL-SENTENCES packing"] if len(pair_archs) < len(args.arch) else [])
        + (
            [
                "sentence-pair rows for "
                + ", ".join(f"{a} ({PAIR_TASK[a].upper()})" for a in pair_archs)
            ]
            if pair_archs
            else []
        )
    )
    return [
        *section_start(
            "train_throughput.py",
            args.quick,
            f"{hw}; load average {load0:.1f} at the start, {load_average():.1f} at the end; "
            f"torch intra-op threads {threads}. DeepSpeed ZeRO {args.zero}, {args.precision}, optimizer "
            f"impl {args.optimizer_impl}, seq {args.seq}, micro-batch {args.micro} x accumulation "
            f"{args.accum} = {args.micro * args.accum} sequences per step, {packing}, "
            f"15 % mlm masking, {args.workers} loader workers, {args.warmup} warm-up + "
            f"{args.steps} timed steps per side"
            + (
                f"; ours keeps packed documents apart: {bool(args.attend_within_document)} "
                "(HF: whole row)."
                if len(pair_archs) < len(args.arch)
                else " (a pair row holds one pair: whole-row attention on both sides)."
            ),
        ),
        "",
        *table(
            [
                "arch",
                "side",
                "preset",
                "tokens/s",
                "step ms (median)",
                "MFU",
                "peak memory",
                "data wait",
                "ours / HF tokens/s",
            ],
            rows,
            "lllrrrrrr",
        ),
        "",
        f"Model FLOPs per token (training, our formula applied to both sides): {fpts}. "
        f"MFU needs a GPU's peak (n/a on CPU)."
        + (f" Not run (time budget): {', '.join(skipped)}." if skipped else "")
        + f" ({elapsed:.0f} s)",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
