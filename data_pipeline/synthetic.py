"""Synthetic shard directories for tests and benchmarks (no tokenizer, no corpus, no download).

Documents are random token ids drawn from the non-special part of a vocabulary, with random
word-start flags, written with the real ``ShardWriter`` so that everything downstream (the
streaming loader, ``inspect``, ``sample-batches``) reads them exactly as it reads shards made by
``preprocess``. Lengths are a log-normal body plus optional empty and very long documents, which
are the cases packing has to get right.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_pipeline.shards import Manifest, ShardWriter, token_dtype

# Same layout as RoBERTa's first ids; any five distinct ids would do.
SPECIAL_IDS = {"cls": 0, "pad": 1, "sep": 2, "unk": 3, "mask": 4}


def tokenizer_info(vocab_size: int, special_ids: dict[str, int] | None = None) -> dict:
    """The ``manifest.tokenizer`` entry of a synthetic shard set."""
    return {
        "fingerprint": f"synthetic-{vocab_size}",
        "vocab_size": int(vocab_size),
        "kind": "synthetic",
        "special_ids": dict(special_ids or SPECIAL_IDS),
    }


def random_documents(
    rng: np.random.Generator,
    n: int,
    vocab_size: int = 1000,
    mean_len: float = 40.0,
    p_empty: float = 0.0,
    p_long: float = 0.0,
    long_len: int = 300,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` documents as (ids int64, word_start bool); ids avoid the special ids."""
    first = max(SPECIAL_IDS.values()) + 1
    docs = []
    for _ in range(n):
        u = rng.random()
        if u < p_empty:
            length = int(rng.integers(0, 2))  # empty or a single token
        elif u < p_empty + p_long:
            length = int(rng.integers(long_len // 2, long_len + 1))
        else:
            length = max(1, int(rng.lognormal(np.log(mean_len), 0.6)))
        ids = rng.integers(first, vocab_size, size=length, dtype=np.int64)
        ws = rng.random(length) < 0.7
        if length:
            ws[0] = True  # a document starts a word
        docs.append((ids, ws))
    return docs


def synthetic_sentence_starts(ids: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """Sentence starts of a synthetic document, a function of its tokens: the first token,
    and every word start whose id is a multiple of 8 (one in ~11 tokens), so that sentence
    pairs (``packing="pairs"``) have several sentences per document to choose from."""
    ss = np.asarray(ws, dtype=bool) & (np.asarray(ids) % 8 == 0)
    if len(ss):
        ss[0] = True
    return ss


def write_shards(
    shard_dir: str | os.PathLike,
    shards: dict[str, Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]],
    vocab_size: int,
    tokenizer: dict | None = None,
) -> Manifest:
    """Write ``{split: [documents of shard 0, documents of shard 1, ...]}`` and the manifest;
    ``tokenizer`` is the manifest's tokenizer entry (default: synthetic special ids)."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    manifest = Manifest(tokenizer=tokenizer or tokenizer_info(vocab_size), dtype=dtype)
    for split, split_shards in shards.items():
        for s, docs in enumerate(split_shards):
            writer = ShardWriter(shard_dir, f"{split}-{s:05d}.tar", dtype)
            for d, (ids, ws) in enumerate(docs):
                ss = synthetic_sentence_starts(ids, ws)
                writer.add(f"d{d:07d}", f"synthetic:{split}:{s}:{d}", ids, ws, ss)
            manifest.shards.append(writer.close(split))
    manifest.stats = {
        "documents": sum(s.documents for s in manifest.shards),
        "tokens": sum(s.tokens for s in manifest.shards),
    }
    manifest.save(shard_dir)
    return manifest


def write_synthetic_shards(
    shard_dir: str | os.PathLike,
    docs_per_shard: Sequence[int] | dict[str, Sequence[int]],
    seed: int = 0,
    vocab_size: int = 1000,
    **doc_kwargs,
) -> Manifest:
    """Random shards: ``docs_per_shard`` is a list of document counts (all "train") or a dict
    ``{split: counts}``; ``doc_kwargs`` go to :func:`random_documents`."""
    if not isinstance(docs_per_shard, dict):
        docs_per_shard = {"train": list(docs_per_shard)}
    rng = np.random.default_rng(seed)
    shards = {
        split: [random_documents(rng, n, vocab_size, **doc_kwargs) for n in counts]
        for split, counts in docs_per_shard.items()
    }
    return write_shards(shard_dir, shards, vocab_size)
