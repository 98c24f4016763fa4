"""The shard directory's contract: ``manifest.json``, shard and index names, the index
columns of each format version, and the errors a reader can raise (see the package
docstring for the layout)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.common import CommandError, atomic_write_text

FORMAT_NAME = "encoder-pretraining-shards"
FORMAT_VERSION = 3
# 1: index without member extents (data-only crc32); 2: no sentence starts
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"
INDEX_SUFFIX = ".idx.npy"
INDEX_COLUMNS_V1 = ("ids_offset", "n_tokens", "ws_offset", "ws_bytes", "crc32")
# Format 2 adds the record: member k spans [bounds[k], bounds[k+1]) of the tar, with
# bounds = (record_offset, ids_end, ws_end, record_end); a crc32 of the whole record (one
# check per read) and one per member (to name the damaged member when it fails).
INDEX_COLUMNS_V2 = (
    *INDEX_COLUMNS_V1,
    "record_offset", "ids_end", "ws_end", "record_end", "record_crc32",
    "ids_member_crc32", "ws_member_crc32", "meta_member_crc32",
)  # fmt: skip
# Format 3 adds the sentence-start member between word starts and meta, laid out the same
# way: bounds = (record_offset, ids_end, ws_end, ss_end, record_end), the record's crc32,
# one per member, and where the packed sentence starts are (``ws_bytes`` long, as both
# members hold one bit per token).
INDEX_COLUMNS = (
    *INDEX_COLUMNS_V1,
    "record_offset", "ids_end", "ws_end", "ss_end", "record_end", "record_crc32",
    "ids_member_crc32", "ws_member_crc32", "ss_member_crc32", "meta_member_crc32",
    "ss_offset",
)  # fmt: skip


# The members of a document's record, in order (a webdataset sample "<key>" + suffix).
MEMBER_SUFFIXES = (b".input_ids.npy", b".word_start.npy", b".sentence_start.npy", b".meta.json")
MEMBER_SUFFIXES_V2 = (b".input_ids.npy", b".word_start.npy", b".meta.json")


@dataclass(frozen=True)
class IndexLayout:
    """Where things are in an index row of one format (found by its number of columns).

    For formats 2 and 3, member ``k`` of document ``i`` spans
    ``index[i, bounds][k] .. index[i, bounds][k + 1]`` of the tar, with crc32
    ``index[i, member_crcs][k]``; the whole record spans ``record_offset .. record_end``
    with crc32 ``record_crc``.
    """

    version: int
    columns: tuple[str, ...]
    members: tuple[bytes, ...]  # member suffixes in record order (empty for format 1)

    def col(self, name: str) -> int:
        """The column number of ``name``."""
        return self.columns.index(name)

    @property
    def bounds(self) -> slice:
        """Columns of the member bounds: record start, each member's end (members + 1)."""
        lo = self.col("record_offset")
        return slice(lo, lo + len(self.members) + 1)

    @property
    def member_crcs(self) -> slice:
        """Columns of each member's crc32, in member order."""
        lo = self.col("ids_member_crc32")
        return slice(lo, lo + len(self.members))

    @property
    def record_offset(self) -> int:
        return self.col("record_offset")

    @property
    def record_end(self) -> int:
        return self.col("record_end")

    @property
    def record_crc(self) -> int:
        return self.col("record_crc32")


INDEX_LAYOUTS = {
    len(INDEX_COLUMNS_V1): IndexLayout(1, INDEX_COLUMNS_V1, ()),
    len(INDEX_COLUMNS_V2): IndexLayout(2, INDEX_COLUMNS_V2, MEMBER_SUFFIXES_V2),
    len(INDEX_COLUMNS): IndexLayout(3, INDEX_COLUMNS, MEMBER_SUFFIXES),
}


def index_layout(index) -> IndexLayout:
    """The layout of an index array (by its number of columns); ValueError if none."""
    layout = INDEX_LAYOUTS.get(index.shape[1] if index.ndim == 2 else -1)
    if layout is None:
        raise ValueError(f"no shard index format has shape {index.shape}")
    return layout


class ShardFormatError(CommandError, ValueError):
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
    sentences: int | None = None  # sentence starts in the shard (None: format 1 or 2)


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
        if raw.get("version") not in READABLE_VERSIONS:
            raise ShardFormatError(
                f"{path}: shard format version {raw.get('version')}, this code reads "
                f"{', '.join(map(str, READABLE_VERSIONS))} (re-run preprocess with this code)"
            )
        shards = [ShardInfo(**s) for s in raw.pop("shards")]
        return cls(shards=shards, **raw)


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def index_name(tar_name: str) -> str:
    return (
        tar_name[: -len(".tar")] + INDEX_SUFFIX
        if tar_name.endswith(".tar")
        else tar_name + INDEX_SUFFIX
    )
