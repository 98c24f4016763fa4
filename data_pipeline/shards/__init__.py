"""The shard format: webdataset ``.tar`` shards, a random-access index per shard, and ``manifest.json``.

This package is the contract between preprocessing (which writes shards) and the
streaming loader (which reads them). One document is one webdataset sample, four tar
members in this order:

    <key>.input_ids.npy       token ids, uint16 when the vocabulary fits, else uint32
    <key>.word_start.npy      np.packbits of the per-token "starts a word" flags (uint8);
                              unpack with ``np.unpackbits(a, count=len(input_ids)).astype(bool)``
    <key>.sentence_start.npy  np.packbits of the per-token "starts a sentence" flags, packed
                              the same way (format 3; ``tokenizer.sentences`` has the rules):
                              the first token of a document always, every one also a word start
    <key>.meta.json           {"id": "<source file>:<line or row>", "tokens": n}

Plain ``webdataset.WebDataset(url).decode()`` reads these shards. Beside every
``NAME.tar`` sits ``NAME.idx.npy``: an int64 array with one row per document (columns
``INDEX_COLUMNS``): where its token ids and packed word and sentence starts are, the byte
extent of each of its four tar members, header and padding included, with a crc32 of the
whole record and of each member. The loader ``pread``s exactly the documents its rank
needs, one record per read, and checks every byte it read against those crc32s, so damage
anywhere in a record -- data, tar header or padding -- is named by shard, document and
member as the document is read; ``ShardReader.read_sentences`` reads and checks only the
sentence-start member (sentence-pair layouts need no token ids). The index itself is
checked against the manifest's sha256 when a reader opens it. Shards are byte-identical
for identical input (fixed mtime/uid, deterministic member order), and written
atomically: a shard exists under its final name only once both the tar and its index are
complete.

Older formats are still read (``IndexLayout`` per format, found by the index's number of
columns): format 2 (``INDEX_COLUMNS_V2``: three members, no sentence starts) and format 1
(``INDEX_COLUMNS_V1``: data-only crc32, no member extents). ``read_sentences`` on them is a
one-line ``ShardFormatError`` asking to re-run preprocess.

Modules: ``manifest`` (the contract: manifest, names, index columns and layouts, errors),
``tarbytes`` (the hand-written tar bytes), ``writer`` (``ShardWriter``, ``PackedDocs``),
``reader`` (``ShardReader``, ``load_index``, ``check_shard``).
"""

from data_pipeline.shards.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    INDEX_COLUMNS_V1,
    INDEX_COLUMNS_V2,
    INDEX_SUFFIX,
    MANIFEST_NAME,
    MEMBER_SUFFIXES,
    READABLE_VERSIONS,
    CorruptShardError,
    IndexLayout,
    Manifest,
    ShardFormatError,
    ShardInfo,
    index_layout,
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
    "INDEX_COLUMNS_V2",
    "INDEX_SUFFIX",
    "MANIFEST_NAME",
    "MAX_KEY_BYTES",
    "MEMBER_SUFFIXES",
    "READABLE_VERSIONS",
    "CorruptShardError",
    "IndexLayout",
    "Manifest",
    "PackedDocs",
    "ShardFormatError",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "check_shard",
    "index_layout",
    "index_name",
    "load_index",
    "token_dtype",
]
