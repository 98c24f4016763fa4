"""Helpers for the training tests and smoke runs (no pytest imports: usable from scripts).

- ``synthetic_shards`` / ``corpus_shards``: cached shard directories (random tokens; or
  the built-in sample corpus through the real tokenizer and preprocessing commands).
- ``debug_config``: a shipped debug config with overrides, as a ``RunConfig``.
- ``losses``: the per-step training records of a run's ``metrics.jsonl``.
- ``train_command`` / ``deepspeed_command``: a training run as a child process (one
  process, or two ranks under DeepSpeed's launcher).
- ``random_masked_batch``: a padded, partly labelled batch of random tokens.
- ``TINY_ENCODER``: the sizes of the tiny fp32 models of the model and distillation tests.
- ``clean_env``: the environment for a child process that must not inherit this
  process's distributed variables.
- ``torchrun_specs`` / ``python -m pretrain.testing SPEC.json``: run several trainings one after another in the
  same processes (under torchrun / the DeepSpeed launcher), so that a multi-rank test pays
  the process start-up once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from data_pipeline.cli import main as data
from data_pipeline.synthetic import write_synthetic_shards
from pretrain import engine
from pretrain.config import load_config
from pretrain.metrics import read_metrics
from pretrain.train import train

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
_DIST_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "LOCAL_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CROSS_RANK",
    "CROSS_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "TORCHELASTIC_RUN_ID",
    "OMP_NUM_THREADS",
)


# Tiny encoder sizes (HF names) for the in-process model tests: a few milliseconds per
# forward, dropout off so that results are deterministic.
TINY_ENCODER = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def random_masked_batch(vocab: int, length=24, rows=3, rate=0.3, seed=1):
    """(ids, attention mask, labels) of random tokens >= 5: the last row padded from 2/3 of
    its length, about ``rate`` of the real tokens labelled (model tests)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length * 2 // 3 :] = 0
    labels = torch.full_like(ids, -100)
    pick = (torch.rand(ids.shape, generator=g) < rate) & mask.bool()
    labels[pick] = ids[pick]
    return ids, mask, labels


def short_run(steps: int, checkpoint_every: int) -> list[str]:
    """Overrides of the short runs that multi-rank tests compare with one rank: 16 rows of 32
    tokens per step (4 per micro-batch), no dropout (ranks draw from their own RNG streams),
    every step logged, evaluation every 4 steps, no HF export."""
    return [
        "data.seq_len=32",
        "batch.global_batch_size=16",
        "batch.micro_batch_size=4",
        f"max_steps={steps}",
        f"schedule.total_steps={steps}",
        f"checkpoint.every_steps={checkpoint_every}",
        "checkpoint.export_hf=false",
        "eval.every_steps=4",
        "eval.max_sequences=16",
        "model.overrides.hidden_dropout_prob=0.0",
        "model.overrides.attention_probs_dropout_prob=0.0",
        "logging.every_steps=1",
    ]


def _done(d: Path) -> bool:
    return (d / ".complete").is_file()


def synthetic_shards(out: str | os.PathLike, vocab_size: int = 500) -> Path:
    """Random-token shards (train: 2 x 300 documents; valid: 1 x 60), built once."""

    out = Path(out)
    if not _done(out):
        write_synthetic_shards(
            out, {"train": [300, 300], "valid": [60]}, seed=0, vocab_size=vocab_size
        )
        (out / ".complete").write_text("")
    return out


def corpus_shards(
    out: str | os.PathLike, vocab_size: int = 2000, family: str | None = None
) -> Path:
    """The built-in sample corpus -> tokenizer -> shards (``out/shards``), built once.
    ``family``: ``train-tokenizer --family`` (default: the command's, RoBERTa's)."""

    out = Path(out)
    shards = out / "shards"
    if not _done(out):
        corpus, tok = out / "corpus", out / "tokenizer"
        steps = [
            ["sample-corpus", str(corpus)],
            [
                "train-tokenizer",
                "--input",
                str(corpus / "train.jsonl"),
                "--out",
                str(tok),
                "--vocab-size",
                str(vocab_size),
                *(["--family", family] if family else []),
            ],
            [
                "preprocess",
                "--input",
                str(corpus / "train.jsonl"),
                "--valid-input",
                str(corpus / "valid.jsonl"),
                "--tokenizer",
                str(tok),
                "--out",
                str(shards),
                "--shard-size",
                "512K",
            ],
        ]
        for argv in steps:
            if data(argv) != 0:
                raise RuntimeError(f"python -m data_pipeline {' '.join(argv)} failed")
        (out / ".complete").write_text("")
    return shards


def debug_config(arch: str, shard_dir, run_dir, *overrides: str):
    """``configs/debug-<arch>.toml`` with ``shard_dir``/``run_dir`` and dotted overrides."""

    return load_config(
        CONFIGS / f"debug-{arch}.toml",
        [
            f"data.shard_dir={json.dumps(str(shard_dir))}",
            f"run_dir={json.dumps(str(run_dir))}",
            *overrides,
        ],
    )


def train_command(shard_dir, run_dir, *overrides: str, arch: str = "roberta") -> list[str]:
    """``python -m pretrain train`` of ``configs/debug-<arch>.toml`` as a child process runs it."""
    return [
        sys.executable,
        "-m",
        "pretrain",
        "train",
        "--config",
        str(CONFIGS / f"debug-{arch}.toml"),
        f"data.shard_dir={shard_dir}",
        f"run_dir={run_dir}",
        *overrides,
    ]


def deepspeed_command(
    shard_dir, run_dir, *overrides: str, ranks: int = 2, arch: str = "roberta"
) -> list[str]:
    """``deepspeed --num_gpus RANKS launch/pretrain.sh`` of ``configs/debug-<arch>.toml``, as
    users launch it (2 gloo processes on a CPU machine), on a free master port."""
    return [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        str(REPO / "launch/pretrain.sh"),
        "--config",
        str(CONFIGS / f"debug-{arch}.toml"),
        f"data.shard_dir={shard_dir}",
        f"run_dir={run_dir}",
        *overrides,
    ]


def losses(run_dir: str | os.PathLike, key: str = "loss") -> dict[int, float]:
    """{step: value} of the training records (those with ``key``) in ``metrics.jsonl``."""

    records, _ = read_metrics(Path(run_dir) / "metrics.jsonl")
    return {r["step"]: r[key] for r in records if key in r}


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without distributed-launch variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a test's rendezvous or master port)."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_specs(spec: list[dict], spec_path: str | os.PathLike, ranks: int = 2):
    """Run ``spec`` (``run_spec``'s list) under ``torchrun --standalone`` with ``ranks``
    processes; returns the ``CompletedProcess`` (output captured)."""
    Path(spec_path).write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += [str(ranks), "-m", "pretrain.testing", str(spec_path)]
    return subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=600)


def run_spec(spec_path: str) -> int:
    """Every rank: train each entry of the JSON list ``[{"config", "overrides", "resume"}]``."""

    for item in json.loads(Path(spec_path).read_text()):
        cfg = load_config(item["config"], item.get("overrides", []))
        train(cfg, resume=item.get("resume", "auto"))
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(run_spec(sys.argv[1]))
