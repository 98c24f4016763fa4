"""The global document order of an epoch: a pure function of (seed, epoch, shard set).

The order is built in two levels so that no process ever holds more than one block of
documents in memory:

1. the split's shards are permuted with (seed, epoch);
2. consecutive groups of ``block_size`` shards of that permutation form *blocks*, and the
   documents of each block are permuted with (seed, epoch, block).

The order never depends on the number of ranks or workers, which is what lets any rank (and
any world size) compute where row ``k`` of the epoch comes from. Shards that failed the
start-up check are kept in the shard permutation with zero documents, so the order of every
other shard is the same as with them present.

Permutations use numpy's ``Generator`` (PCG64) seeded from ``(tag, seed, epoch[, block])``;
they are reproducible for a given numpy version, which is what a resumed run needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from data_pipeline.shards import Manifest, ShardInfo

# Distinct stream tags so the shard and document permutations never share a seed.
_TAG_SHARDS = 0x5348  # "SH"
_TAG_DOCS = 0x444F  # "DO"


@dataclass
class ShardTable:
    """The shards of one split, with the per-shard totals the layout is computed from."""

    shards: list[ShardInfo]
    """The split's shards in manifest order; a shard's position here is its id everywhere."""
    docs: np.ndarray
    """(S,) int64 documents per shard; 0 for a shard skipped at start-up."""
    tokens: np.ndarray
    """(S,) int64 tokens per shard; 0 for a shard skipped at start-up."""
    skipped: dict[str, str]
    """Shard name -> reason, for the shards skipped at start-up (treated as empty)."""

    @classmethod
    def build(cls, manifest: Manifest, split: str, skipped: dict[str, str]) -> ShardTable:
        shards = manifest.split(split)
        keep = np.array([s.name not in skipped for s in shards], dtype=bool)
        docs = np.array([s.documents for s in shards], dtype=np.int64) * keep
        tokens = np.array([s.tokens for s in shards], dtype=np.int64) * keep
        return cls(shards=shards, docs=docs, tokens=tokens, skipped=dict(skipped))

    def __len__(self) -> int:
        return len(self.shards)


def fingerprint(manifest: Manifest, split: str) -> str:
    """A short hash identifying the split's shard set (names, sizes, checksums, tokenizer)."""
    rows = [(s.name, s.documents, s.tokens, s.bytes, s.sha256) for s in manifest.split(split)]
    payload = json.dumps(
        {
            "tokenizer": manifest.tokenizer.get("fingerprint"),
            "dtype": manifest.dtype,
            "shards": rows,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class EpochOrder:
    """Shard permutation and block structure of one epoch (documents are permuted lazily)."""

    def __init__(self, table: ShardTable, seed: int, epoch: int, shuffle: bool, block_size: int):
        if block_size < 1:
            raise ValueError(f"shuffle_block must be >= 1, got {block_size}")
        self.table, self.seed, self.epoch, self.shuffle = table, seed, epoch, shuffle
        n = len(table)
        if shuffle:
            rng = np.random.default_rng([_TAG_SHARDS, seed, epoch])
            self.shard_order = rng.permutation(n).astype(np.int64)
        else:
            self.shard_order = np.arange(n, dtype=np.int64)
        self.block_size = block_size
        self.n_blocks = -(-n // block_size) if n else 0

    def block_shards(self, b: int) -> np.ndarray:
        """Shard ids (positions in the table) of block ``b``, in permuted order."""
        return self.shard_order[b * self.block_size : (b + 1) * self.block_size]

    def block_sums(self, per_shard: np.ndarray) -> np.ndarray:
        """(n_blocks,) sums of a per-shard quantity (e.g. tokens) over each block."""
        ordered = per_shard[self.shard_order]
        starts = np.arange(0, len(ordered), self.block_size)
        return np.add.reduceat(ordered, starts) if len(ordered) else np.zeros(0, np.int64)

    def block_documents(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard id, document index in its shard) of every document of block ``b``, in order."""
        shards = self.block_shards(b)
        counts = self.table.docs[shards]
        total = int(counts.sum())
        shard_of = np.repeat(shards, counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        doc_of = np.arange(total, dtype=np.int64) - first
        if self.shuffle and total > 1:
            perm = np.random.default_rng([_TAG_DOCS, self.seed, self.epoch, b]).permutation(total)
            shard_of, doc_of = shard_of[perm], doc_of[perm]
        return shard_of, doc_of
