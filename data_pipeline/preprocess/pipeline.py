"""Preprocessing: corpus -> webdataset shards + ``manifest.json`` (``run``; the command is
``python -m data_pipeline preprocess``, ``data_pipeline.commands.preprocess``).

Runs as one process, as ``--workers N`` local processes, or as N ranks under ``mpirun -n N``.
The input is cut into work units by size alone (``partition``), every unit
writes its own shards (``units``), and rank 0 writes the manifest once all units are
done, so the shards are the same bytes for any number of ranks or workers.

A re-run with the same inputs, tokenizer and options into the same ``--out`` skips the units
that are finished and redoes the others; anything else in ``--out`` is refused.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field

from data_pipeline.common import CommandError
from data_pipeline.preprocess.mpi import get_comm, pool_map
from data_pipeline.preprocess.out_dir import check_out_dir, finish_manifest
from data_pipeline.preprocess.partition import (
    WorkUnit,
    apply_line_counts,
    assign,
    count_newlines,
    count_tasks,
    plan_units,
)
from data_pipeline.preprocess.units import UnitContext, load_progress, process_unit, unit_stem
from data_pipeline.readers import (
    ReaderError,
    ReadOptions,
    ReadStats,
    list_inputs,
)
from data_pipeline.shards import FORMAT_VERSION, ShardFormatError, token_dtype
from data_pipeline.tokenizer import Tokenizer, TokenizerError


@dataclass
class PreprocessConfig:
    """What to preprocess and how (the command-line flags)."""

    inputs: list[str]
    """Training corpus: files, directories (recursive) and globs."""
    tokenizer: str
    """Tokenizer directory (from ``train-tokenizer``)."""
    out: str
    """Shard directory to create (or to resume)."""
    valid_inputs: list[str] = field(default_factory=list)
    """Files whose documents all go to the valid split."""
    valid_fraction: float = 0.0
    """Share of ``inputs`` documents sent to valid, by a stable hash of the document id."""
    shard_bytes: int = 128 << 20
    """A shard is closed once it reaches this size."""
    unit_bytes: int = 64 << 20
    """Target input bytes per work unit (defines the shards; independent of ranks)."""
    read: ReadOptions = field(default_factory=ReadOptions)
    """How input files become documents (text field, txt document separator, bad UTF-8)."""
    segment_zh: bool = False
    """Segment Chinese text into words (jieba) for word-start flags."""
    workers: int = 1
    """Local processes (per rank under MPI)."""

    def __post_init__(self):
        if not 0.0 <= self.valid_fraction < 1.0:
            raise CommandError(f"--valid-fraction must be in [0, 1), got {self.valid_fraction}")
        if self.shard_bytes < 1024 or self.unit_bytes < 1:
            raise CommandError("--shard-size must be at least 1024 bytes and --unit-bytes positive")
        if self.workers < 1:
            raise CommandError(f"--workers must be at least 1, got {self.workers}")


def _load_tokenizer(path: str):
    try:
        return Tokenizer.load(path)
    except TokenizerError as e:
        raise CommandError(str(e)) from e


def _plan(cfg: PreprocessConfig, tok) -> tuple[UnitContext, list[WorkUnit], ReadStats, dict]:
    """Rank 0: list the inputs, cut them into units, check and claim the output directory."""
    stats = ReadStats()
    files = list_inputs(cfg.inputs, stats)
    sources = ["train"] * len(files)
    if cfg.valid_inputs:
        vfiles = list_inputs(cfg.valid_inputs, stats)
        clash = {f.path for f in files} & {f.path for f in vfiles}
        if clash:
            raise CommandError(f"{sorted(clash)[0]}: given both as --input and --valid-input")
        files, sources = files + vfiles, sources + ["valid"] * len(vfiles)
    stats.files = len(files)
    units = plan_units(files, sources, cfg.read, cfg.unit_bytes)
    run = {
        "tokenizer": tok.fingerprint,
        "options": {
            "text_field": cfg.read.text_field,
            "doc_sep": cfg.read.doc_sep,
            "encoding_errors": cfg.read.encoding_errors,
            "segment_zh": cfg.segment_zh,
            "valid_fraction": cfg.valid_fraction,
            "shard_bytes": cfg.shard_bytes,
            "unit_bytes": cfg.unit_bytes,
        },
        "inputs": [[f.name, s, f.size, f.mtime_ns] for f, s in zip(files, sources, strict=True)],
    }
    # The shard format is part of the key: units finished by an older format are redone.
    keyed = {**run, "format": FORMAT_VERSION}
    run_key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:32]
    check_out_dir(cfg.out, run)
    ctx = UnitContext(
        files,
        cfg.read,
        cfg.out,
        cfg.tokenizer,
        token_dtype(tok.vocab_size),
        cfg.shard_bytes,
        cfg.valid_fraction,
        cfg.segment_zh,
        run_key,
    )
    return ctx, units, stats, run


# --- local worker processes (spawned: no inherited MPI or tokenizer thread state) ---
_W: dict = {}


def _worker_init(ctx: UnitContext) -> None:
    _W["ctx"], _W["tok"] = ctx, None


def _worker_count(task: tuple[int, int, int]) -> int:
    return count_newlines(_W["ctx"].files[task[0]].path, task[1], task[2])


def _worker_unit(unit: WorkUnit) -> dict:
    ctx = _W["ctx"]
    rec = load_progress(ctx, unit.index)
    if rec is not None:
        return {**rec, "resumed": True}
    if _W["tok"] is None:  # loaded on first use: a fully resumed run never loads it
        _W["tok"] = _load_tokenizer(ctx.tokenizer_dir)
    return process_unit(ctx, unit, _W["tok"])


class _Reported(CommandError):
    """A failure every rank already knows about (raised on all ranks alike)."""


def _rank_work(comm, ctx: UnitContext, units: list[WorkUnit], workers: int, tok) -> list[dict]:
    """Number the lines of split files (all ranks), then do this rank's units."""
    _worker_init(ctx)
    _W["tok"] = tok
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers, _worker_init, (ctx,))
    try:
        tasks = count_tasks(units)
        mine = assign([b - a for _, a, b in tasks], comm.size)[comm.rank]
        sizes = [tasks[i][2] - tasks[i][1] for i in mine]
        counts, err = _attempt(
            lambda: pool_map(pool, _worker_count, [tasks[i] for i in mine], sizes), comm
        )
        # every rank reaches this allgather, failed or not, so a failure cannot hang the job
        parts = comm.allgather((dict(zip(mine, counts or [], strict=False)), err))
        errors = [e for _, e in parts if e is not None]
        if errors:
            raise _Reported(errors[0])
        merged = {k: v for part, _ in parts for k, v in part.items()}
        apply_line_counts(units, tasks, [merged[i] for i in range(len(tasks))])
        mine = assign([u.weight for u in units], comm.size)[comm.rank]

        def report(k: int, rec: dict) -> None:
            i, what = mine[k], "already done" if rec.get("resumed") else "done"
            n = len(rec["shards"])
            print(f"unit {unit_stem(i)} ({i + 1}/{len(units)}) {what}: {n} shards", file=sys.stderr)

        weights = [units[i].weight for i in mine]
        recs = pool_map(pool, _worker_unit, [units[i] for i in mine], weights, report)
    except BaseException:
        if pool is not None:
            pool.terminate()  # do not finish the other units of a failed run
        raise
    if pool is not None:
        pool.close()
        pool.join()
    return recs


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes (for tokens/s per core)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _attempt(fn, comm):
    """(fn(), None), or (None, one-line reason) for any failure: a rank must never leave the
    collectives because of an exception (the other ranks would wait for it forever)."""
    where = f"rank {comm.rank}: " if comm.size > 1 else ""
    try:
        return fn(), None
    except _Reported as e:
        return None, str(e)
    except (CommandError, ReaderError, ShardFormatError, OSError) as e:
        return None, where + str(e)
    except Exception as e:  # a bug: keep the traceback, still fail cleanly
        traceback.print_exc()
        return None, f"{where}unexpected {type(e).__name__}: {e} (traceback above)"


def run(cfg: PreprocessConfig, comm=None) -> dict | None:
    """Preprocess on this rank; rank 0 returns the manifest (as a dict, plus the run's
    ``seconds``, which the saved manifest leaves out so that it is reproducible), others None.

    Every rank reaches every collective even when one fails, so an error never hangs the
    job: the failure travels to rank 0, which raises it as a CommandError (other ranks return).
    """
    comm = comm or get_comm()
    t0, cpu0 = time.time(), _cpu_seconds()
    tok, plan, err = None, None, None
    if comm.rank == 0:
        loaded, err = _attempt(lambda: _load_tokenizer(cfg.tokenizer), comm)
        if err is None:
            tok = loaded
            plan, err = _attempt(lambda: _plan(cfg, tok), comm)
    plan, err = comm.bcast((plan, err))
    if err is not None:
        if comm.rank == 0:
            raise CommandError(err)
        return None
    ctx, units, stats, _run_info = plan
    recs, err = _attempt(lambda: _rank_work(comm, ctx, units, cfg.workers, tok), comm)
    gathered = comm.gather((recs or [], err, _cpu_seconds() - cpu0))
    if comm.rank != 0:
        return None
    errors = [e for _, e, _ in gathered if e is not None]
    if errors:
        raise CommandError(errors[0])
    manifest = finish_manifest(
        ctx, tok, [r for rs, _, _ in gathered for r in rs], len(units), stats
    )
    manifest["seconds"] = round(time.time() - t0, 3)
    others = sum(c for _, _, c in gathered[1:])  # rank 0's own CPU time is counted up to now
    manifest["cpu_seconds"] = round(others + _cpu_seconds() - cpu0, 3)
    return manifest
