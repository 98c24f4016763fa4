"""Streaming-loader throughput: masked tokens/s per worker, next to HF's MLM collator.

    python bench/loader.py [--batches 30] [--no-append]

Synthetic shards (random ids, log-normal document lengths, RoBERTa's 50,265-id vocabulary)
are written to a temporary directory; no download. Measured in one process (= one worker):

* ours, end to end: shard reads (pread + crc32), FULL-SENTENCES packing, segment ids and
  dynamic masking, seq 512, batch 256 (also whole-word masking and DOC-SENTENCES);
* masking only: ``mask_batch`` vs ``transformers.DataCollatorForLanguageModeling`` called
  on the very same packed rows (HF's collator only masks; it reads and packs nothing).

"tokens/s" counts every position of the delivered (B, 512) batches, i.e. masked-batch tokens
per second; "predicted/s" counts the positions selected for prediction (labels != -100).
Prints a table and appends it to bench/RESULTS.md with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data_pipeline.masking import MaskingConfig, mask_batch, row_keys
from data_pipeline.stream import LoaderConfig, PretrainLoader
from data_pipeline.synthetic import SPECIAL_IDS, write_synthetic_shards

SEQ, BATCH, VOCAB = 512, 256, 50265
HERE = Path(__file__).resolve().parent


def hf_collator():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    names = {v: f"<{k}>" for k, v in SPECIAL_IDS.items()}
    vocab = {names.get(i, f"t{i}"): i for i in range(VOCAB)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        cls_token="<cls>",
        sep_token="<sep>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    return DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)


CPU_MS: dict[str, float] = {}  # CPU time per batch: robust to other load on the machine


def timed(fn, n: int, name: str = "") -> float:
    """Wall seconds per call (after a warm-up call); CPU ms per call go to ``CPU_MS[name]``."""
    fn()  # warm-up (first block layout, lazy imports, allocator)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    CPU_MS[name] = (time.process_time() - c0) / n * 1e3
    return (time.perf_counter() - t0) / n


def ours(shard_dir: str, n: int, packing: str = "full", kind: str = "mlm") -> tuple[float, float]:
    cfg = LoaderConfig(shard_dir, seq_len=SEQ, packing=packing, num_workers=0)
    loader = PretrainLoader(cfg, MaskingConfig(kind=kind), BATCH, BATCH)
    it = iter(loader)
    predicted = []

    def step():
        predicted.append(int((next(it)["labels"] != -100).sum()))

    sec = timed(step, n, f"{packing}-{kind}")
    stats = loader.stats()
    loader.close()
    return sec, float(np.mean(predicted)), stats["packing_efficiency"]


def masking_only(shard_dir: str, n: int) -> tuple[float, float]:
    cfg = LoaderConfig(shard_dir, seq_len=SEQ, num_workers=0)
    batch = next(iter(PretrainLoader(cfg, MaskingConfig(mask_prob=0.0), BATCH, BATCH)))
    rows = batch["input_ids"].numpy()  # packed, unmasked rows
    special = np.isin(rows, list(SPECIAL_IDS.values()))
    ws = np.ones_like(special)
    random_ids = np.arange(max(SPECIAL_IDS.values()) + 1, VOCAB)
    keys = row_keys(0, 0, np.arange(BATCH))
    t_ours = timed(
        lambda: mask_batch(
            rows, ws, ~special, keys, MaskingConfig(), SPECIAL_IDS["mask"], random_ids
        ),
        n,
        "mask-ours",
    )
    collate = hf_collator()
    examples = [{"input_ids": torch.from_numpy(r)} for r in rows]
    t_hf = timed(lambda: collate(examples), n, "mask-hf")
    return t_ours, t_hf


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]  # other processes on the machine skew the figures; say so
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"load average {load:.1f} at start"
    )


def commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (uncommitted changes)" if git("status", "--porcelain") else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=30, help="timed batches per row of the table")
    ap.add_argument("--no-append", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    n = args.batches
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_shards(
            d,
            [2500] * 12,
            seed=0,
            vocab_size=VOCAB,
            mean_len=300,
            p_empty=0.01,
            p_long=0.02,
            long_len=4000,
        )
        total = sum(1 for _ in Path(d).glob("*.tar"))
        results = [
            (f"ours: read + FULL-SENTENCES + {k} masking", f"full-{k}", *ours(d, n, "full", k))
            for k in ("mlm", "wwm")
        ]
        results.append(
            ("ours: read + DOC-SENTENCES + mlm masking", "doc-mlm", *ours(d, n, "doc", "mlm"))
        )
        t_ours, t_hf = masking_only(d, n)
    tok = BATCH * SEQ
    lines = [
        f"### bench/loader.py: {datetime.date.today()}, commit {commit()}",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, one process, one thread (= one worker).",
        f"Synthetic shards: {total} shards, vocab {VOCAB}, log-normal document lengths (mean ~300"
        f" tokens, 2 % long ones); seq {SEQ}, batch {BATCH}, mask_prob 0.15, {n} timed batches.",
        "",
        "| what | wall ms / batch | CPU ms / batch | tokens/s | predicted/s | packing efficiency |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, key, sec, pred, eff in results:
        lines.append(
            f"| {name} | {sec * 1e3:.1f} | {CPU_MS[key]:.1f} | {tok / sec / 1e6:.2f} M | "
            f"{pred / sec / 1e6:.2f} M | {eff:.4f} |"
        )
    lines.append(
        f"| masking only: ours `mask_batch` | {t_ours * 1e3:.1f} | {CPU_MS['mask-ours']:.1f} "
        f"| {tok / t_ours / 1e6:.2f} M | | |"
    )
    lines.append(
        f"| masking only: HF DataCollatorForLanguageModeling | {t_hf * 1e3:.1f} | "
        f"{CPU_MS['mask-hf']:.1f} | {tok / t_hf / 1e6:.2f} M | | |"
    )
    lines += [
        "",
        f"Masking only, ours vs HF: {t_hf / t_ours:.1f}x faster. Target: >= 5 M "
        f"masked-batch tokens/s per worker end to end; FULL-SENTENCES + mlm gives "
        f"{tok / results[0][2] / 1e6:.2f} M per wall second, "
        f"{tok / CPU_MS['full-mlm'] / 1e3:.2f} M per CPU second (the figure that holds when "
        f"the worker has its core to itself).",
        "",
    ]
    print("\n".join(lines))
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
