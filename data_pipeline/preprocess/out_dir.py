"""The shard directory of a preprocessing run: claiming it, resuming it, finishing it.

``SHARD_DIR/.progress/run.json`` records the tokenizer fingerprint, the options that shape
the shards and the input files (name, size, mtime); a later run into the same directory
must match it exactly or is refused, so shards of two different runs never mix (an earlier
attempt that finished no unit, e.g. one stopped by a bad input file, is discarded). The
manifest is written last, after every unit has its progress record: a directory with a
manifest is complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from data_pipeline.common import CommandError, atomic_write_text
from data_pipeline.readers import ReadStats
from data_pipeline.shards import MANIFEST_NAME, Manifest, ShardInfo

PROGRESS_DIR = ".progress"
RUN_FILE = "run.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864; plain integers are bytes; K/M/G/T are powers of 1024."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 64K, 128M, 1G)")
    power = "kmgt".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * 1024**power)


def _differences(old: dict, new: dict) -> list[str]:
    diff = []
    if old.get("tokenizer") != new["tokenizer"]:
        diff.append("tokenizer fingerprint")
    for k, v in new["options"].items():
        if old.get("options", {}).get(k) != v:
            diff.append(f"{k} ({old.get('options', {}).get(k)!r} -> {v!r})")
    if old.get("inputs") != new["inputs"]:
        diff.append("input files (names, sizes or modification times)")
    return diff


def remove_temporaries(out: Path) -> None:
    """Temporaries (``.NAME.tmp-PID``) left by a crashed run: never complete, never read."""
    for d in (out, out / PROGRESS_DIR):
        if d.is_dir():
            for p in d.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)


def _has_results(out: Path) -> bool:
    return (out / MANIFEST_NAME).exists() or any((out / PROGRESS_DIR).glob("unit-*.json"))


def _clear_attempt(out: Path) -> None:
    """Remove the shards and run record of an attempt that completed no unit."""
    for pattern in (
        "*-u[0-9]*-[0-9]*.tar",
        "*-u[0-9]*-[0-9]*.idx.npy",
        f"{PROGRESS_DIR}/{RUN_FILE}",
    ):
        for p in out.glob(pattern):
            p.unlink()


def check_out_dir(out_dir: str, run: dict) -> None:
    """Create ``out_dir`` for this run, or accept it as a previous attempt at the same run."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out}: exists and is not a directory")
    run_file = out / PROGRESS_DIR / RUN_FILE
    if run_file.is_file():
        try:
            old = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            raise CommandError(f"{run_file}: unreadable ({e}); delete {out} to start over") from e
        diff = _differences(old, run)
        if diff and not _has_results(out):
            _clear_attempt(out)  # an attempt that finished nothing: nothing to mix with
            diff = []
        if diff:
            raise CommandError(
                f"{out}: holds shards of a different preprocessing run (differs in: "
                f"{'; '.join(diff)}); use another --out or delete it"
            )
    elif out.is_dir() and any(out.iterdir()):
        what = "shards without a run record" if (out / MANIFEST_NAME).exists() else "other files"
        raise CommandError(f"{out}: not empty ({what}); preprocess writes into a new directory")
    (out / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    if not run_file.is_file():  # (re)claim the directory for this run
        atomic_write_text(run_file, json.dumps(run, indent=1) + "\n")


def finish_manifest(ctx, tok, records: list[dict], n_units: int, plan_stats: ReadStats) -> dict:
    """Rank 0, all units done: copy the tokenizer, write ``manifest.json``; return it as a dict."""
    got = sorted(r["unit"] for r in records)
    if got != list(range(n_units)):
        raise CommandError(
            f"internal error: unit records {got[:5]}... do not cover {n_units} units"
        )
    stats = ReadStats()
    stats.merge(plan_stats)
    shards: list[ShardInfo] = []
    for r in sorted(records, key=lambda r: r["unit"]):
        stats.merge(ReadStats.from_dict(r["stats"]))
        shards += [ShardInfo(**s) for s in r["shards"]]
    stats.files = plan_stats.files
    shards.sort(key=lambda s: s.name)
    splits = {
        sp: {
            "documents": sum(s.documents for s in shards if s.split == sp),
            "tokens": sum(s.tokens for s in shards if s.split == sp),
            "sentences": sum(s.sentences or 0 for s in shards if s.split == sp),
            "shards": sum(1 for s in shards if s.split == sp),
        }
        for sp in ("train", "valid")
    }
    out = Path(ctx.out_dir)
    tok.save(out / "tokenizer", copy_from=ctx.tokenizer_dir)
    manifest = Manifest(
        tokenizer=tok.describe(),
        dtype=ctx.dtype,
        shards=shards,
        stats={
            "documents": sum(s["documents"] for s in splits.values()),
            "tokens": sum(s["tokens"] for s in splits.values()),
            "sentences": sum(s["sentences"] for s in splits.values()),
            "splits": splits,
            "units": n_units,
            "input_files": len(ctx.files),
            "input_bytes": sum(f.size for f in ctx.files),
            "read": stats.to_dict(),
            "options": json.loads((out / PROGRESS_DIR / RUN_FILE).read_text())["options"],
        },
    )
    manifest.save(out)
    return json.loads(manifest.to_json())
