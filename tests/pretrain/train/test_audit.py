"""The per-step sample audit: what ``check`` detects, truncation on resume, and the files a
real (one-rank) run writes. Multi-rank and world-size-change audits: test_distributed.py and
tests/launch/test_elastic.py."""

import json
import subprocess
import sys

import torch

from pretrain.cli import main as cli
from pretrain.testing import clean_env, debug_config
from pretrain.train import audit, train


def _write(run, records):
    d = run / audit.AUDIT_DIR
    d.mkdir(parents=True, exist_ok=True)
    for rec in records:
        with open(d / f"rank{rec['rank']:05d}.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def _rec(step, rank, rows, world=2, epoch=0, g=4):
    return dict(step=step, epoch=epoch, rank=rank, world_size=world, global_batch=g, rows=rows)


def test_a_clean_history_across_world_sizes_and_an_epoch_end_is_ok(tmp_path):
    _write(
        tmp_path,
        [
            _rec(1, 0, [0, 1]),
            _rec(1, 1, [2, 3]),
            _rec(2, 0, [4, 5, 6, 7], world=1),  # resumed on one rank
            _rec(3, 0, [8, 9]),
            _rec(3, 1, [-1, -1]),  # the epoch's last global batch, completed with empty rows
            _rec(4, 0, [0, 1], epoch=1),
            _rec(4, 1, [2, 3], epoch=1),
        ],
    )
    report = audit.check(tmp_path)
    assert report["ok"], report["problems"]
    assert report["epochs"][0] == dict(
        steps=3, rows=10, repeated=0, missing=0, misplaced=0, empty=2, complete=True
    )
    assert report["epochs"][1]["rows"] == 4 and not report["epochs"][1]["complete"]


def test_lost_repeated_misplaced_rows_and_missing_ranks_are_reported(tmp_path):
    _write(
        tmp_path,
        [
            _rec(1, 0, [0, 1]),
            _rec(1, 1, [2, 3]),
            _rec(2, 0, [0, 1]),  # a repeat of step 1's rows instead of 4, 5
            _rec(2, 1, [6, 7]),
            _rec(3, 0, [8, 9]),  # rank 1 never recorded step 3
            _rec(5, 0, [20, 21, 22, 23], world=1),  # no step 4
        ],
    )
    report = audit.check(tmp_path)
    assert not report["ok"]
    e = report["epochs"][0]
    assert (e["repeated"], e["misplaced"]) == (2, 6)
    assert e["missing"] == 12  # of ids 0..23, 12 were never consumed
    text = " | ".join(report["problems"])
    assert "steps without any record: [4]" in text
    assert "step 3: ranks [0] of a world of 2" in text and "step 3: 2 rows" in text


def test_resume_truncates_every_rank_file_and_a_fresh_run_moves_the_old_audit_aside(tmp_path):
    _write(
        tmp_path,
        [_rec(s, r, [4 * s + 2 * r, 4 * s + 2 * r + 1]) for s in (1, 2, 3) for r in (0, 1)],
    )
    (tmp_path / "audit/rank00001.jsonl").open("a").write('{"step": 4, "ra')  # torn line
    audit.prepare(tmp_path, resume_step=2)
    for r in (0, 1):
        lines = (tmp_path / f"audit/rank{r:05d}.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == [1, 2]
    audit.prepare(tmp_path, resume_step=None)
    assert (
        not (tmp_path / "audit").exists() and (tmp_path / "audit.prev-1/rank00000.jsonl").is_file()
    )


def test_a_run_records_the_rows_it_trains_on(shards, tmp_path_factory, tmp_path, capsys):
    overrides = ["max_steps=3", "data.seq_len=32", "batch.global_batch_size=8"]
    overrides += ["batch.micro_batch_size=4", "checkpoint.export_hf=false", "eval.at_end=false"]
    s = train(debug_config("roberta", shards, tmp_path, *overrides, "logging.audit_samples=true"))
    recs = [json.loads(x) for x in (tmp_path / "audit/rank00000.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert [r["rows"] for r in recs] == [list(range(8 * k, 8 * k + 8)) for k in range(3)]
    assert s.loader.state_dict()["samples_consumed"] == 24
    assert cli(["audit", str(tmp_path)]) == 0
    assert (
        "epoch 0 (in progress): 3 steps, 24 rows, 0 repeated, 0 missing" in capsys.readouterr().out
    )
    old = [sys.executable, "-m", "pretrain.audit", str(tmp_path), "--json"]  # the first spelling
    res = subprocess.run(old, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and json.loads(res.stdout)["ok"], res.stderr[-2000:]
    # The ids are the loader's own: the same batches carry them.
    batch = next(iter(s.loader))
    assert torch.equal(batch["sample_ids"], torch.arange(24, 28))
