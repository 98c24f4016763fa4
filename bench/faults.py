"""Fault injection: kills, kills mid-save, world-size changes, damaged data, malicious pickles.

    python bench/faults.py [--trials 10] [--quick] [--seed 0] [--only CASES]
                           [--results FILE] [--no-append]

Every run is a real job, launched as users launch it: ``deepspeed --num_gpus 2
launch/pretrain.sh --config configs/debug-roberta.toml ...`` (2 gloo ranks on CPU; the
1-rank phase of the world-size case is ``python -m pretrain train``), on synthetic shards
(``pretrain.testing.synthetic_shards``) in a temporary directory removed at the end.
Cases (``--only`` takes a comma-separated subset of the names in brackets):

1. [kill] ``kill -9`` of the job's whole process group (launcher, ranks, DataLoader
   workers) once a random step after the first checkpoint is logged (seeded RNG, plus a
   random fraction of a step), then the same command again: every step's training loss and
   every evaluation loss must be bit-identical to an unbroken run of the same config
   (dropout on; ZeRO 0 and 1 alternate between trials); ``--trials`` trials with
   ``data.num_workers=0`` and as many with 2.
2. [save] a kill in the middle of a checkpoint save (``debug.exit_during_save_step``): the
   previous checkpoint must stay the newest complete one and the resumed run be exact.
3. [world] 2 ranks -> 1 rank -> 2 ranks at ZeRO 1: SIGTERM to the rank processes at a
   random step, ``python -m pretrain train`` on one rank for a few steps (``max_steps``),
   then 2 ranks to the end; losses within 1e-5 of the uninterrupted 2-rank run (across
   world sizes they match to reduction order, not bitwise; dropout off, since the per-rank
   RNG streams are re-seeded at a new world size) and the sample audit clean.
4. [damage] on 2 ranks: a truncated shard, 64 bytes flipped in the middle of a shard (same
   size: found as it is read), a shard deleted while the run is going (one no process has
   open yet), a garbage manifest.json: the time from the start to the job's exit, the exit
   status, and whether the output has exactly one line starting with ``error:`` and no
   traceback. The flipped shard again with ``data.on_corrupt=skip``: the run must finish
   and summary.json count the samples lost.
5. [pickle] a checkpoint file whose unpickling would create a marker file: resuming (2
   ranks) and ``python -m pretrain export --run`` must refuse it in one line, exit 2, and
   the payload never run (checked live afterwards: a full unpickle does create the marker).

"samples lost" comes from ``python -m pretrain.audit RUN_DIR --json`` (runs with
``logging.audit_samples=true``: rows missing, and rows repeated, within the epoch) or from
summary.json (``data.on_corrupt=skip``). Anything that misbehaves (a resumed run not exact,
a traceback, a wrong exit status, a hang) is listed under "Misbehaviour" with its command
and an excerpt of its output. Prints progress per trial, then a table; appends the section
to bench/RESULTS.md; the exit status is 1 when anything misbehaved. ``--quick``: 1 trial
per case, fewer steps (checks the script works, measures nothing; still ~5 min on 2 cores:
every case is a few 2-rank launches of ~8 s each). The full run takes ~15 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, add_output_args, emit, load_average, machine, section_start

from pretrain.testing import (
    clean_env,
    deepspeed_command,
    losses,
    synthetic_shards,
    train_command,
)

CASES = ("kill", "save", "world", "damage", "pickle")
EPOCH = 58  # steps of epoch 0 of the synthetic shards at seq 32, global batch 16
TIMEOUT = 300.0  # any single job: longer than this is reported as a hang
JOBS: list[Job] = []  # every job started: their process groups are killed on the way out


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One launched job: its own process group (the launcher, ranks and loader workers)."""

    cmd: list[str]
    log: Path
    proc: subprocess.Popen
    started: float
    rc: int | str | None = None  # exit status, or "hang"
    seconds: float = 0.0

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def start(cmd: list[str], log: Path, env: dict | None = None) -> Job:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd,
            cwd=log.parent,
            env=env or clean_env(PYTHONPATH=str(REPO)),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes everything
        )
    JOBS.append(Job(cmd, log, proc, time.monotonic()))
    return JOBS[-1]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours any more
        return True


def kill_group(job: Job, sig: int = signal.SIGKILL) -> None:
    """``kill -SIG -PGID``; for SIGKILL, wait until no process of the group is left."""
    try:
        os.killpg(job.proc.pid, sig)
    except ProcessLookupError:
        pass
    if sig == signal.SIGKILL:
        try:
            job.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        deadline = time.monotonic() + 30
        while group_alive(job.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def finish(job: Job, timeout: float = TIMEOUT) -> Job:
    """Wait for the job; past ``timeout`` kill its group and call it a hang."""
    left = max(1.0, timeout - (time.monotonic() - job.started))
    try:
        job.rc = job.proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        kill_group(job)
        job.rc = "hang"
    job.seconds = time.monotonic() - job.started
    if group_alive(job.proc.pid):  # stragglers (e.g. a worker outliving its rank)
        kill_group(job)
    return job


def run(cmd: list[str], log: Path, timeout: float = TIMEOUT) -> Job:
    return finish(start(cmd, log), timeout)


# The same commands the test suite runs (pretrain.testing): 2 ranks under DeepSpeed's
# launcher, or one process.
deepspeed = deepspeed_command
one_rank = train_command


def logged_step(run_dir: Path) -> int:
    """The largest step in metrics.jsonl (a torn last line is ignored)."""
    path = run_dir / "metrics.jsonl"
    best = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            best = max(best, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue
    return best


def wait_for_step(job: Job, run_dir: Path, step: int, timeout: float = 180.0) -> bool:
    """True once ``step`` is logged; False if the job ended first or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.proc.poll() is not None:
            return False
        if logged_step(run_dir) >= step:
            return True
        time.sleep(0.02)
    return False


def record(run_dir: Path) -> dict:
    return {"loss": losses(run_dir), "eval": losses(run_dir, "eval_loss")}


def compare(got: dict, want: dict, tol: float = 0.0) -> tuple[bool, str]:
    """(equal, detail): bitwise (``tol`` 0) or within ``tol`` relative, every step."""
    worst, where = 0.0, ""
    for key in ("loss", "eval"):
        a, b = got[key], want[key]
        if sorted(a) != sorted(b):
            return False, f"{key}: steps {sorted(a)} vs reference {sorted(b)}"
        for step in sorted(b):
            diff = abs(a[step] - b[step]) / max(1.0, abs(b[step]))
            if diff > worst:
                worst, where = diff, f"{key} step {step}: {a[step]!r} vs {b[step]!r}"
    ok = worst <= tol if tol else worst == 0.0
    return ok, ("bit-identical" if worst == 0 else f"max rel. diff {worst:.1e} ({where})")


def audit_report(run_dir: Path) -> dict | None:
    """``python -m pretrain.audit RUN_DIR --json`` (None if it printed no report)."""
    res = subprocess.run(
        [sys.executable, "-m", "pretrain.audit", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO)),
        timeout=120,
    )
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError:
        return None


def audit(run_dir: Path) -> dict:
    """Rows lost (missing) and repeated within the epochs, from the sample audit."""
    rep = audit_report(run_dir)
    if rep is None:
        return {"ok": False, "lost": None, "repeated": None, "problems": ["no audit report"]}
    epochs = rep["epochs"].values()
    return {
        "ok": rep["ok"],
        "lost": sum(e["missing"] for e in epochs),
        "repeated": sum(e["repeated"] for e in epochs),
        "problems": rep["problems"],
    }


def audit_epochs(run_dir: Path) -> dict:
    """{epoch: (steps, complete)} of a run's sample audit."""
    rep = audit_report(run_dir) or {"epochs": {}}
    return {int(k): (e["steps"], e["complete"]) for k, e in rep["epochs"].items()}


def resumed_from(job: Job) -> int | None:
    m = re.search(r"resuming from \S+ \(step (\d+)\)", job.output())
    return int(m.group(1)) if m else None


def one_error_line(job: Job) -> tuple[bool, list[str], bool]:
    """(exit 2 + exactly one ``error:`` line + no traceback, the error lines, traceback?)"""
    out = job.output()
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    tb = "Traceback" in out
    return job.rc == 2 and len(errors) == 1 and not tb, errors, tb


def tail(text: str, n: int = 8) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- the bench


@dataclass
class Tally:
    """Exact trials and the sample audit's counts over the trials of one case."""

    exact: int = 0
    lost: int = 0
    repeated: int = 0

    def add(self, exact: bool, run_dir: Path) -> dict:
        """Count one finished trial; returns its audit report."""
        au = audit(run_dir)
        self.exact += bool(exact)
        self.lost += au["lost"] or 0
        self.repeated += au["repeated"] or 0
        return au

    def fill(self, row: Row, note: str = "") -> None:
        row.exact = f"{self.exact}/{row.trials}{note}"
        row.lost = f"{self.lost} ({self.repeated} repeated)"


@dataclass
class Row:
    case: str
    trials: int = 0
    exact: str = "n/a"
    lost: str = "n/a"
    fail: str = "n/a"


@dataclass
class Bench:
    base: Path
    shards: Path
    quick: bool
    rng: random.Random
    steps: int
    every: int
    delay: float
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _refs: dict = field(default_factory=dict)
    _n: int = 0

    def dir(self, name: str) -> Path:
        self._n += 1
        d = self.base / f"{self._n:03d}-{name}"
        d.mkdir(parents=True)
        return d

    def problem(self, case: str, job: Job | None, what: str) -> None:
        text = f"**{case}**: {what}"
        if job is not None:
            text += (
                f"\n  command: `{shlex.join(job.cmd)}`\n  exit status {job.rc} after "
                f"{job.seconds:.1f} s; output ends:\n"
                + "\n".join("      " + ln for ln in tail(job.output()).splitlines())
            )
        self.problems.append(text)
        print(f"  MISBEHAVIOUR: {what}", flush=True)

    # -- configs ------------------------------------------------------------------------
    def train_args(self, *extra: str) -> list[str]:
        """The kill/save/pickle runs: dropout on (the preset's), checkpoints every few steps."""
        n = self.steps
        return [
            f"max_steps={n}",
            f"schedule.total_steps={n}",  # a stopped run keeps the same schedule
            "data.seq_len=32",
            "batch.global_batch_size=16",
            "batch.micro_batch_size=4",  # 2 micro-batches a step per rank
            f"checkpoint.every_steps={self.every}",
            "checkpoint.keep_last=3",
            "checkpoint.export_hf=false",
            f"eval.every_steps={4 if n > 6 else 3}",
            "eval.max_sequences=16",
            "eval.at_end=false",
            "logging.audit_samples=true",
            *extra,
        ]

    def reference(self, stage: int, workers: int, *extra: str) -> dict:
        """The unbroken run of a config (cached): its losses and evaluation losses."""
        key = (stage, workers, extra)
        if key not in self._refs:
            d = self.dir(f"reference-zero{stage}-w{workers}")
            args = self.train_args(f"zero.stage={stage}", f"data.num_workers={workers}", *extra)
            job = run(deepspeed(self.shards, d / "run", *args), d / "log.txt")
            if job.rc != 0:
                self.problem("reference run", job, "the unbroken reference run failed")
                raise SystemExit(1)
            self._refs[key] = (record(d / "run"), d / "run")
            print(f"  reference ZeRO {stage}, {workers} workers: {job.seconds:.1f} s", flush=True)
        return self._refs[key][0]

    # -- 1. kill -9 -----------------------------------------------------------------------
    def kill(self, trials: int) -> None:
        first = self.every + 1  # kills land after the first checkpoint is complete
        for workers in (0, 2):
            row = Row(f"kill -9 of the process group at a random step, {workers} workers")
            tally, redone, gone = Tally(), [], []
            for t in range(trials):
                stage = t % 2
                ref = self.reference(stage, workers)
                target = self.rng.randint(first, self.steps - 2)
                jitter = self.rng.uniform(0, self.delay)
                d = self.dir(f"kill-w{workers}-{t}")
                cmd = deepspeed(
                    self.shards,
                    d / "run",
                    *self.train_args(
                        f"zero.stage={stage}",
                        f"data.num_workers={workers}",
                        f"debug.step_delay_s={self.delay}",
                    ),
                )
                t0 = time.monotonic()
                row.trials += 1  # a trial that fails in any way counts as not exact
                job = start(cmd, d / "killed.txt")
                if not wait_for_step(job, d / "run", target):
                    finish(job)
                    what = "timed out" if job.rc == "hang" else f"exited with status {job.rc}"
                    self.problem(
                        row.case, job, f"trial {t}: the run {what} before step {target} (no kill)"
                    )
                    continue
                time.sleep(jitter)
                at = logged_step(d / "run")
                t_kill = time.monotonic()
                kill_group(job)
                gone.append(time.monotonic() - t_kill)
                finish(job)
                if group_alive(job.proc.pid):
                    self.problem(row.case, job, "processes of the group survived SIGKILL")
                again = run(cmd, d / "resumed.txt")
                frm = resumed_from(again)
                if again.rc != 0:
                    self.problem(row.case, again, "the resumed run failed")
                    continue
                ok, detail = compare(record(d / "run"), ref)
                au = tally.add(ok, d / "run")
                if frm is not None:
                    redone.append(at - frm)
                if not ok:
                    self.problem(row.case, again, f"trial {t}: resumed run not exact: {detail}")
                if not au["ok"]:
                    self.problem(row.case, None, f"trial {t}: audit: {au['problems']}")
                print(
                    f"[kill w{workers} {t + 1}/{trials}] ZeRO {stage}: killed after step {at} "
                    f"(drawn {target} + {jitter:.2f} s), "
                    + (f"resumed from step {frm}" if frm is not None else "started afresh")
                    + f"; {detail}; "
                    f"audit {au['lost']} lost, {au['repeated']} repeated "
                    f"({time.monotonic() - t0:.1f} s)",
                    flush=True,
                )
            tally.fill(row)
            self.rows.append(row)
            if redone:
                self.notes.append(
                    f"kill -9, {workers} workers: steps redone after the resume "
                    f"{min(redone)}-{max(redone)} (mean {sum(redone) / len(redone):.1f}); "
                    f"the process group was gone {max(gone):.2f} s after the kill at most."
                )

    # -- 2. kill during a save --------------------------------------------------------------
    def save(self, trials: int) -> None:
        from pretrain.checkpoint import read_marker, tag_for

        row = Row("kill during a checkpoint save (`debug.exit_during_save_step`)")
        saves = list(range(2 * self.every, self.steps, self.every))  # a previous one exists
        tally = Tally()
        for t in range(trials):
            stage, workers = t % 2, 2 * (t % 2)
            ref = self.reference(stage, workers)
            at = saves[t % len(saves)]
            d = self.dir(f"save-{t}")
            args = self.train_args(f"zero.stage={stage}", f"data.num_workers={workers}")
            job = run(
                deepspeed(self.shards, d / "run", *args, f"debug.exit_during_save_step={at}"),
                d / "killed.txt",
            )
            row.trials += 1
            root = d / "run" / "checkpoints"
            latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else ""
            torn = (root / tag_for(at)).is_dir() and read_marker(root / tag_for(at)) is None
            if job.rc in (0, "hang"):
                self.problem(row.case, job, f"exit during the step-{at} save: status {job.rc}")
            if latest != tag_for(at - self.every) or not torn:
                self.problem(
                    row.case,
                    job,
                    f"after the kill in the step-{at} save: latest = {latest!r}, "
                    f"{tag_for(at)} torn (no COMPLETE): {torn}",
                )
            again = run(deepspeed(self.shards, d / "run", *args), d / "resumed.txt")
            frm = resumed_from(again)
            if again.rc != 0:
                self.problem(row.case, again, "the resumed run failed")
                continue
            ok, detail = compare(record(d / "run"), ref)
            au = tally.add(ok and frm == at - self.every, d / "run")
            if not ok or frm != at - self.every:
                self.problem(row.case, again, f"resumed from {frm}, {detail}")
            print(
                f"[save {t + 1}/{trials}] ZeRO {stage}, {workers} workers: exit {job.rc} in the "
                f"step-{at} save; latest {latest}; resumed from step {frm}; {detail}; audit "
                f"{au['lost']} lost, {au['repeated']} repeated ({job.seconds + again.seconds:.1f} s)",
                flush=True,
            )
        tally.fill(row)
        self.rows.append(row)

    # -- 3. 2 -> 1 -> 2 ranks -------------------------------------------------------------
    def world(self, trials: int) -> None:
        import psutil

        row = Row("2 -> 1 -> 2 ranks, ZeRO 1 (SIGTERM, then `max_steps`)")
        nodrop = (
            "model.overrides.hidden_dropout_prob=0.0",
            "model.overrides.attention_probs_dropout_prob=0.0",
        )
        ref = self.reference(1, 0, *nodrop)
        tally, worst = Tally(), []
        # (SIGTERM once this step is logged, steps on one rank): distinct for every trial
        plans = [(a, b) for a in range(2, self.steps // 2) for b in (2, 3)]
        self.rng.shuffle(plans)
        for t in range(trials):
            d = self.dir(f"world-{t}")
            args = self.train_args("zero.stage=1", *nodrop)
            stop1, on_one = plans[t % len(plans)]
            t0 = time.monotonic()
            job = start(
                deepspeed(self.shards, d / "run", *args, f"debug.step_delay_s={self.delay}"),
                d / "phase1.txt",
            )
            if wait_for_step(job, d / "run", stop1):
                ranks = [
                    p
                    for p in psutil.Process(job.proc.pid).children(recursive=True)
                    if any(a.startswith("--local_rank=") for a in p.cmdline())
                ]
                for p in ranks:
                    p.terminate()
            finish(job)
            row.trials += 1
            at1 = logged_step(d / "run")
            if job.rc != 0 or "checkpoint saved" not in job.output():
                self.problem(row.case, job, "SIGTERM to the ranks: no clean stop with a save")
                continue
            at2 = min(at1 + on_one, self.steps - 1)
            if at2 <= at1:
                self.problem(row.case, job, f"SIGTERM after step {stop1} stopped at {at1}: late")
                continue
            one = run(one_rank(self.shards, d / "run", *args, f"max_steps={at2}"), d / "phase2.txt")
            two = run(deepspeed(self.shards, d / "run", *args), d / "phase3.txt")
            bad = next((j for j in (one, two) if j.rc != 0), None)
            if bad is not None:
                self.problem(row.case, bad, "a phase of the 2 -> 1 -> 2 chain failed")
                continue
            ok, detail = compare(record(d / "run"), ref, tol=1e-5)
            m = re.search(r"max rel\. diff (\S+)", detail)
            worst.append(float(m.group(1)) if m else 0.0)
            au = tally.add(ok, d / "run")
            if not ok:
                self.problem(row.case, two, f"trial {t}: not within 1e-5: {detail}")
            if not au["ok"]:
                self.problem(row.case, None, f"trial {t}: audit: {au['problems']}")
            print(
                f"[world {t + 1}/{trials}] 2 ranks to step {at1} (SIGTERM), 1 rank to {at2}, "
                f"2 ranks to {self.steps} (resumed from {resumed_from(one)}, then "
                f"{resumed_from(two)}); {detail}; audit {au['lost']} lost, {au['repeated']} "
                f"repeated ({time.monotonic() - t0:.1f} s)",
                flush=True,
            )
        tally.fill(row, " within 1e-5" + (f" (max rel. diff {max(worst):.0e})" if worst else ""))
        self.rows.append(row)

    # -- 4. damaged data --------------------------------------------------------------------
    def copy_shards(self, d: Path) -> Path:
        dst = d / "shards"
        shutil.copytree(self.shards, dst)
        return dst

    def damage_args(self, steps: int, *extra: str) -> list[str]:
        return [
            f"max_steps={steps}",
            "data.seq_len=32",
            "batch.global_batch_size=16",
            "batch.micro_batch_size=4",
            "checkpoint.export_hf=false",
            "eval.every_steps=0",
            "eval.at_end=false",
            *extra,
        ]

    def failed_row(self, case: str, job: Job, expect: str | None = None) -> Row:
        ok, errors, tb = one_error_line(job)
        shape = (
            "exit 2, one `error:` line, no traceback"
            if ok
            else f"exit {job.rc}, {len(errors)} `error:` lines" + (", traceback" if tb else "")
        )
        print(f"[damage] {case}: {job.seconds:.1f} s, {shape}", flush=True)
        if errors:
            print(f"  {errors[0][:300]}", flush=True)
            self.notes.append(f"{case}: `{errors[0][:260]}`")
        if not ok:
            self.problem(case, job, f"not a one-line error with exit status 2 ({shape})")
        elif expect is not None and expect not in errors[0]:
            self.problem(case, job, f"the error line does not mention {expect!r}")
        return Row(case, 1, fail=f"{job.seconds:.1f} s; {shape}")

    def skipped(self, case: str, job: Job, run_dir: Path, damaged: int) -> None:
        """A run with ``data.on_corrupt=skip``: it must finish, and summary.json count the
        ``damaged`` documents as lost."""
        row = Row(case, 1)
        summary = run_dir / "summary.json"
        if job.rc == 0 and summary.is_file():
            s = json.loads(summary.read_text())
            row.lost = f"{s['samples_lost']} (summary.json)"
            row.fail = f"finished {logged_step(run_dir)} steps, exit 0 ({job.seconds:.1f} s)"
            per_rank = [d.get("samples_lost") for d in s.get("data", [])]
            self.notes.append(
                f"{case}: {damaged} document(s) damaged; summary.json samples_lost "
                f"{s['samples_lost']}, per rank {per_rank}."
            )
            if s["samples_lost"] != damaged:
                self.problem(
                    case,
                    job,
                    f"summary.json counts {s['samples_lost']} samples lost for {damaged} damaged "
                    f"document(s) (per rank: {per_rank}; the ranks' counts are summed)",
                )
        else:
            row.fail = f"exit {job.rc}"
            self.problem(case, job, "the run with on_corrupt=skip did not finish")
        print(f"[damage] {case}: {row.lost}; {row.fail}", flush=True)
        self.rows.append(row)

    def flip(self, shards: Path) -> tuple[str, int]:
        """XOR 64 bytes at the middle of a train shard (inside the record that holds the
        middle byte); returns (shard name, document)."""
        from data_pipeline.shards import Manifest, index_layout, load_index

        info = Manifest.load(shards).split("train")[0]
        index = load_index(shards, info)
        mid = info.bytes // 2
        if index.shape[1] > 8:  # format >= 2: the record [record_offset, record_end)
            lay = index_layout(index)
            starts, ends = index[:, lay.record_offset], index[:, lay.record_end]
        else:
            starts, ends = index[:, 0], index[:, 0] + 2 * index[:, 1]
        inside = (starts <= mid) & (mid < ends)
        doc = int(inside.argmax()) if inside.any() else int(abs(starts - mid).argmin())
        at = min(max(mid, int(starts[doc])), int(ends[doc]) - 64)
        with open(shards / info.name, "r+b") as f:
            f.seek(at)
            data = f.read(64)
            f.seek(at)
            f.write(bytes(b ^ 0xFF for b in data))
        return info.name, doc

    def damage(self) -> None:
        from data_pipeline.shards import Manifest

        long = EPOCH + 12  # more than an epoch: every document is read
        # Truncated shard: the start-up size check.
        d = self.dir("truncated")
        shards = self.copy_shards(d)
        name = Manifest.load(shards).split("train")[1].name
        with open(shards / name, "r+b") as f:
            f.truncate(os.path.getsize(shards / name) // 2)
        job = run(deepspeed(shards, d / "run", *self.damage_args(6)), d / "log.txt")
        self.rows.append(self.failed_row("truncated shard (half its size)", job, name))
        # 64 bytes flipped mid-shard: found as it is read, in a loader worker.
        d = self.dir("flipped")
        shards = self.copy_shards(d)
        name, doc = self.flip(shards)
        job = run(
            deepspeed(shards, d / "run", *self.damage_args(long, "data.num_workers=2")),
            d / "log.txt",
        )
        row = self.failed_row("64 bytes flipped mid-shard, 2 workers", job, name)
        row.case += f" (document {doc})"
        row.fail += f", after step {logged_step(d / 'run')}"
        self.rows.append(row)
        # The same with data.on_corrupt=skip: the run finishes, summary.json counts the loss.
        d = self.dir("flipped-skip")
        shards = self.copy_shards(d)
        self.flip(shards)
        # One epoch exactly (58 steps of these shards): the document is read once, by one rank.
        args = self.damage_args(
            EPOCH, "data.num_workers=2", "data.on_corrupt=skip", "logging.audit_samples=true"
        )
        job = run(deepspeed(shards, d / "run", *args), d / "log.txt")
        self.skipped("64 bytes flipped mid-shard, `data.on_corrupt=skip`", job, d / "run", 1)
        if job.rc == 0:
            epochs = audit_epochs(d / "run")
            if epochs != {0: (EPOCH, True)}:
                self.notes.append(
                    f"flipped, skip: the {EPOCH} steps were not exactly epoch 0 ({epochs}): the "
                    "damaged document may have been read in two epochs."
                )
        # A truncated shard with data.on_corrupt=skip: dropped at start-up, its documents lost.
        d = self.dir("truncated-skip")
        shards = self.copy_shards(d)
        info = Manifest.load(shards).split("train")[1]
        with open(shards / info.name, "r+b") as f:
            f.truncate(info.bytes // 2)
        args = self.damage_args(6, "data.on_corrupt=skip")
        job = run(deepspeed(shards, d / "run", *args), d / "log.txt")
        self.skipped("truncated shard, `data.on_corrupt=skip`", job, d / "run", info.documents)
        # A shard deleted while the run is going (one no process has open yet).
        d = self.dir("deleted")
        shards = self.copy_shards(d)
        args = self.damage_args(
            long, "debug.step_delay_s=0.1", "data.shuffle_block=1", "data.num_workers=2"
        )
        job = start(deepspeed(shards, d / "run", *args), d / "log.txt")
        deleted = []
        if wait_for_step(job, d / "run", 1):
            train = [i.name for i in Manifest.load(shards).split("train")]
            deleted = [n for n in train if n not in open_files(job.proc.pid)] or train
            for n in deleted[:1] if len(deleted) < len(train) else deleted:
                (shards / n).unlink()
        finish(job)
        gone = "a train shard no process had open" if len(deleted) == 1 else "every train shard"
        row = self.failed_row("shard deleted mid-run", job, "unreadable mid-run")
        row.fail += f", after step {logged_step(d / 'run')}"
        self.notes.append(f"shard deleted mid-run: {gone} was deleted once step 1 was logged.")
        self.rows.append(row)
        # A garbage manifest.
        d = self.dir("manifest")
        shards = self.copy_shards(d)
        (shards / "manifest.json").write_text("{garbage")
        job = run(deepspeed(shards, d / "run", *self.damage_args(6)), d / "log.txt")
        self.rows.append(self.failed_row("garbage manifest.json", job, "manifest.json"))

    # -- 5. malicious pickle ----------------------------------------------------------------
    def pickle(self) -> None:
        import torch

        from pretrain.checkpoint import latest_tag

        self.reference(1, 0)
        src = self._refs[(1, 0, ())][1]
        files = ["mp_rank_00_model_states.pt"]
        if not self.quick:
            files.append("zero_pp_rank_0_mp_rank_00_optim_states.pt")
        rows = {
            "resume": Row("malicious pickle in a checkpoint: resume (2 ranks)"),
            "export": Row("malicious pickle in a checkpoint: `export --run`"),
        }
        ran_any, live, times = False, [], {"resume": [], "export": []}
        for name in files:
            d = self.dir("pickle")
            run_dir = d / "run"
            shutil.copytree(src, run_dir)
            tag = latest_tag(run_dir / "checkpoints")
            marker = d / "PAYLOAD_RAN"
            bad = run_dir / "checkpoints" / tag / name
            torch.save({"module": {}, "optimizer_state_dict": Payload(marker)}, bad)
            args = self.train_args("zero.stage=1", f"max_steps={self.steps + 2}")
            jobs = {
                "resume": run(deepspeed(self.shards, run_dir, *args), d / "resume.txt"),
                "export": run(
                    [sys.executable, "-m", "pretrain", "export", "--run", str(run_dir), "--out",
                     str(d / "hf")],
                    d / "export.txt",
                ),
            }  # fmt: skip
            for what, job in jobs.items():
                row = rows[what]
                ok, errors, tb = one_error_line(job)
                row.trials += 1
                ran = marker.exists()
                ran_any |= ran
                times[what].append(job.seconds)
                if not ok or "refused to load" not in errors[0]:
                    self.problem(row.case, job, f"{name}: not refused in one line")
                if ran:
                    self.problem(row.case, job, f"{name}: THE PAYLOAD RAN")
                print(
                    f"[pickle] {name}, {what}: exit {job.rc}, {len(errors)} error line(s)"
                    f"{', traceback' if tb else ''}, payload ran: {ran} ({job.seconds:.1f} s)",
                    flush=True,
                )
                if errors and what == "resume" and name == files[0]:
                    self.notes.append(f"malicious pickle, resume: `{errors[0][:260]}`")
            # The payload is live: a full unpickle (in a child process) does run it.
            subprocess.run(
                [sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)", str(bad)],
                capture_output=True, env=clean_env(PYTHONPATH=str(REPO)), timeout=120,
            )  # fmt: skip
            live.append(marker.exists())
        for what, row in rows.items():
            shapes_ok = not any(p.startswith(f"**{row.case}**") for p in self.problems)
            row.fail = f"{max(times[what]):.1f} s; " + (
                "exit 2, one `error:` line, no traceback" if shapes_ok else "see Misbehaviour"
            )
            row.exact = "payload ran" if ran_any else "payload never ran"
            self.rows.append(row)
        self.notes.append(
            f"malicious pickle: poisoned {', '.join(files)} of the newest checkpoint; a full "
            f"unpickle afterwards ran the payload: {all(live)} (the files really are payloads)."
        )


class Payload:
    """Unpickling this runs ``touch PATH`` (what a malicious checkpoint would do)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


def open_files(pgid: int) -> set[str]:
    """Base names of the files the processes of a process group have open."""
    import psutil

    names = set()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) != pgid:
                continue
            names |= {Path(f.path).name for f in p.open_files()}
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10, help="kill -9 trials per worker count")
    ap.add_argument("--quick", action="store_true", help="tiny run: checks the bench, no figures")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill steps")
    ap.add_argument("--only", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    add_output_args(ap)
    args = ap.parse_args()
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    if set(only) - set(CASES):
        ap.error(f"--only: unknown case(s) {sorted(set(only) - set(CASES))}")
    trials = 1 if args.quick else args.trials
    load0, t_start = load_average(), time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    try:
        b = run_cases(args, only, trials)
    finally:
        for job in JOBS:
            if group_alive(job.proc.pid):
                kill_group(job)
    total = time.monotonic() - t_start
    report(args, b, load0, total)


def run_cases(args: argparse.Namespace, only: list[str], trials: int) -> Bench:
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        base = Path(tmp)
        b = Bench(
            base=base,
            shards=synthetic_shards(base / "shards"),
            quick=args.quick,
            rng=random.Random(args.seed),
            steps=6 if args.quick else 12,
            every=2 if args.quick else 3,
            delay=0.25,
        )
        print(f"faults: run directories under {base}", flush=True)
        if "kill" in only:
            b.kill(trials)
        if "save" in only:
            b.save(1 if args.quick else 2)
        if "world" in only:
            b.world(1 if args.quick else 2)
        if "damage" in only:
            b.damage()
        if "pickle" in only:
            b.pickle()
    return b


def report(args: argparse.Namespace, b: Bench, load0: float, total: float) -> None:
    import torch

    lines = [
        *section_start(
            "faults.py",
            args.quick,
            f"{machine()}, load average {load0:.1f} at start; torch {torch.__version__}; every "
            "job 2 gloo ranks under `deepspeed --num_gpus 2 launch/pretrain.sh` (the 1-rank "
            "phase: `python -m pretrain train`).",
        ),
        f"configs/debug-roberta.toml, seq 32, global batch 16 (micro 4), {b.steps} steps, a "
        f"checkpoint every {b.every}, eval every {4 if b.steps > 6 else 3} steps, dropout on "
        f"(off in the world-size case), `debug.step_delay_s={b.delay}` while a kill is pending; "
        f'synthetic shards (2 x 300 documents); seed {args.seed}. "exact": trials whose every '
        "training and evaluation loss equals the unbroken run's (bitwise unless stated); "
        '"samples lost": rows missing from the sample audit (`python -m pretrain.audit`) summed '
        'over the trials, or summary.json; "time to fail": start of the job to its exit.',
        "",
        *table_lines(b.rows),
        "",
        *(f"- {n}" for n in b.notes),
        "",
        "Misbehaviour: " + ("none." if not b.problems else f"{len(b.problems)} finding(s):"),
        *(f"- {p}" for p in b.problems),
        "",
        f"Total {total / 60:.1f} min ({total:.0f} s).",
        "",
    ]
    emit(lines, args)
    sys.exit(1 if b.problems else 0)


def table_lines(rows: list[Row]) -> list[str]:
    from common import table

    return table(
        ["case", "trials", "exact", "samples lost", "time to fail"],
        [[r.case, r.trials, r.exact, r.lost, r.fail] for r in rows],
        "lrlll",
    )


if __name__ == "__main__":
    main()
