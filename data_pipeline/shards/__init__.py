"""The shard format: webdataset ``.tar`` shards, a random-access index per shard, and ``manifest.json``.

This package is the contract between preprocessing (which writes shards) and the
streaming loader (which reads them). One document is one webdataset sample:

    <key>.input_ids.npy    token ids, uint16 when the vocabulary fits, else uint32
    <key>.word_start.npy   np.packbits of the per-token "starts a word" flags (uint8);
                           unpack with ``np.unpackbits(a, count=len(input_ids)).astype(bool)``
    <key>.meta.json        {"id": "<source file>:<line or row>", "tokens": n}

Plain ``webdataset.WebDataset(url).decode()`` reads these shards. Beside every
``NAME.tar`` sits ``NAME.idx.npy``: an int64 array with one row per document (columns
``INDEX_COLUMNS``): where its token ids and packed word starts are, and (format 2) the
byte extent of each of its three tar members, header and padding included, with a crc32
of each. The loader ``pread``s exactly the documents its rank needs, one record (three
members) per read, and checks every byte it read against those crc32s, so damage anywhere
in a record -- data, tar header or padding -- is named by shard, document and member as
the document is read. The index itself is checked against the manifest's sha256 when a
reader opens it. Format 1 shards (data-only crc32, no member extents) are still read.
Shards are byte-identical for identical input (fixed mtime/uid, deterministic member
order), and written atomically: a shard exists under its final name only once both the
tar and its index are complete.

Modules: ``manifest`` (the contract: manifest, names, index columns, errors), ``writer``
(``ShardWriter``, ``PackedDocs``), ``reader`` (``ShardReader``, ``load_index``,
``check_shard``).
"""

from data_pipeline.shards.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    INDEX_COLUMNS_V1,
    INDEX_SUFFIX,
    MANIFEST_NAME,
    READABLE_VERSIONS,
    CorruptShardError,
    Manifest,
    ShardFormatError,
    ShardInfo,
    index_name,
    token_dtype,
)
from data_pipeline.shards.reader import ShardReader, check_shard, load_index
from data_pipeline.shards.writer import MAX_KEY_BYTES, PackedDocs, ShardWriter

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_COLUMNS",
    "INDEX_COLUMNS_V1",
    "INDEX_SUFFIX",
    "MANIFEST_NAME",
    "MAX_KEY_BYTES",
    "READABLE_VERSIONS",
    "CorruptShardError",
    "Manifest",
    "PackedDocs",
    "ShardFormatError",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "check_shard",
    "index_name",
    "load_index",
    "token_dtype",
]
