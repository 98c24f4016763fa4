"""Lazy, bounded access to the documents of a split, recording every failure instead of raising.

One ``ShardPool`` lives in each process that builds batches (the rank's main process, or each
DataLoader worker). It opens ``ShardReader``s only for shards whose documents are actually
needed, keeps at most ``max_open`` of them (LRU), and caches the few most recent documents
because neighbouring rows of a packed stream share their boundary documents.

Mid-run corruption never raises from here: a shard whose index or tar cannot be opened, or a
document that is truncated or fails its crc32, is returned as ``None`` and recorded as an event
that the loader reports (``stats()`` and a warning in the rank's main process).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from data_pipeline.loader.ordering import ShardTable
from data_pipeline.shards import CorruptShardError, ShardReader


class ShardPool:
    """Documents of one split by (shard id, document index), read on demand."""

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        table: ShardTable,
        dtype: str,
        max_open: int = 32,
        cached_docs: int = 32,
    ):
        self.shard_dir, self.table, self.dtype = shard_dir, table, dtype
        self.max_open, self.cached_docs = max_open, cached_docs
        self._readers: OrderedDict[int, ShardReader] = OrderedDict()
        self._docs: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bad: dict[int, str] = {}  # shard id -> reason; never retried in this process
        self._bad_docs: set[tuple[int, int]] = set()
        self._bad_sentences: set[tuple[int, int]] = set()  # sentence-start member lost
        self.events: list[tuple] = []
        self.docs_read = 0
        self.tokens_read = 0

    # -- shards -------------------------------------------------------------------------------
    def _reader(self, sid: int) -> ShardReader | None:
        if sid in self._bad:
            return None
        reader = self._readers.get(sid)
        if reader is not None:
            self._readers.move_to_end(sid)
            return reader
        info = self.table.shards[sid]
        try:
            reader = ShardReader(self.shard_dir, info, self.dtype)
            total = int(reader.lengths().sum())
            if total != info.tokens:
                reader.close()
                raise CorruptShardError(
                    info.name, f"index lists {total} tokens, manifest {info.tokens}", info.documents
                )
        except CorruptShardError as e:
            self._bad[sid] = e.reason
            self.events.append(("shard", info.name, e.reason, info.documents))
            return None
        self._readers[sid] = reader
        while len(self._readers) > self.max_open:
            _, old = self._readers.popitem(last=False)
            old.close()
        return reader

    def lengths(self, sid: int) -> np.ndarray | None:
        """Token count of every document of shard ``sid``; None if the shard is unreadable."""
        reader = self._reader(sid)
        return None if reader is None else reader.lengths()

    # -- documents ----------------------------------------------------------------------------
    def read(self, sid: int, doc: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids int64, word_start bool) of one document; None (and an event) if it is lost."""
        key = (sid, doc)
        hit = self._docs.get(key)
        if hit is not None:
            self._docs.move_to_end(key)
            return hit
        if key in self._bad_docs:
            return None
        reader = self._reader(sid)
        name = self.table.shards[sid].name
        if reader is None:
            self._lost(key, name, self._bad[sid])
            return None
        try:
            ids, ws = reader.read(doc)
        except CorruptShardError as e:
            self._lost(key, name, e.reason)
            return None
        except OSError as e:  # e.g. the file vanished or the disk failed under an open fd
            self._lost(key, name, f"document {doc} unreadable ({e.strerror or e})")
            return None
        self.docs_read += 1
        self.tokens_read += len(ids)
        self._docs[key] = (ids, ws)
        while len(self._docs) > self.cached_docs:
            self._docs.popitem(last=False)
        return ids, ws

    def sentences(self, sid: int, doc: int) -> np.ndarray | None:
        """Token offsets of the sentence starts of one document (only its sentence-start member
        is read); None (and an event) if the shard or that member is lost.

        The answer depends only on the sentence-start member's bytes, never on what this
        process happened to read before (a document whose *tokens* were found damaged still
        has its sentences): pair layouts built from it must be the same in every worker, rank,
        epoch and resumed run."""
        if (sid, doc) in self._bad_sentences:
            return None
        reader = self._reader(sid)
        name = self.table.shards[sid].name
        if reader is None:
            reason = self._bad[sid]
        else:
            try:
                return reader.read_sentences(doc)
            except CorruptShardError as e:
                reason = e.reason
            except OSError as e:
                reason = f"document {doc} unreadable ({e.strerror or e})"
        self._bad_sentences.add((sid, doc))
        self._lost((sid, doc), name, reason)
        return None

    def _lost(self, key: tuple[int, int], name: str, reason: str) -> None:
        self._bad_docs.add(key)
        self.events.append(("doc", name, key[1], reason))

    def drain(self) -> dict:
        """Counters and events since the last call (they travel with each micro-batch)."""
        out = {"docs_read": self.docs_read, "tokens_read": self.tokens_read, "events": self.events}
        self.docs_read = self.tokens_read = 0
        self.events = []
        return out

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self._docs.clear()
