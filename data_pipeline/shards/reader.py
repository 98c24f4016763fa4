"""Reading a shard: its index (checked against the manifest's sha256), the start-up check,
and random access to documents with every byte read checked against its crc32."""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from pathlib import Path

import numpy as np

from data_pipeline.common import sha256_file
from data_pipeline.shards.manifest import (
    INDEX_LAYOUTS,
    CorruptShardError,
    IndexLayout,
    ShardFormatError,
    ShardInfo,
    index_layout,
)

_SS_SUFFIX = ".sentence_start.npy"


def load_index(shard_dir: str | os.PathLike, info: ShardInfo, verify: bool = True) -> np.ndarray:
    """The (documents, columns) int64 index of a shard: ``INDEX_COLUMNS`` (format 3),
    ``INDEX_COLUMNS_V2`` or ``INDEX_COLUMNS_V1`` (``index_layout`` tells which). With
    ``verify`` its bytes must match the manifest's sha256 (an index is ~130 bytes a
    document: cheap, and every byte training reads is then checked). CorruptShardError if
    missing, altered or inconsistent."""
    path = Path(shard_dir) / info.index
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorruptShardError(
            info.name, f"index {info.index} unreadable ({e.strerror or e})", info.documents
        ) from e
    if verify and hashlib.sha256(raw).hexdigest() != info.index_sha256:
        raise CorruptShardError(
            info.name, f"index {info.index}: sha256 mismatch against the manifest", info.documents
        )
    try:
        index = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorruptShardError(
            info.name, f"index {info.index} unreadable ({e})", info.documents
        ) from e
    if index.ndim != 2 or index.shape[0] != info.documents or index.shape[1] not in INDEX_LAYOUTS:
        raise CorruptShardError(info.name, f"index has shape {index.shape}", info.documents)
    return index


def check_shard(shard_dir: str | os.PathLike, info: ShardInfo, full: bool = False) -> str | None:
    """Start-up check of one shard: exists, has the manifest's size (and the sha256 of the
    tar and of its index if ``full``).

    Returns None when fine, else a one-line reason. Cheap unless ``full``.
    """
    path = Path(shard_dir) / info.name
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != info.bytes:
        return f"truncated or altered: {size} bytes, manifest says {info.bytes}"
    index = Path(shard_dir) / info.index
    if not index.is_file():
        return f"index {info.index} missing"
    if full and sha256_file(path) != info.sha256:
        return "sha256 mismatch against the manifest"
    if full and sha256_file(index) != info.index_sha256:
        return f"index {info.index}: sha256 mismatch against the manifest"
    return None


class ShardReader:
    """Random access to the documents of one shard through its index (``os.pread``)."""

    check_crc = True  # False only to measure what the checks cost (bench/loader.py)

    def __init__(self, shard_dir: str | os.PathLike, info: ShardInfo, dtype: str):
        self.info, self.dtype = info, np.dtype(dtype)
        self.index = load_index(shard_dir, info)
        self.layout: IndexLayout = index_layout(self.index)
        lay = self.layout
        if lay.version >= 2:  # column numbers, looked up once
            self._rec = (lay.record_offset, lay.record_end, lay.record_crc)
        if lay.version >= 3:
            ss = lay.col("ws_end"), lay.col("ss_end"), lay.col("ss_member_crc32")
            self._ss = (*ss, lay.col("ss_offset"))
        path = Path(shard_dir) / info.name
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise CorruptShardError(info.name, f"cannot open ({e.strerror})", info.documents) from e

    @property
    def has_sentences(self) -> bool:
        """Whether the shard records sentence starts (format 3)."""
        return self.layout.version >= 3

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> np.ndarray:
        return self.index[:, 1]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Document ``i``: (token ids as int64, word-start flags as bool), every byte read
        checked against the index's crc32s (CorruptShardError naming the member if not)."""
        if self.layout.version == 1:
            return self._read_v1(i)
        row = self.index[i].tolist()
        ids_off, n, ws_off, ws_bytes = row[:4]
        lo, hi, crc = self._rec
        start, end = row[lo], row[hi]
        rec = os.pread(self._fd, end - start, start)  # the whole record: one read
        if len(rec) != end - start:
            raise CorruptShardError(self.info.name, f"document {i} truncated", 1)
        if self.check_crc and zlib.crc32(rec) != row[crc]:
            raise CorruptShardError(self.info.name, _damage(i, rec, row, self.layout), 1)
        ids = np.frombuffer(rec, self.dtype, count=n, offset=ids_off - start).astype(np.int64)
        packed = np.frombuffer(rec, np.uint8, count=ws_bytes, offset=ws_off - start)
        return ids, np.unpackbits(packed, count=n).astype(bool)

    def read_sentences(self, i: int) -> np.ndarray:
        """Token offsets (int64, ascending) of the sentence starts of document ``i``: empty
        for an empty document, else starting with 0. Reads and checks only the document's
        sentence-start member (one ``pread``: no token ids). CorruptShardError naming the
        document and member if it is truncated or fails its crc32; ShardFormatError for a
        format 1 or 2 shard, which has no sentence starts."""
        if self.layout.version < 3:
            raise ShardFormatError(
                f"{self.info.name}: shard format {self.layout.version} has no sentence starts "
                "(format 3 records them); re-run preprocess with this code"
            )
        row = self.index[i].tolist()
        n, nbytes = row[1], row[3]
        lo, hi, crc, data = (row[c] for c in self._ss)
        raw = os.pread(self._fd, hi - lo, lo)
        if len(raw) != hi - lo:
            raise CorruptShardError(
                self.info.name, f"document {i}: member *{_SS_SUFFIX} truncated", 1
            )
        if self.check_crc and zlib.crc32(raw) != crc:
            name = raw[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
            name = name if name.endswith(_SS_SUFFIX) else f"*{_SS_SUFFIX}"
            raise CorruptShardError(
                self.info.name,
                f"document {i}: member {name!r} (bytes {lo}-{hi}) fails its crc32",
                1,
            )
        packed = np.frombuffer(raw, np.uint8, count=nbytes, offset=data - lo)
        return np.flatnonzero(np.unpackbits(packed, count=n)).astype(np.int64)

    def _read_v1(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Format 1: only the data bytes are read and checked (one crc32 over both)."""
        ids_off, n, ws_off, ws_bytes, crc = (int(v) for v in self.index[i])
        nbytes = n * self.dtype.itemsize
        ids_raw = os.pread(self._fd, nbytes, ids_off)
        ws_raw = os.pread(self._fd, ws_bytes, ws_off)
        if len(ids_raw) != nbytes or len(ws_raw) != ws_bytes:
            raise CorruptShardError(self.info.name, f"document {i} truncated", 1)
        if zlib.crc32(ws_raw, zlib.crc32(ids_raw)) != crc:
            raise CorruptShardError(self.info.name, f"document {i} fails its crc32", 1)
        ids = np.frombuffer(ids_raw, dtype=self.dtype).astype(np.int64)
        ws = np.unpackbits(np.frombuffer(ws_raw, dtype=np.uint8), count=n).astype(bool)
        return ids, ws

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def _damage(i: int, rec: bytes, row: list[int], layout: IndexLayout) -> str:
    """Which member of document ``i``'s record ``rec`` (index row ``row``) is damaged, named
    by its tar name: the sample key comes from an intact member's header (a damaged header
    may have garbled its own name)."""
    edges = row[layout.bounds]
    bounds = [b - edges[0] for b in edges]
    crcs, members = row[layout.member_crcs], layout.members
    ok = [zlib.crc32(rec[bounds[k] : bounds[k + 1]]) == crcs[k] for k in range(len(members))]
    if all(ok):  # cannot happen with an index that passed its sha256 check
        return f"document {i}: record (bytes {edges[0]}-{edges[-1]}) fails its crc32"
    bad = ok.index(False)
    suffix = members[bad].decode()
    name = f"*{suffix}"
    if any(ok):
        k = ok.index(True)
        head = rec[bounds[k] : bounds[k] + 100].split(b"\x00", 1)[0]
        name = head.decode("utf-8", "replace")[: -len(members[k])] + suffix
    return f"document {i}: member {name!r} (bytes {edges[bad]}-{edges[bad + 1]}) fails its crc32"
