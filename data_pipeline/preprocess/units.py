"""One work unit -> its shards and its progress record (what each rank or worker runs).

Documents are tokenized in batches (``encode_flat_with_starts``: ids, word and sentence
starts of ~256 K characters at a time, so the per-call overhead is amortised and no Python
code runs per token) and each batch goes to the shard writer whole (``PackedDocs``: no
numpy call per document, which for short documents would cost as much as encoding them),
in input order, to ``train-u<unit>-<k>.tar`` / ``valid-u<unit>-<k>.tar``, a new shard each
time one reaches the shard size. When the unit's shards are complete, its progress record
``.progress/unit-<unit>.json`` (shard infos and read statistics) is written atomically: a
unit with a record is finished, a unit without one is redone from scratch on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.common import atomic_write_text
from data_pipeline.preprocess.out_dir import PROGRESS_DIR
from data_pipeline.preprocess.partition import WorkUnit
from data_pipeline.readers import Document, InputFile, ReadOptions, ReadStats, read_segment
from data_pipeline.shards import PackedDocs, ShardInfo, ShardWriter, check_shard
from data_pipeline.tokenizer.sentences import CONTEXT_CHARS

BATCH_CHARS = 1 << 18  # text per tokenizer call: amortises the call, bounds its memory
BATCH_DOCS = 4096


@dataclass
class UnitContext:
    """Everything about a run that every unit needs (sent once to each worker)."""

    files: list[InputFile]
    opts: ReadOptions
    out_dir: str
    tokenizer_dir: str
    dtype: str
    shard_bytes: int
    valid_fraction: float
    segment_zh: bool
    run_key: str  # digest of tokenizer + options + inputs; progress of another run is ignored


def unit_stem(index: int) -> str:
    return f"u{index:06d}"


def progress_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / PROGRESS_DIR / f"unit-{index:06d}.json"


def goes_to_valid(doc_id: str, fraction: float) -> bool:
    """Stable train/valid decision from the document id alone (same on every run and rank)."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2.0**64


def load_progress(ctx: UnitContext, index: int) -> dict | None:
    """The finished unit's record if it belongs to this run and its shards are all in place."""
    path = progress_path(ctx.out_dir, index)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("run_key") != ctx.run_key:
        return None
    for s in rec["shards"]:
        if check_shard(ctx.out_dir, ShardInfo(**s)) is not None:
            return None
    return rec


class _SplitWriter:
    """The rolling sequence of shards of one split of one unit."""

    def __init__(self, ctx: UnitContext, split: str, unit: int):
        self.ctx, self.split, self.unit = ctx, split, unit
        self.writer: ShardWriter | None = None
        self.infos: list[ShardInfo] = []

    def add_batch(
        self, docs: PackedDocs, which: list[int], keys: list[str], doc_ids: list[str]
    ) -> None:
        """Documents ``which`` of ``docs``, in order; a new shard whenever one is full."""
        done, limit = 0, self.ctx.shard_bytes
        while done < len(which):
            if self.writer is None:
                name = f"{self.split}-{unit_stem(self.unit)}-{len(self.infos):03d}.tar"
                self.writer = ShardWriter(self.ctx.out_dir, name, self.ctx.dtype)
            if done:  # the rest of a batch that filled a shard
                which, keys, doc_ids, done = which[done:], keys[done:], doc_ids[done:], 0
            done += self.writer.add_batch(docs, which, keys, doc_ids, stop_at=limit)
            if self.writer.bytes_written >= limit:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.infos.append(self.writer.close(self.split))
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _remove_unit_files(out_dir: str, index: int) -> None:
    """Shards of an unfinished earlier attempt at this unit (they are rewritten identically)."""
    for p in Path(out_dir).glob(f"*-{unit_stem(index)}-*"):
        p.unlink(missing_ok=True)


def process_unit(ctx: UnitContext, unit: WorkUnit, tok) -> dict:
    """Tokenize and write one unit; returns (and records) its progress record."""
    _remove_unit_files(ctx.out_dir, unit.index)
    stats = ReadStats()
    writers = {s: _SplitWriter(ctx, s, unit.index) for s in ("train", "valid")}
    pending: list[Document] = []  # documents (or pieces) awaiting the tokenizer
    contexts: list[str | None] = []  # per pending piece: the previous piece of its document
    before: str | None = None  # the last piece read, while its document continues
    parts: list[tuple] = []  # token pieces of a long document: (ids, word, sentence starts)
    all_valid, fraction, stem = unit.source == "valid", ctx.valid_fraction, unit_stem(unit.index)
    n_docs, chars = 0, 0

    def write(docs: PackedDocs, which: list[int], doc_ids: list[str]) -> None:
        """Number documents ``which`` of ``docs`` in order and send each to its split."""
        nonlocal n_docs
        keys = [f"{stem}-{k:08d}" for k in range(n_docs, n_docs + len(which))]
        n_docs += len(which)
        if all_valid or fraction <= 0:
            writers["valid" if all_valid else "train"].add_batch(docs, which, keys, doc_ids)
            return
        to_valid = [goes_to_valid(d, fraction) for d in doc_ids]
        for split, flag in (("train", False), ("valid", True)):
            sel = [k for k, v in enumerate(to_valid) if v == flag]
            if sel:
                writers[split].add_batch(
                    docs, [which[k] for k in sel], [keys[k] for k in sel], [doc_ids[k] for k in sel]
                )

    def emit(docs: PackedDocs, which, lens: list[int], doc_ids: list[str]) -> None:
        """Documents ``which`` of ``docs`` (ids aligned), those with tokens, to write()."""
        keep = [k for k in which if lens[k]]
        if len(keep) < len(which):
            for k, doc_id in zip(which, doc_ids, strict=True):
                if not lens[k]:
                    stats.note("no_tokens", doc_id)
            doc_ids = [doc_id for k, doc_id in zip(which, doc_ids, strict=True) if lens[k]]
        if keep:
            write(docs, keep, doc_ids)

    def flush() -> None:
        """Encode the pending documents and write them, the whole batch at a time."""
        ids, starts, sents, bounds = tok.encode_flat_with_starts(
            [d.text for d in pending],
            segment_zh=ctx.segment_zh,
            contexts=contexts if any(c is not None for c in contexts) else None,
        )
        docs = PackedDocs(ids, starts, bounds, ctx.dtype, sents)
        lens = np.diff(bounds).tolist()
        lo = 0  # pending[lo:k] are whole documents not yet written
        if parts or not all(d.final for d in pending):  # pieces of a long document
            for k, doc in enumerate(pending):
                if not parts and doc.final:
                    continue
                emit(docs, range(lo, k), lens, [d.id for d in pending[lo:k]])
                lo = k + 1
                piece = slice(bounds[k], bounds[k + 1])
                # 2-4 bytes a token for the ids, one for each kind of flag
                parts.append((ids[piece].astype(ctx.dtype), starts[piece], sents[piece]))
                if doc.final:
                    whole = [np.concatenate(p) for p in zip(*parts, strict=True)]
                    parts.clear()
                    n = len(whole[0])
                    packed = PackedDocs(whole[0], whole[1], [0, n], ctx.dtype, whole[2])
                    emit(packed, [0], [n], [doc.id])
        emit(docs, range(lo, len(pending)), lens, [d.id for d in pending[lo:]])
        pending.clear()
        contexts.clear()

    try:
        for seg in unit.segments:
            for doc in read_segment(ctx.files[seg.file], seg, ctx.opts, stats):
                pending.append(doc)
                # a later piece of a long document: sentence rules apply across the join
                contexts.append(before)
                before = None if doc.final else doc.text[-CONTEXT_CHARS:]
                chars += len(doc.text)
                if chars >= BATCH_CHARS or len(pending) >= BATCH_DOCS:
                    flush()
                    chars = 0
        if pending:
            flush()
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    rec = {
        "unit": unit.index,
        "run_key": ctx.run_key,
        "shards": [dataclasses.asdict(i) for w in writers.values() for i in w.infos],
        "stats": stats.to_dict(),
    }
    path = progress_path(ctx.out_dir, unit.index)
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps(rec, indent=1) + "\n")
    return rec
