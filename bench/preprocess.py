"""Preprocessing throughput: tokens/s per core next to the bare tokenizer, and 1 vs 2 ranks.

    python bench/preprocess.py [--copies 8] [--vocab 8000] [--repeats 2] [--quick]
                               [--results FILE] [--no-append]

Corpus: the built-in sample corpus (``sample-corpus``: Python's own documentation, ~1.8 MB,
short documents of ~115 tokens) written ``--copies`` times, and the same text regrouped into
documents of 16 consecutive sample documents (~1,800 tokens, closer to web/wiki documents),
so the per-document cost of writing shards shows. Tokenizer: spm-bpe trained here on it.

Measured in one run on this machine:

* bare tokenizer: ``Tokenizer.encode_batch`` and ``encode_batch_with_word_starts`` over the
  same texts in ~256 K-character batches (what preprocess hands the tokenizer);
* preprocess per core: tokens per CPU-second of a 1-rank run pinned to one core, like the
  bare tokenizer (CPU seconds, from ``time.process_time``, move less with other load on
  the machine than wall time), and its ratio to the bare tokenizer. Both make the same
  tokenizer call on the same batches of documents; pinned alike, so that neither pays for
  or profits from threads the other does not have;
* preprocess wall clock: one process pinned to one core, ``mpirun -n 2`` (speed-up over the
  pinned run), ``--workers 2``, and one unpinned process. Times are the command's own, from
  reading the inputs to writing the manifest (interpreter start-up excluded).

Best of ``--repeats`` (bare tokenizer: of 3). Appends a section to bench/RESULTS.md with
the machine, load, date and commit. ``--quick``: one copy, vocab 1000, one repeat, no
``--workers``/``mpirun`` runs (checks the bench works; not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_output_args, emit, load_average, machine, section_start

MPIRUN = Path(sys.executable).parent / "mpirun"

BARE = """
import json, os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from data_pipeline.readers import iter_documents
from data_pipeline.tokenizer import Tokenizer
tok = Tokenizer.load(sys.argv[1])
texts = [d.text for d in iter_documents(sys.argv[2:])]
batches, cur, size = [], [], 0
for t in texts:
    cur.append(t); size += len(t)
    if size >= 1 << 18:
        batches.append(cur); cur, size = [], 0
batches.append(cur)
out = {}
for name in ("encode_batch", "encode_batch_with_word_starts"):
    best = 1e9
    for _ in range(3):
        t0 = time.process_time(); n = 0  # CPU seconds: tokens per core, whatever else runs
        for b in batches:
            r = getattr(tok, name)(b)
            n += sum(len(x if name == "encode_batch" else x[0]) for x in r)
        best = min(best, time.process_time() - t0)
    out[name] = n / best
print(json.dumps(out))
"""


def pin_one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def sh(cmd: list[str], pin: bool = False) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin_one_cpu if pin else None)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    return p


def preprocess(args: list[str], out: Path, repeats: int, mpi: int = 0, pin: bool = False) -> dict:
    """Best wall-clock tokens/s and tokens per CPU-s of one configuration (fresh --out each)."""
    best = None
    for r in range(repeats):
        cmd = [sys.executable, "-m", "data_pipeline", "preprocess", *args, "--out", f"{out}-{r}"]
        if mpi:
            cmd = [str(MPIRUN), "-n", str(mpi), *cmd]
        p = sh(cmd, pin=pin)
        sec = float(re.search(r"units in ([\d.]+) s", p.stdout).group(1))
        cpu = float(re.search(r"; ([\d.]+) CPU-s", p.stdout).group(1))
        tokens = json.loads(Path(f"{out}-{r}/manifest.json").read_text())["stats"]["tokens"]
        res = {"tps": tokens / sec, "per_cpu": tokens / cpu}
        best = res if best is None else {k: max(best[k], res[k]) for k in res}
    return best


def build_corpora(d: Path, copies: int) -> dict[str, str]:
    sh([sys.executable, "-m", "data_pipeline", "sample-corpus", str(d / "sample")])
    train = d / "sample" / "train.jsonl"
    texts = [json.loads(x)["text"] for x in open(train, encoding="utf-8")]
    grouped = "".join(
        json.dumps({"text": "\n\n".join(texts[i : i + 16])}, ensure_ascii=False) + "\n"
        for i in range(0, len(texts), 16)
    )
    for sub in ("short", "long"):
        (d / sub).mkdir()
    for c in range(copies):
        (d / "short" / f"part{c}.jsonl").write_bytes(train.read_bytes())
        (d / "long" / f"part{c}.jsonl").write_text(grouped, encoding="utf-8")
    return {
        "short documents (~115 tokens)": str(d / "short"),
        "long documents (~1,800 tokens)": str(d / "long"),
    }


def measure(d: Path, tok: Path, inputs: str, repeats: int, k: int, quick: bool) -> dict:
    files = sorted(str(p) for p in Path(inputs).iterdir())
    args = ["--input", inputs, "--tokenizer", str(tok), "--unit-bytes", "512K"]
    out = {
        "bare": json.loads(sh([sys.executable, "-c", BARE, str(tok), *files]).stdout),
        "one": preprocess(args, d / f"{k}-one", repeats),
        "pin": preprocess(args, d / f"{k}-pin", repeats, pin=True),
    }
    if quick:  # the parallel runs only repeat what is checked above
        return {**out, "workers": out["one"], "mpi": None}
    out["workers"] = preprocess([*args, "--workers", "2"], d / f"{k}-w2", repeats)
    out["mpi"] = preprocess(args, d / f"{k}-mpi", repeats, mpi=2) if MPIRUN.exists() else None
    return out


def table(rows: dict[str, dict]) -> list[str]:
    lines = [
        "Per core (tokens per CPU-second):",
        "",
        "| corpus | bare encode | bare encode + word starts | preprocess, 1 rank pinned "
        "| preprocess / encode | preprocess / encode + word starts |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        e, ews, pre = (
            m["bare"]["encode_batch"],
            m["bare"]["encode_batch_with_word_starts"],
            m["pin"]["per_cpu"],  # pinned to one core, as the bare tokenizer is
        )
        lines.append(
            f"| {name} | {e / 1e6:.2f} M | {ews / 1e6:.2f} M | {pre / 1e6:.2f} M "
            f"| {pre / e:.0%} | {pre / ews:.0%} |"
        )
    lines += [
        "",
        "Wall clock (tokens/s):",
        "",
        "| corpus | 1 rank pinned to 1 core | mpirun -n 2 | 2 ranks / 1 core | --workers 2 "
        "| 1 rank unpinned |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        pin, mpi = m["pin"]["tps"], m["mpi"]["tps"] if m["mpi"] else None
        two = f"{mpi / 1e6:.2f} M | {mpi / pin:.2f}x" if mpi else "n/a | n/a"
        lines.append(
            f"| {name} | {pin / 1e6:.2f} M | {two} | {m['workers']['tps'] / 1e6:.2f} M "
            f"| {m['one']['tps'] / 1e6:.2f} M |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=8, help="copies of the sample corpus to process")
    ap.add_argument("--vocab", type=int, default=8000, help="spm-bpe vocabulary size")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration (best kept)")
    ap.add_argument("--quick", action="store_true", help="tiny run: checks the bench, no figures")
    add_output_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.copies, args.vocab, args.repeats = 1, 1000, 1
    started, load0 = time.time(), load_average()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        corpora = build_corpora(d, args.copies)
        tok = d / "tok"
        sh(
            [
                sys.executable,
                "-m",
                "data_pipeline",
                "train-tokenizer",
                "--input",
                str(d / "sample" / "train.jsonl"),
                "--out",
                str(tok),
                "--vocab-size",
                str(args.vocab),
                "--kind",
                "spm-bpe",  # the kind the recorded results were measured with
            ]
        )
        rows = {
            name: measure(d, tok, inputs, args.repeats, k, args.quick)
            for k, (name, inputs) in enumerate(corpora.items())
        }
    lines = [
        *section_start(
            "preprocess.py",
            args.quick,
            f"{machine()}; Python {platform.python_version()}; load average {load0:.1f} at "
            f"the start, {load_average():.1f} at the end. spm-bpe vocab {args.vocab} trained "
            f"on the sample corpus; {args.copies} copies of its train split per corpus; "
            f"--unit-bytes 512K; best of {args.repeats}.",
        ),
        "",
        *table(rows),
        "",
        "Targets: preprocess >= 80 % of the bare tokenizer per core; >= 1.8x on 2 ranks "
        f"(wall clock, only meaningful on an otherwise idle machine). ({time.time() - started:.0f} s)",
        "",
    ]
    emit(lines, args)


if __name__ == "__main__":
    main()
