"""Errors during a two-rank training (``deepspeed --num_gpus 2 launch/pretrain.sh``, as users
run it) are one line ``error: ...`` printed once, exit status 2, no traceback, and every rank
exits promptly: an unreadable manifest at start-up, damage that only rank 1 reads (found as
it reads it, in a loader worker: the ranks agree on it in the step's first all-reduce), and
a shard deleted while the run is going."""

from __future__ import annotations

import subprocess
import time

import pytest

from data_pipeline.loader import LoaderConfig, PretrainLoader
from data_pipeline.loader.documents import ShardPool
from data_pipeline.masking import MaskingConfig
from data_pipeline.shards import Manifest, load_index
from pretrain.testing import clean_env, deepspeed_command, losses

pytestmark = pytest.mark.slow
G, M, SEQ = 16, 4, 32
RUN = [
    "max_steps=6",
    f"data.seq_len={SEQ}",
    f"batch.global_batch_size={G}",
    f"batch.micro_batch_size={M}",
    "checkpoint.export_hf=false",
    "eval.every_steps=0",
    "eval.at_end=false",
]


def _launch(shards, run, *extra: str) -> subprocess.Popen:
    cmd = deepspeed_command(shards, run, *RUN, *extra)
    return subprocess.Popen(
        cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _one_error(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The job's single ``error:`` line, after checking the exit status and the silence."""
    out, err = proc.communicate(timeout=timeout)
    ours = [ln for ln in (out + err).splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    assert len(ours) == 1, ours
    return ours[0]


def test_an_unreadable_manifest_is_one_line_from_rank_0(shards_copy, tmp_path):
    (shards_copy / "manifest.json").write_text("{garbage")
    line = _one_error(_launch(shards_copy, tmp_path / "run"))
    assert "manifest.json: unreadable manifest" in line


def _docs_read(shards, rank: int, steps: int) -> list[set]:
    """Per step, the (shard, document) pairs rank ``rank`` of 2 reads (epoch 0)."""
    cfg = LoaderConfig(str(shards), seq_len=SEQ)
    loader = PretrainLoader(cfg, MaskingConfig(), G, M, rank, 2)
    plan = loader._plan()
    pool = ShardPool(plan.shard_dir, plan.table, plan.dtype)
    layout = plan.layout(0, pool)
    out = []
    for b in range(steps):
        rows = []
        for a in range(loader.grad_accum):
            rows += layout.rows(b * G + (a * 2 + rank) * M, M)
        out.append({(p[0], p[1]) for row in rows for p in row or ()})
    pool.close()
    return out


def test_damage_only_rank_1_reads_stops_both_ranks_with_one_line(shards_copy, tmp_path):
    r0, r1 = _docs_read(shards_copy, 0, 6), _docs_read(shards_copy, 1, 6)
    # The first step from 2 on where rank 1 reads a document rank 0 has not read by then.
    step, (sid, doc) = next(
        (s + 1, sorted(r1[s] - set().union(*r0[: s + 1]) - set().union(*r1[:s]))[0])
        for s in range(1, 6)
        if r1[s] - set().union(*r0[: s + 1]) - set().union(*r1[:s])
    )
    info = Manifest.load(shards_copy).split("train")[sid]
    offset = int(load_index(shards_copy, info)[doc, 0])
    with open(shards_copy / info.name, "r+b") as f:  # same size: the start-up check passes
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    started = time.monotonic()
    line = _one_error(_launch(shards_copy, tmp_path / "run", "data.num_workers=1"))
    assert line.startswith(f"error: rank 1: data: {info.name}: document {doc}: member ")
    assert "fails its crc32" in line and "data.on_corrupt=skip" in line
    assert max(losses(tmp_path / "run"), default=0) == step - 1  # stopped at that step
    assert time.monotonic() - started < 60


def test_a_shard_deleted_mid_run_is_one_line(shards_copy, tmp_path):
    run = tmp_path / "run"
    proc = _launch(
        shards_copy, run, "max_steps=40", "debug.step_delay_s=0.2", "data.shuffle_block=1"
    )
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").is_file() and losses(run)) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    for info in Manifest.load(shards_copy).split("train"):  # open ones stay readable (Linux)
        (shards_copy / info.name).unlink()
    line = _one_error(proc)
    assert "unreadable mid-run: cannot open (No such file or directory)" in line
