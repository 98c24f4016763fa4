"""Writing a shard: the tar bytes of every document (exactly what ``tarfile`` + ``np.save``
would write), its index rows with the member extents and crc32s, atomically published."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from data_pipeline.common import sha256_file
from data_pipeline.shards.manifest import INDEX_COLUMNS, ShardInfo, index_name
from data_pipeline.shards.tarbytes import (
    BIG_MEMBER,
    BLOCK,
    MAX_KEY_BYTES,
    MEMBERS_BY_LENGTH,
    META_MEMBERS,
    RECORD,
    json_str,
    member_parts,
    name_tails,
)

# We write the tar bytes ourselves rather than through ``tarfile``: building a TarInfo header
# and an .npy file per member costs ~200 us (~600 us for the three members of format 2),
# many times what sentencepiece needs to encode a typical document (~60 us for 115 tokens).
# The bytes are exactly what ``tarfile`` and ``np.save`` produce (``tarbytes``), which
# tests/data_pipeline/shards/test_shards.py checks against them. Documents come in batches
# (``PackedDocs``: ids converted and word and sentence starts packed by numpy for the whole
# batch), everything that depends only on a length is cached, and the loop per document
# only slices, sums the key, formats four checksums and the meta, and queues the parts for
# one join and write per ~1 MB (~3 us a document, from ~20 us one at a time).
# (Laying out whole batches in numpy blocks was tried: no faster, as it moves more memory.)


class PackedDocs:
    """A batch of documents ready for ``ShardWriter.add_batch``.

    ``ids`` (any integer dtype), ``word_start`` and ``sentence_start`` (bool) and ``bounds``
    (``len + 1`` token offsets) give the documents concatenated, as
    ``Tokenizer.encode_flat_with_starts`` returns them; without ``sentence_start`` each
    document is one sentence. The ids become the shard's dtype in one conversion, and the
    flags of every document are packed by one ``np.packbits`` per kind with each document
    starting on a byte boundary, which is exactly ``np.packbits`` of each document alone. A
    member's data is then a slice of one of three buffers.
    """

    __slots__ = (
        "ids", "ws", "ss", "tok_bounds", "ws_bounds", "itemsize", "dtype", "first_ss",
        "sentences",
    )  # fmt: skip

    def __init__(self, ids, word_start, bounds, dtype, sentence_start=None):
        self.dtype = dtype = np.dtype(dtype)
        ids, word_start = np.asarray(ids), np.asarray(word_start, dtype=bool)
        bounds = np.asarray(bounds, dtype=np.int64)
        lens = np.diff(bounds)
        if sentence_start is None:
            sentence_start = np.zeros(len(ids), dtype=bool)
            sentence_start[bounds[:-1][lens > 0]] = True
        sentence_start = np.asarray(sentence_start, dtype=bool)
        if (
            ids.ndim != 1
            or ids.shape != word_start.shape
            or ids.shape != sentence_start.shape
            or bounds.ndim != 1
            or len(bounds) < 1
            or bounds[0] != 0
            or bounds[-1] != len(ids)
            or (lens < 0).any()
        ):
            raise ValueError("ids, word_start and sentence_start must be 1-D of equal length")
        if len(ids):
            hi, lo = int(ids.max()), int(ids.min())
            if hi > np.iinfo(dtype).max or lo < 0:
                raise ValueError(f"token id {hi if lo >= 0 else lo} does not fit {dtype}")
        ws_bounds = np.zeros(len(bounds), dtype=np.int64)
        np.cumsum((lens + 7) >> 3, out=ws_bounds[1:])
        # Each document's flags, then False up to a whole byte: the padding is a few bits a
        # document, so marking it and assigning through a mask beats placing every flag.
        pad = 8 * np.diff(ws_bounds) - lens
        back = np.arange(int(pad.sum())) - np.repeat(np.cumsum(pad) - pad, pad)
        is_flag = np.ones(int(ws_bounds[-1]) * 8, dtype=bool)
        is_flag[np.repeat(8 * ws_bounds[1:], pad) - 1 - back] = False
        bits = np.zeros(len(is_flag), dtype=bool)
        bits[is_flag] = word_start
        self.ws = memoryview(np.packbits(bits)).cast("B")
        bits[is_flag] = sentence_start  # the padding bits stay False
        self.ss = memoryview(np.packbits(bits)).cast("B")
        self.ids = memoryview(np.ascontiguousarray(ids.astype(dtype, copy=False))).cast("B")
        self.tok_bounds, self.ws_bounds = bounds, ws_bounds
        self.itemsize = dtype.itemsize
        # Per document: whether its first token starts a sentence (an empty one: True; the
        # writer refuses others) and its number of sentences.
        self.first_ss = np.ones(len(lens), dtype=bool)
        self.first_ss[lens > 0] = sentence_start[bounds[:-1][lens > 0]]
        self.sentences = np.diff(np.searchsorted(np.flatnonzero(sentence_start), bounds))

    def __len__(self) -> int:
        return len(self.tok_bounds) - 1


class ShardWriter:
    """Write one shard (tar + index) under temporary names; ``close()`` publishes it atomically."""

    def __init__(self, shard_dir: str | os.PathLike, name: str, dtype: str):
        if not name.endswith(".tar") or "/" in name:
            raise ValueError(f"shard name must be a plain NAME.tar, got {name!r}")
        self.dir, self.name, self.dtype = Path(shard_dir), name, np.dtype(dtype)
        self._descr = np.lib.format.dtype_to_descr(self.dtype)
        self._tmp = self.dir / f".{name}.tmp-{os.getpid()}"
        self._f = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self._size = 0  # bytes written or queued
        self._pending: list = []  # queued parts of documents: one join and write per ~1 MB
        self._pending_bytes = 0
        self._rows: list[list[int]] = []  # index rows (INDEX_COLUMNS)
        self._unsummed = 0  # rows from here on still lack their member crc32s
        self._flushed = 0  # bytes written to the file
        self.tokens = 0
        self.sentences = 0
        self._keys: set[bytes] = set()
        self._ids_members = MEMBERS_BY_LENGTH.setdefault(self._descr, {})
        self._ws_members = MEMBERS_BY_LENGTH.setdefault("|u1", {})

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def bytes_written(self) -> int:
        return self._size

    def _flush(self, join: bool = True) -> None:
        parts = [b"".join(self._pending)] if join else self._pending
        self._sum_members(parts)
        for blob in parts:
            self._f.write(blob)
            self._sha.update(blob)
            self._flushed += len(blob)
        self._pending.clear()
        self._pending_bytes = 0

    def _sum_members(self, parts: list) -> None:
        """The member crc32s of the queued documents, whose records lie in ``parts`` (the
        queued bytes, starting at ``self._flushed``): computed where the bytes already are,
        one pass over one joined buffer in the common case. Row columns: 5-9 the member
        bounds, 10 the record's crc32, 11-14 the members' (``INDEX_COLUMNS``)."""
        rows, base, crc32 = self._rows[self._unsummed :], self._flushed, zlib.crc32
        self._unsummed = len(self._rows)
        if len(parts) == 1:
            mv = memoryview(parts[0])
            for row in rows:
                a, b, c, d, e = (x - base for x in row[5:10])
                row[10] = crc32(mv[a:e])
                row[11], row[12] = crc32(mv[a:b]), crc32(mv[b:c])
                row[13], row[14] = crc32(mv[c:d]), crc32(mv[d:e])
            return
        # Parts left unjoined (a long document is not copied): walk them once. A member
        # may span several parts; a part never spans two records.
        it, part, start = iter(parts), memoryview(b""), base  # part covers [start, +len)
        for row in rows:
            record = 0
            for k in range(4):
                a, b, crc = row[5 + k], row[6 + k], 0
                while a < b:
                    while a >= start + len(part):
                        start, part = start + len(part), memoryview(next(it))
                    piece = part[a - start : min(b, start + len(part)) - start]
                    crc, record = crc32(piece, crc), crc32(piece, record)
                    a += len(piece)
                row[11 + k] = crc
            row[10] = record

    def add(
        self,
        key: str,
        doc_id: str,
        ids: np.ndarray,
        word_start: np.ndarray,
        sentence_start: np.ndarray | None = None,
    ) -> None:
        """Append one document. ``key`` must be unique in the shard, short, without '.' or
        '/'. Without ``sentence_start`` the document is one sentence (its first token)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != len(word_start):
            raise ValueError("ids and word_start must be 1-D arrays of equal length")
        self._check_keys([key])
        docs = PackedDocs(ids, word_start, [0, len(ids)], self.dtype, sentence_start)
        self.add_batch(docs, [0], [key], [doc_id])

    def _check_keys(self, keys: list[str]) -> list[bytes]:
        """The keys as bytes; ValueError unless all are valid and new to this shard."""
        kbs = [k.encode("utf-8") for k in keys]
        joined, fresh = b"".join(kbs), set(kbs)  # C-speed checks of the whole batch
        if (
            b"." in joined
            or b"/" in joined
            or not all(kbs)
            or max(map(len, kbs), default=0) > MAX_KEY_BYTES
            or len(fresh) != len(kbs)
            or not self._keys.isdisjoint(fresh)
        ):
            seen = set(self._keys)
            for k, kb in zip(keys, kbs, strict=True):
                if "." in k or "/" in k or not kb or len(kb) > MAX_KEY_BYTES or kb in seen:
                    raise ValueError(f"invalid, too long or duplicate sample key {k!r}")
                seen.add(kb)
        return kbs

    def add_batch(
        self,
        docs: PackedDocs,
        which: list[int] | range,
        keys: list[str],
        doc_ids: list[str],
        stop_at: int | None = None,
    ) -> int:
        """Append documents ``which`` of ``docs``, in that order, under ``keys`` with ids
        ``doc_ids`` (both aligned with ``which``). With ``stop_at``, stops after the document
        that brings the shard to ``stop_at`` bytes. Returns how many were appended.
        """
        if docs.dtype != self.dtype:
            raise ValueError(f"documents packed as {docs.dtype}, the shard holds {self.dtype}")
        if not len(which) == len(keys) == len(doc_ids):
            raise ValueError("which, keys and doc_ids must have the same length")
        kbs = self._check_keys(keys)
        picked = np.asarray(which, dtype=np.int64)
        if not docs.first_ss[picked].all():  # the reader promises a first sentence at 0
            bad = doc_ids[int(np.argmin(docs.first_ss[picked]))]
            raise ValueError(f"document {bad!r}: its first token must start a sentence")
        stop = stop_at if stop_at is not None else 1 << 62
        tb, wb = docs.tok_bounds.tolist(), docs.ws_bounds.tolist()
        idv, wsv, ssv, isz, descr = docs.ids, docs.ws, docs.ss, docs.itemsize, self._descr
        ids_cache, ws_cache, meta_cache = self._ids_members, self._ws_members, META_MEMBERS
        pending, rows, crc32, dumps = self._pending, self._rows, zlib.crc32, json_str
        key_len = -1
        size, tokens, count, queued = self._size, 0, 0, self._pending_bytes
        for j, kb, doc_id in zip(which, kbs, doc_ids, strict=True):
            if len(kb) != key_len:  # all keys of a unit have one length: once per batch
                key_len = len(kb)
                (t1, c1), (t2, c2), (t3, c3), (t4, c4) = name_tails(key_len)
            i0, i1, w0, w1 = tb[j], tb[j + 1], wb[j], wb[j + 1]
            n, nw = i1 - i0, w1 - w0
            d1, e1, p1, m1, s1, o1 = ids_cache.get(n) or member_parts(ids_cache, descr, isz, n)
            # word and sentence starts: members of the same length, only their names differ
            d2, e2, p2, m2, s2, o2 = ws_cache.get(nw) or member_parts(ws_cache, "|u1", 1, nw)
            ids_data, ws_data, ss_data = idv[i0 * isz : i1 * isz], wsv[w0:w1], ssv[w0:w1]
            # == json.dumps({"id": doc_id, "tokens": n}, ensure_ascii=False), without the dict
            meta = b'{"id": %s, "tokens": %d}' % (dumps(doc_id).encode("utf-8"), n)
            d4, e4, p4, m4, s4, _ = meta_cache.get(len(meta)) or member_parts(
                meta_cache, "", 1, len(meta)
            )
            ks = sum(kb)
            pending += (
                kb, t1, d1, b"%06o\x00 " % (c1 + ks + s1), e1, ids_data, p1,
                kb, t2, d2, b"%06o\x00 " % (c2 + ks + s2), e2, ws_data, p2,
                kb, t3, d2, b"%06o\x00 " % (c3 + ks + s2), e2, ss_data, p2,
                kb, t4, d4, b"%06o\x00 " % (c4 + ks + s4), e4, meta, p4,
            )  # fmt: skip
            ids_end = size + m1
            ws_end = ids_end + m2
            ss_end = ws_end + m2
            rows.append([
                size + o1, n, ids_end + o2, nw, crc32(ws_data, crc32(ids_data)),
                size, ids_end, ws_end, ss_end, ss_end + m4,
                0, 0, 0, 0, 0,  # crc32s: at the flush
                ws_end + o2,
            ])  # fmt: skip
            record = m1 + 2 * m2 + m4
            size += record
            queued += record
            tokens += n
            count += 1
            if queued >= 1 << 20:  # one join and write per ~1 MB
                self._flush(join=m1 <= BIG_MEMBER)  # a long document is not copied
                queued = 0
            if size >= stop:
                break
        self._size, self._pending_bytes = size, queued
        self.tokens += tokens
        self.sentences += int(docs.sentences[picked[:count]].sum())
        self._keys.update(kbs[:count])
        return count

    def close(self, split: str) -> ShardInfo:
        """Finish the tar, write the index, fsync, and rename both into place (index first)."""
        end = 2 * BLOCK  # tarfile's end-of-archive marker, then padding to a whole record
        tail = bytes(end + (-(self._size + end) % RECORD))
        self._size += len(tail)
        self._pending.append(tail)
        self._flush()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        index = np.array(self._rows, dtype=np.int64).reshape(-1, len(INDEX_COLUMNS))
        idx_name = index_name(self.name)
        idx_tmp = self.dir / f".{idx_name}.tmp-{os.getpid()}"
        with open(idx_tmp, "wb") as f:
            np.save(f, index, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(idx_tmp, self.dir / idx_name)
        os.replace(self._tmp, self.dir / self.name)
        return ShardInfo(
            name=self.name,
            split=split,
            documents=len(self._rows),
            tokens=self.tokens,
            bytes=self._size,
            sha256=self._sha.hexdigest(),
            index=idx_name,
            index_sha256=sha256_file(self.dir / idx_name),
            sentences=self.sentences,
        )

    def abort(self) -> None:
        """Drop a partially written shard (its temporary file is removed)."""
        try:
            self._f.close()
        finally:
            self._tmp.unlink(missing_ok=True)
