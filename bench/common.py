"""What every bench script shares: the machine and commit it ran on, the RESULTS.md section,
command-line flags for where results go, and timing helpers.

A bench prints its section and appends it to ``bench/RESULTS.md`` (or to ``--results
FILE``; nothing with ``--no-append``). A section starts with a ``### bench/NAME.py: DATE,
commit HASH`` heading, then a ``Machine:`` line, a Markdown table and notes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """One line naming the hardware: GPU name and count on CUDA, CPU model and cores always."""
    cpu = f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    if device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name()
        return f"{gpu} x {torch.cuda.device_count()} (host: {cpu})"
    return cpu


def load_average() -> float:
    """1-minute load average: other processes on the machine skew CPU timings; say so."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without it
        return float("nan")


def commit() -> str:
    """Short HEAD hash, with "(uncommitted changes)" when the tree is dirty."""

    def git(*args: str) -> str:
        try:
            res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return ""
        return res.stdout.strip() if res.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (uncommitted changes)" if git("status", "--porcelain") else "")


def heading(script: str) -> str:
    """``### bench/SCRIPT: DATE, commit HASH`` (the line every section starts with)."""
    return f"### bench/{script}: {datetime.date.today()}, commit {commit()}"


def section_start(script: str, quick: bool, details: str) -> list[str]:
    """The first lines of a section: heading (marked when ``--quick``), blank, ``Machine:``."""
    mark = " (--quick: not a measurement)" if quick else ""
    return [heading(script) + mark, "", f"Machine: {details}"]


def add_output_args(ap: argparse.ArgumentParser) -> None:
    """``--results FILE`` and ``--no-append``: where the section goes."""
    ap.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="append the section to this file (default: bench/RESULTS.md)",
    )
    ap.add_argument("--no-append", action="store_true", help="print only, append nowhere")


def emit(lines: list[str], args: argparse.Namespace) -> None:
    """Print the section and append it to ``args.results`` unless ``args.no_append``."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text, flush=True)
    if getattr(args, "no_append", False):
        return
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + text)


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A Markdown table; ``align`` has one character per column, "l" or "r" (default: the
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def time_calls(fn: Callable[[], object], n: int, warmup: int = 1) -> dict[str, float]:
    """Mean wall and CPU seconds (all threads of this process) per call of ``fn``, after
    ``warmup`` untimed calls. CPU seconds barely move when other processes compete for
    the cores; wall seconds are what a user waits."""
    for _ in range(warmup):
        fn()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return {"wall": (time.perf_counter() - t0) / n, "cpu": (time.process_time() - c0) / n}


def summarize(samples: list[float]) -> dict[str, float]:
    """min / median / mean of per-step samples (the minimum is what other load cannot inflate)."""
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "mean": statistics.fmean(samples),
    }


def si(x: float | None, unit: str = "", digits: int = 2) -> str:
    """``12.3 M`` style: a number with a k/M/G/T prefix (or "n/a")."""
    if x is None or x != x:
        return "n/a"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}f} {prefix}{unit}"
    return f"{x:.{digits}f} {unit}".rstrip()


# The presets the model and training benches compare with HF, per device (quick: the debug
# presets, to check a bench works). Base sizes on GPU; on CPU the small members of each family.
PRESETS = {
    "cpu": {
        "roberta": "roberta-base",
        "electra": "electra-small",
        "deberta": "deberta-v3-xsmall",
        "bert": "bert-base",
        "albert": "albert-base",
    },
    "cuda": {
        "roberta": "roberta-base",
        "electra": "electra-base",
        "deberta": "deberta-v3-base",
        "bert": "bert-base",
        "albert": "albert-base",
    },
    "quick": {
        "roberta": "roberta-debug",
        "electra": "electra-debug",
        "deberta": "deberta-debug",
        "bert": "bert-debug",
        "albert": "albert-debug",
    },
}
