"""Configuration and start-up checks of the streaming loader (re-exported by ``stream``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from data_pipeline.common import CommandError
from data_pipeline.shards import Manifest, ShardFormatError, check_shard

log = logging.getLogger("data_pipeline.loader")


class ShardCheckError(CommandError, ValueError):
    """Start-up check failed for one or more shards (message names each and the samples lost)."""


class DataError(CommandError):
    """Data that cannot be trained on, found while streaming (one line: shard, document,
    member and what to do); with ``on_corrupt="error"`` also damage found mid-run."""


@dataclass
class LoaderConfig:
    """Where the shards are and how they become rows; one per run (``data`` in the run config)."""

    shard_dir: str
    """Directory written by ``python -m data_pipeline preprocess`` (has ``manifest.json``)."""
    split: str = "train"
    """Which shards of the manifest to stream: ``"train"`` or ``"valid"``."""
    seq_len: int = 512
    """Tokens per row, including ``[cls]`` and separators; every batch is (M, seq_len)."""
    packing: str = "full"
    """``"full"``: FULL-SENTENCES, rows cut from the stream of documents (no padding except the
    epoch's last row); ``"doc"``: DOC-SENTENCES, rows never cross a document boundary;
    ``"pairs"``: sentence pairs with token types and a label per row (see ``pair_task``)."""
    pad_doc_rows: bool = False
    """With ``packing="doc"``: one document (or chunk of a long one) per row, no packing."""
    pair_task: str = "nsp"
    """With ``packing="pairs"`` (rows ``[CLS] A [SEP] B [SEP]``, BERT's recipe, needs shards
    of format 3): ``"nsp"``, B is the continuation or, with p = 0.5, text of another document
    (BERT); ``"sop"``, A and B are consecutive and swapped with p = 0.5 (ALBERT)."""
    short_seq_prob: float = 0.1
    """With ``packing="pairs"``: probability that a row's target length is drawn uniformly from
    [2, seq_len - 3] instead of filling the row (BERT: 0.1)."""
    shuffle: bool = True
    """Reshuffle shards and documents every epoch; False keeps the manifest order."""
    shuffle_block: int = 16
    """Shards per shuffle block: documents are shuffled within a block, so memory and index
    reads are O(documents of one block); larger mixes better."""
    seed: int = 0
    """Seed of the order and of the masks (masks also depend on epoch and row id)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 = build batches in the training process);
    batches are identical for any value."""
    prefetch_factor: int = 4
    """Micro-batches each worker builds ahead."""
    pin_memory: bool = True
    """Pin batches in page-locked memory (only when CUDA is available)."""
    verify: str = "size"
    """Start-up check: ``"size"`` (exists, size and index present) or ``"full"`` (also sha256)."""
    on_corrupt: str = "error"
    """Bad data, found at start-up or as it is read (every record is checked against its
    crc32s): ``"error"`` stops with one line naming the shard (and document and member), or
    ``"skip"`` drops it (a bad shard is treated as empty, a bad document's tokens are left out
    of its rows) and counts every sample lost in ``stats()`` and the run's summary.json."""

    def __post_init__(self):
        checks = {
            "packing": (self.packing, ("full", "doc", "pairs")),
            "pair_task": (self.pair_task, ("nsp", "sop")),
            "verify": (self.verify, ("size", "full")),
            "on_corrupt": (self.on_corrupt, ("error", "skip")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"data.{name} must be one of {allowed}, got {value!r}")
        if self.seq_len < 4:
            raise ValueError(f"data.seq_len must be >= 4, got {self.seq_len}")
        if self.shuffle_block < 1 or self.num_workers < 0 or self.prefetch_factor < 1:
            raise ValueError(
                "data.shuffle_block and data.prefetch_factor must be >= 1, data.num_workers >= 0"
            )
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"data.short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if self.packing == "pairs" and self.seq_len < 5:
            raise ValueError(f"data.seq_len must be >= 5 for sentence pairs, got {self.seq_len}")
        if self.seed < 0:
            raise ValueError(f"data.seed must be >= 0, got {self.seed}")


def check_split(manifest: Manifest, cfg: LoaderConfig) -> dict[str, str]:
    """Start-up check of the split's shards; returns {name: reason} of those to skip."""
    shards = manifest.split(cfg.split)
    if not shards:
        raise ShardFormatError(f"{cfg.shard_dir}: no {cfg.split!r} shards in the manifest")
    bad = {}
    for info in shards:
        reason = check_shard(cfg.shard_dir, info, full=cfg.verify == "full")
        if reason is not None:
            bad[info.name] = (reason, info.documents)
    if bad and cfg.on_corrupt == "error":
        lost = sum(n for _, n in bad.values())
        listing = "; ".join(f"{name}: {r} ({n} samples)" for name, (r, n) in bad.items())
        raise ShardCheckError(
            f"{cfg.shard_dir}: {len(bad)} bad {cfg.split} shard(s), {lost} samples lost: {listing}"
            " (re-run preprocess, or set data.on_corrupt=skip to train without them)"
        )
    for name, (reason, n) in bad.items():
        log.warning("data: skipping shard %s: %s (%d samples lost)", name, reason, n)
    return {name: reason for name, (reason, _) in bad.items()}
