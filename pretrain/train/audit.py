"""Per-step sample audit: which global rows every rank consumed at every step.

With ``logging.audit_samples = true`` every rank appends one line per optimizer step to
``RUN_DIR/audit/rankNNNNN.jsonl``::

    {"step": 12, "epoch": 0, "rank": 1, "world_size": 2, "global_batch": 16,
     "rows": [52, 53, 54, 55, 60, 61, 62, 63]}

``rows`` are the global row ids of the epoch (the loader's ``sample_ids``) of the rank's
micro-batches, in order; -1 is an empty row completing the epoch's last global batch. On
resume, lines past the checkpoint's step are removed from every file — also from files of
ranks that no longer exist after a world-size change — exactly like ``metrics.jsonl``, so
the files always describe the one trajectory that led to the current state.

``check(run_dir)`` (``python -m pretrain audit RUN_DIR``, ``pretrain.commands.audit``) proves the data guarantee:
within each epoch every row was consumed exactly once, in global-batch order (step k of an
epoch holds rows [kG, (k+1)G)), and every step was recorded by all ranks of its world.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

AUDIT_DIR = "audit"
_COUNTS = ("steps", "rows", "repeated", "missing", "misplaced", "empty")


def rank_file(run_dir: str | os.PathLike, rank: int) -> Path:
    return Path(run_dir) / AUDIT_DIR / f"rank{rank:05d}.jsonl"


def _read(path: Path) -> list[dict]:
    """Records of one file; a torn last line (a kill mid-write) is skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def prepare(run_dir: str | os.PathLike, resume_step: int | None) -> None:
    """Rank 0, before any rank writes: truncate every file to ``resume_step`` (resume), or
    move an earlier run's audit aside to ``audit.prev-N`` (fresh start)."""
    d = Path(run_dir) / AUDIT_DIR
    if not d.is_dir():
        return
    if resume_step is None:
        n = 1
        while d.with_name(f"{AUDIT_DIR}.prev-{n}").exists():
            n += 1
        os.replace(d, d.with_name(f"{AUDIT_DIR}.prev-{n}"))
        return
    for path in sorted(d.glob("rank*.jsonl")):
        kept = [r for r in _read(path) if r["step"] <= resume_step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)


class AuditLog:
    """One rank's writer (a no-op when disabled)."""

    def __init__(self, run_dir, rank: int, world_size: int, global_batch: int, enabled: bool):
        self.rank, self.world_size, self.global_batch = rank, world_size, global_batch
        self._file = None
        if enabled:
            path = rank_file(run_dir, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    def record(self, step: int, batches) -> None:
        """The rows of this rank's micro-batches of ``step`` (before the step is trained)."""
        if self._file is None:
            return
        rows = [int(i) for mb in batches for i in mb["sample_ids"].tolist()]
        rec = {
            "step": step,
            "epoch": int(batches[0]["epoch"]),
            "rank": self.rank,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            "rows": rows,
        }
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()  # a crash loses at most this line; resume truncates past it anyway

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def check(run_dir: str | os.PathLike) -> dict:
    """Audit report of a run: ``ok`` plus per-epoch counts and every problem found.

    Per epoch: ``rows`` distinct rows consumed, ``repeated`` rows consumed more than once,
    ``missing`` ids below the epoch's largest consumed id that were never consumed,
    ``misplaced`` rows outside their step's global batch, ``empty`` padding rows, and
    ``complete`` (the epoch's last, padded global batch was reached).
    """
    paths = sorted((Path(run_dir) / AUDIT_DIR).glob("rank*.jsonl"))
    by_step: dict[int, list[dict]] = defaultdict(list)
    for path in paths:
        for rec in _read(path):
            by_step[rec["step"]].append(rec)
    problems: list[str] = []
    steps = sorted(by_step)
    if steps and steps != list(range(1, steps[-1] + 1)):
        gaps = sorted(set(range(1, steps[-1] + 1)) - set(steps))
        problems.append(f"steps without any record: {gaps[:10]}")
    epochs: dict[int, dict] = {}
    seen: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    index_in_epoch: dict[int, int] = defaultdict(int)
    for step in steps:
        recs = sorted(by_step[step], key=lambda r: r["rank"])
        world, g, epoch = recs[0]["world_size"], recs[0]["global_batch"], recs[0]["epoch"]
        if [r["rank"] for r in recs] != list(range(world)):
            problems.append(f"step {step}: ranks {[r['rank'] for r in recs]} of a world of {world}")
        if {(r["world_size"], r["global_batch"], r["epoch"]) for r in recs} != {(world, g, epoch)}:
            problems.append(f"step {step}: ranks disagree on world size, batch or epoch")
        rows = [i for r in recs for i in r["rows"]]
        if len(rows) != g:
            problems.append(f"step {step}: {len(rows)} rows for a global batch of {g}")
        k = index_in_epoch[epoch]
        index_in_epoch[epoch] += 1
        e = epochs.setdefault(epoch, dict.fromkeys(_COUNTS, 0) | {"complete": False})
        e["steps"] += 1
        for i in rows:
            if i < 0:
                e["empty"] += 1
                e["complete"] = True
                continue
            seen[epoch][i] += 1
            if not k * g <= i < (k + 1) * g:
                e["misplaced"] += 1
    for epoch, e in epochs.items():
        counts = seen[epoch]
        e["rows"] = len(counts)
        e["repeated"] = sum(c - 1 for c in counts.values())
        e["missing"] = (max(counts) + 1 - len(counts)) if counts else 0
        for key in ("repeated", "missing", "misplaced"):
            if e[key]:
                problems.append(f"epoch {epoch}: {e[key]} {key} rows")
    return {
        "ok": not problems and bool(steps),
        "steps": len(steps),
        "epochs": epochs,
        "problems": problems or ([] if steps else [f"{run_dir}: no audit records"]),
    }
