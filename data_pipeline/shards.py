"""Shard format: webdataset ``.tar`` shards, a random-access index per shard, and ``manifest.json``.

This module is the contract between preprocessing (which writes shards) and the
streaming loader (which reads them). One document is one webdataset sample:

    <key>.input_ids.npy    token ids, uint16 when the vocabulary fits, else uint32
    <key>.word_start.npy   np.packbits of the per-token "starts a word" flags (uint8);
                           unpack with ``np.unpackbits(a, count=len(input_ids)).astype(bool)``
    <key>.meta.json        {"id": "<source file>:<line or row>", "tokens": n}

Plain ``webdataset.WebDataset(url).decode()`` reads these shards. Beside every
``NAME.tar`` sits ``NAME.idx.npy``: an int64 array (documents, 5) with, per
document, [ids data offset, n_tokens, word_start data offset, word_start bytes,
crc32(ids bytes + word_start bytes)]. The loader uses it to ``pread`` exactly the
documents its rank needs (no rank reads whole shards it does not need) and to
detect flipped bytes per document. Shards are byte-identical for identical input
(fixed mtime/uid, deterministic member order), and written atomically: a shard
exists under its final name only once both the tar and its index are complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "encoder-pretraining-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_SUFFIX = ".idx.npy"
INDEX_COLUMNS = ("ids_offset", "n_tokens", "ws_offset", "ws_bytes", "crc32")


class ShardFormatError(ValueError):
    """A directory or file that is not a valid shard directory / shard (one-line message)."""


class CorruptShardError(IOError):
    """A shard (or one document in it) is missing, truncated or fails its checksum."""

    def __init__(self, shard: str, reason: str, samples_lost: int):
        super().__init__(f"{shard}: {reason} ({samples_lost} samples lost)")
        self.shard, self.reason, self.samples_lost = shard, reason, samples_lost


@dataclass
class ShardInfo:
    """One shard as listed in the manifest."""

    name: str  # file name of the tar, relative to the shard directory
    split: str  # "train" or "valid"
    documents: int
    tokens: int
    bytes: int  # size of the tar file
    sha256: str  # of the tar file
    index: str  # file name of the index sidecar
    index_sha256: str


@dataclass
class Manifest:
    """``SHARD_DIR/manifest.json``: what preprocessing produced and with which tokenizer."""

    tokenizer: dict[str, Any]  # at least {"fingerprint", "vocab_size", "kind"}
    dtype: str  # "uint16" | "uint32"
    shards: list[ShardInfo] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # documents, tokens, skips by reason
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def split(self, name: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == name]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    def save(self, shard_dir: str | os.PathLike) -> Path:
        path = Path(shard_dir) / MANIFEST_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, shard_dir: str | os.PathLike) -> Manifest:
        path = Path(shard_dir) / MANIFEST_NAME
        if not Path(shard_dir).is_dir():
            raise ShardFormatError(f"{shard_dir}: not a directory")
        if not path.is_file():
            raise ShardFormatError(
                f"{shard_dir}: not a shard directory (no {MANIFEST_NAME}; "
                "create one with `python -m data_pipeline preprocess`)"
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ShardFormatError(f"{path}: unreadable manifest ({e})") from e
        if raw.get("format") != FORMAT_NAME:
            raise ShardFormatError(f"{path}: not a manifest of this project's shard format")
        if raw.get("version") != FORMAT_VERSION:
            raise ShardFormatError(
                f"{path}: shard format version {raw.get('version')}, this code reads {FORMAT_VERSION}"
            )
        shards = [ShardInfo(**s) for s in raw.pop("shards")]
        return cls(shards=shards, **raw)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def index_name(tar_name: str) -> str:
    return (
        tar_name[: -len(".tar")] + INDEX_SUFFIX
        if tar_name.endswith(".tar")
        else tar_name + INDEX_SUFFIX
    )


# --------------------------------------------------------------------------- writing
# We write the tar bytes ourselves rather than through ``tarfile``: building three TarInfo
# headers and two .npy files per document costs ~600 us, several times what sentencepiece
# needs to encode a typical document; templates below cost ~20 us. The bytes are exactly
# what ``tarfile`` (USTAR, mode 0o644, uid/gid 0, mtime 0, empty uname/gname) and
# ``np.save`` produce, which tests/data_pipeline/test_shards.py checks against them.
_BLOCK, _RECORD = 512, 20 * 512  # tar block; tarfile pads the archive to whole records
_MODE_UID_GID = b"0000644\x000000000\x000000000\x00"
_MTIME = b"00000000000\x00"
_MAGIC = b"ustar\x0000"
_CONST_SUM = sum(_MODE_UID_GID) + sum(_MTIME) + sum(b" " * 8) + ord("0") + sum(_MAGIC)
_HEADER = (
    b"%s" + _MODE_UID_GID + b"%s\x00" + _MTIME + b"%06o\x00 0" + bytes(100) + _MAGIC
    + bytes(_BLOCK - 265)
)  # fmt: skip
_ZEROS = bytes(_BLOCK)
MAX_KEY_BYTES = 80  # member names ("<key>.word_start.npy") must fit USTAR's 100-byte field


def _ustar_header(name: bytes, size: int) -> bytes:
    """The 512-byte header ``tarfile`` writes for a regular file ``name`` (< 100 bytes)."""
    digits = b"%011o" % size
    return _HEADER % (name.ljust(100, b"\x00"), digits, _CONST_SUM + sum(name) + sum(digits))


@lru_cache(maxsize=64)
def _npy_template(descr: str, digits: int) -> tuple[bytes, bytes]:
    """numpy's v1.0 header of a 1-D array split around its length; the padding depends only
    on the number of digits of the length."""
    n = 10 ** (digits - 1)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": (n,)}
    )
    head, tail = buf.getvalue().split(b"(%d," % n)
    return head + b"(", b"," + tail


def _npy_header(descr: str, n: int) -> bytes:
    head, tail = _npy_template(descr, len(str(n)))
    return head + str(n).encode() + tail


_json_str = json.JSONEncoder(ensure_ascii=False).encode


class ShardWriter:
    """Write one shard (tar + index) under temporary names; ``close()`` publishes it atomically."""

    def __init__(self, shard_dir: str | os.PathLike, name: str, dtype: str):
        if not name.endswith(".tar") or "/" in name:
            raise ValueError(f"shard name must be a plain NAME.tar, got {name!r}")
        self.dir, self.name, self.dtype = Path(shard_dir), name, np.dtype(dtype)
        self._descr = np.lib.format.dtype_to_descr(self.dtype)
        self._limit = int(np.iinfo(self.dtype).max)
        self._tmp = self.dir / f".{name}.tmp-{os.getpid()}"
        self._f = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self._size = 0  # bytes written or queued
        self._pending: list[bytes] = []  # queued documents: one write per ~1 MB
        self._rows: list[tuple[int, int, int, int, int]] = []
        self.tokens = 0
        self._keys: set[str] = set()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def bytes_written(self) -> int:
        return self._size

    def _write(self, blob: bytes) -> None:
        self._pending.append(blob)
        self._size += len(blob)
        if sum(map(len, self._pending)) >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        for blob in self._pending:
            self._f.write(blob)
            self._sha.update(blob)
        self._pending.clear()

    def add(self, key: str, doc_id: str, ids: np.ndarray, word_start: np.ndarray) -> None:
        """Append one document. ``key`` must be unique in the shard, short, without '.' or '/'."""
        kb = key.encode("utf-8")
        if "." in key or "/" in key or not key or len(kb) > MAX_KEY_BYTES or key in self._keys:
            raise ValueError(f"invalid, too long or duplicate sample key {key!r}")
        ids = np.asarray(ids)
        n = len(ids)
        if ids.ndim != 1 or n != len(word_start):
            raise ValueError("ids and word_start must be 1-D arrays of equal length")
        if n and (int(ids.max()) > self._limit or int(ids.min()) < 0):
            raise ValueError(f"token id {int(ids.max())} does not fit {self.dtype}")
        self._keys.add(key)
        ids_data = np.ascontiguousarray(ids.astype(self.dtype, copy=False)).tobytes()
        ws_data = np.packbits(np.asarray(word_start, dtype=bool)).tobytes()
        # == json.dumps({"id": doc_id, "tokens": n}, ensure_ascii=False), without the dict walk
        meta = b'{"id": %s, "tokens": %d}' % (_json_str(doc_id).encode("utf-8"), n)
        ids_hdr, ws_hdr = _npy_header(self._descr, n), _npy_header("|u1", len(ws_data))
        s1, s2, s3 = len(ids_hdr) + len(ids_data), len(ws_hdr) + len(ws_data), len(meta)
        parts = [
            _ustar_header(kb + b".input_ids.npy", s1), ids_hdr, ids_data, _ZEROS[: -s1 % _BLOCK],
            _ustar_header(kb + b".word_start.npy", s2), ws_hdr, ws_data, _ZEROS[: -s2 % _BLOCK],
            _ustar_header(kb + b".meta.json", s3), meta, _ZEROS[: -s3 % _BLOCK],
        ]  # fmt: skip
        ids_off = self._size + _BLOCK + len(ids_hdr)
        ws_off = self._size + 2 * _BLOCK + s1 + (-s1 % _BLOCK) + len(ws_hdr)
        self._rows.append(
            (ids_off, n, ws_off, len(ws_data), zlib.crc32(ws_data, zlib.crc32(ids_data)))
        )
        if s1 > 1 << 20:  # a long document: no joined copy of it
            for part in parts:
                self._write(part)
        else:
            self._write(b"".join(parts))
        self.tokens += n

    def close(self, split: str) -> ShardInfo:
        """Finish the tar, write the index, fsync, and rename both into place (index first)."""
        end = 2 * _BLOCK  # tarfile's end-of-archive marker, then padding to a whole record
        self._write(bytes(end + (-(self._size + end) % _RECORD)))
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
        )

    def abort(self) -> None:
        """Drop a partially written shard (its temporary file is removed)."""
        try:
            self._f.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def load_index(shard_dir: str | os.PathLike, info: ShardInfo) -> np.ndarray:
    """The (documents, 5) int64 index of a shard; CorruptShardError if missing or inconsistent."""
    path = Path(shard_dir) / info.index
    try:
        index = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorruptShardError(
            info.name, f"index {info.index} unreadable ({e})", info.documents
        ) from e
    if index.shape != (info.documents, len(INDEX_COLUMNS)):
        raise CorruptShardError(info.name, f"index has shape {index.shape}", info.documents)
    return index


def check_shard(shard_dir: str | os.PathLike, info: ShardInfo, full: bool = False) -> str | None:
    """Start-up check of one shard: exists, has the manifest's size (and sha256 if ``full``).

    Returns None when fine, else a one-line reason. Cheap unless ``full``.
    """
    path = Path(shard_dir) / info.name
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != info.bytes:
        return f"truncated or altered: {size} bytes, manifest says {info.bytes}"
    if not (Path(shard_dir) / info.index).is_file():
        return f"index {info.index} missing"
    if full and sha256_file(path) != info.sha256:
        return "sha256 mismatch against the manifest"
    return None


class ShardReader:
    """Random access to the documents of one shard through its index (``os.pread``)."""

    def __init__(self, shard_dir: str | os.PathLike, info: ShardInfo, dtype: str):
        self.info, self.dtype = info, np.dtype(dtype)
        self.index = load_index(shard_dir, info)
        path = Path(shard_dir) / info.name
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise CorruptShardError(info.name, f"cannot open ({e.strerror})", info.documents) from e

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> np.ndarray:
        return self.index[:, 1]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Document ``i``: (token ids as int64, word-start flags as bool). Verifies its crc32."""
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
