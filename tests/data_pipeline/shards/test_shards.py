"""The shard format: our hand-written tar bytes equal what tarfile + np.save write, plain
webdataset reads the shards, the index gives random access (sentence starts alone too),
damage is detected and named, and format 1 and 2 shards are still read."""

import io
import json
import os
import tarfile
import zlib

import numpy as np
import pytest
import webdataset as wds

from data_pipeline.common import sha256_file
from data_pipeline.shards import (
    INDEX_COLUMNS_V1,
    INDEX_COLUMNS_V2,
    CorruptShardError,
    Manifest,
    PackedDocs,
    ShardFormatError,
    ShardInfo,
    ShardReader,
    ShardWriter,
    check_shard,
    index_layout,
)


def reference_tar(path, docs, dtype, sentences=True):
    """The same shard written the slow, obviously correct way: tarfile + np.save (without
    ``sentences``: the three members of format 2)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, doc_id, ids, ws, ss in docs:
            arrays = [("input_ids.npy", ids.astype(dtype)), ("word_start.npy", np.packbits(ws))]
            if sentences:
                arrays.append(("sentence_start.npy", np.packbits(ss)))
            for member, arr in arrays:
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                add(tar, f"{key}.{member}", buf.getvalue())
            meta = json.dumps({"id": doc_id, "tokens": len(ids)}, ensure_ascii=False)
            add(tar, f"{key}.meta.json", meta.encode())


def add(tar, name, data):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = (
        len(data),
        0,
        0o644,
        0,
        0,
        "",
        "",
    )
    tar.addfile(ti, io.BytesIO(data))


def make_docs(dtype, seed=0):
    """(key, id, ids, word starts, sentence starts) of documents of awkward lengths."""
    rng = np.random.default_rng(seed)
    top = 60000 if dtype == "uint16" else 70000
    lengths = [0, 1, 7, 8, 9, 100, 600_000, 3, 5, 1000]
    docs = []
    for i, n in enumerate(lengths):
        ws = rng.random(n) < 0.5
        ss = ws & (rng.random(n) < 0.2)
        ss[:1] = ws[:1] = True  # a document starts a word and a sentence
        docs.append((f"k{i:04d}", f'doc "{i}" é\n', rng.integers(0, top, n), ws, ss))
    return docs


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_writer_bytes_equal_tarfile_and_np_save(tmp_path, dtype):
    docs = make_docs(dtype)
    w = ShardWriter(tmp_path, "s.tar", dtype)
    for key, doc_id, ids, ws, ss in docs:
        w.add(key, doc_id, ids, ws, ss)
    info = w.close("train")
    reference_tar(tmp_path / "ref.tar", docs, dtype)
    assert (tmp_path / "s.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
    assert info.sha256 == sha256_file(tmp_path / "s.tar")
    assert info.bytes == os.path.getsize(tmp_path / "s.tar")
    assert info.documents == len(docs) and info.tokens == sum(len(d[2]) for d in docs)
    assert info.sentences == sum(int(d[4].sum()) for d in docs)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_batched_writes_equal_tarfile_and_np_save(tmp_path, dtype):
    """``add_batch`` (the preprocessing path): a subset of a packed batch in another order,
    keys of two lengths, a 600 K-token member, then a batch cut by ``stop_at``."""
    docs = make_docs(dtype, seed=2)
    docs[3] = ("longer-key-3", *docs[3][1:])
    ids = np.concatenate([d[2] for d in docs])
    ws = np.concatenate([d[3] for d in docs])
    ss = np.concatenate([d[4] for d in docs])
    bounds = np.cumsum([0] + [len(d[2]) for d in docs])
    packed = PackedDocs(ids, ws, bounds, dtype, ss)
    order = [4, 0, 3, 6, 1, 2, 9]  # the batch minus three documents, reordered
    w = ShardWriter(tmp_path, "s.tar", dtype)
    assert w.add_batch(packed, order, [docs[j][0] for j in order], [docs[j][1] for j in order]) == 7
    rest = [5, 7, 8]
    keys, names = [f"r{docs[j][0]}" for j in rest], [docs[j][1] for j in rest]
    n = w.add_batch(packed, rest, keys, names, stop_at=w.bytes_written + 1)
    assert n == 1  # the first document reaches stop_at: the writer stops after it
    info = w.close("train")
    want = [docs[j] for j in order] + [(keys[0], *docs[rest[0]][1:])]
    reference_tar(tmp_path / "ref.tar", want, dtype)
    assert (tmp_path / "s.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
    assert info.documents == 8 and info.tokens == sum(len(d[2]) for d in want)
    assert info.sentences == sum(int(d[4].sum()) for d in want)
    with pytest.raises(ValueError, match="duplicate sample key"):
        w2 = ShardWriter(tmp_path, "t.tar", dtype)
        w2.add_batch(packed, [0, 1], ["same", "same"], ["a", "b"])


def test_plain_webdataset_and_index_read_back(tmp_path):
    docs = make_docs("uint16", seed=1)
    w = ShardWriter(tmp_path, "s.tar", "uint16")
    for d in docs:
        w.add(*d)
    info = w.close("train")
    samples = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [d[0] for d in docs]
    reader = ShardReader(tmp_path, info, "uint16")
    assert reader.has_sentences
    for s, (_, doc_id, ids, ws, ss) in zip(samples, docs, strict=True):
        np.testing.assert_array_equal(s["input_ids.npy"], ids)
        np.testing.assert_array_equal(np.unpackbits(s["word_start.npy"], count=len(ids)), ws)
        np.testing.assert_array_equal(np.unpackbits(s["sentence_start.npy"], count=len(ids)), ss)
        assert s["meta.json"] == {"id": doc_id, "tokens": len(ids)}
    for i, (_, _, ids, ws, ss) in enumerate(docs):
        got_ids, got_ws = reader.read(i)
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_ws, ws)
        starts = reader.read_sentences(i)
        assert starts.dtype == np.int64 and starts.tolist() == np.flatnonzero(ss).tolist()
        assert (starts[:1] == 0).all()
    assert reader.read_sentences(0).tolist() == []  # the empty document
    reader.close()


def test_without_sentence_starts_a_document_is_one_sentence(tmp_path):
    w = ShardWriter(tmp_path, "s.tar", "uint16")
    w.add("a", "a", np.arange(5), np.ones(5, bool))
    w.add("b", "b", np.arange(0), np.ones(0, bool))
    with pytest.raises(ValueError, match="'c': its first token must start a sentence"):
        w.add("c", "c", np.arange(3), np.ones(3, bool), np.array([False, True, False]))
    packed = PackedDocs(np.arange(7), np.ones(7, bool), [0, 3, 7], "uint16")
    w.add_batch(packed, [1, 0], ["d", "e"], ["d", "e"])
    info = w.close("train")
    assert info.sentences == 3
    reader = ShardReader(tmp_path, info, "uint16")
    assert [reader.read_sentences(i).tolist() for i in range(4)] == [[0], [], [0], [0]]


@pytest.mark.parametrize("batched", [False, True])
def test_index_member_extents_and_crc32s_match_tarfile(tmp_path, batched):
    """Every byte of a document's four members (headers and padding included) is covered
    by the index's extents and crc32s; a 1.2 MB member takes the unjoined write path."""
    docs = make_docs("uint16", seed=3)
    w = ShardWriter(tmp_path, "s.tar", "uint16")
    if batched:
        flat = PackedDocs(
            np.concatenate([d[2] for d in docs]),
            np.concatenate([d[3] for d in docs]),
            np.cumsum([0] + [len(d[2]) for d in docs]),
            "uint16",
            np.concatenate([d[4] for d in docs]),
        )
        w.add_batch(flat, range(len(docs)), [d[0] for d in docs], [d[1] for d in docs])
    else:
        for d in docs:
            w.add(*d)
    info = w.close("train")
    index = np.load(tmp_path / info.index)
    layout = index_layout(index)
    assert layout.version == 3 and index.shape[1] == 16
    raw = (tmp_path / "s.tar").read_bytes()
    with tarfile.open(tmp_path / "s.tar") as tar:
        members = tar.getmembers()
    assert len(members) == 4 * len(docs)
    assert [m.name for m in members[:4]] == [
        "k0000.input_ids.npy", "k0000.word_start.npy", "k0000.sentence_start.npy",
        "k0000.meta.json",
    ]  # fmt: skip
    for i in range(len(docs)):
        bounds, crcs = index[i, layout.bounds].tolist(), index[i, layout.member_crcs].tolist()
        assert bounds == index[i, 5:10].tolist() and crcs == index[i, 11:15].tolist()
        assert zlib.crc32(raw[bounds[0] : bounds[4]]) == index[i, 10]  # the whole record
        for k, m in enumerate(members[4 * i : 4 * i + 4]):
            end = m.offset_data + -(-m.size // 512) * 512  # header .. padded data
            assert (bounds[k], bounds[k + 1]) == (m.offset, end)
            assert zlib.crc32(raw[m.offset : end]) == crcs[k]
        ss_member = members[4 * i + 2]
        npy_header = ss_member.size - int(index[i, 3])  # the packed bits end the member
        assert index[i, layout.col("ss_offset")] == ss_member.offset_data + npy_header
    assert index[-1, 9] + 1024 <= len(raw)  # only the end-of-archive blocks lie outside


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_byte_truncation_and_missing_are_detected(tmp_path):
    w = ShardWriter(tmp_path, "s.tar", "uint16")
    for d in make_docs("uint16", seed=2)[:6]:
        w.add(*d)
    info = w.close("train")
    assert check_shard(tmp_path, info, full=True) is None
    index = np.load(tmp_path / info.index)
    tar = tmp_path / "s.tar"
    _flip(tar, int(index[5, 0]))  # first byte of document 5's ids
    assert "sha256" in check_shard(tmp_path, info, full=True)
    reader = ShardReader(tmp_path, info, "uint16")
    with pytest.raises(CorruptShardError, match="document 5: member 'k0005.input_ids.npy'"):
        reader.read(5)
    assert reader.read_sentences(5).tolist()[:1] == [0]  # reads the sentence member only
    _flip(tar, int(index[4, 15]))  # document 4's packed sentence starts
    for read in (reader.read, reader.read_sentences):
        with pytest.raises(CorruptShardError, match="document 4: member 'k0004.sentence_start"):
            read(4)
    _flip(tar, int(index[3, 7]) + 10)  # the name in document 3's sentence-start header
    with pytest.raises(CorruptShardError, match="document 3: member 'k0003.sentence_start"):
        reader.read(3)  # named from an intact member's header
    with pytest.raises(CorruptShardError, match=r"document 3: member '\*.sentence_start.npy'"):
        reader.read_sentences(3)
    tar.write_bytes(tar.read_bytes()[: int(index[5, 8]) - 1])
    with pytest.raises(CorruptShardError, match="document 5: member .*sentence_start.* trunc"):
        reader.read_sentences(5)
    assert "truncated" in check_shard(tmp_path, info)
    tar.unlink()
    assert check_shard(tmp_path, info) == "missing"


def _old_format_shard(tmp_path, docs, version):
    """A format 2 (or 1) shard as the code of that format wrote it: three members, and the
    index those versions computed from the tar's member extents."""
    path = tmp_path / "old.tar"
    reference_tar(path, docs, "uint16", sentences=False)
    raw = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    rows = []
    for i, (_, _, ids, _, _) in enumerate(docs):
        m = members[3 * i : 3 * i + 3]
        ends = [x.offset_data + -(-x.size // 512) * 512 for x in m]
        nbytes = -(-len(ids) // 8)
        ids_off = m[0].offset_data + m[0].size - 2 * len(ids)
        ws_off = m[1].offset_data + m[1].size - nbytes
        bounds = [m[0].offset, *ends]
        data_crc = zlib.crc32(raw[ids_off : ids_off + 2 * len(ids)])
        rows.append([
            ids_off, len(ids), ws_off, nbytes, zlib.crc32(raw[ws_off : ws_off + nbytes], data_crc),
            *bounds, zlib.crc32(raw[bounds[0] : bounds[3]]),
            *(zlib.crc32(raw[bounds[k] : bounds[k + 1]]) for k in range(3)),
        ])  # fmt: skip
    columns = INDEX_COLUMNS_V2 if version == 2 else INDEX_COLUMNS_V1
    np.save(tmp_path / "old.idx.npy", np.array(rows, dtype=np.int64)[:, : len(columns)])
    return ShardInfo(
        "old.tar", "train", len(docs), sum(len(d[2]) for d in docs), len(raw),
        sha256_file(path), "old.idx.npy", sha256_file(tmp_path / "old.idx.npy"),
    )  # fmt: skip


@pytest.mark.parametrize("version", [1, 2])
def test_format_1_and_2_shards_are_still_read(tmp_path, version):
    docs = make_docs("uint16", seed=4)
    info = _old_format_shard(tmp_path, docs, version)
    reader = ShardReader(tmp_path, info, "uint16")
    assert reader.layout.version == version and not reader.has_sentences
    for i, (_, _, ids, ws, _) in enumerate(docs):
        got_ids, got_ws = reader.read(i)
        assert got_ids.tolist() == ids.tolist() and got_ws.tolist() == ws.tolist()
    with pytest.raises(ShardFormatError, match=f"format {version} has no sentence starts") as e:
        reader.read_sentences(1)
    assert "re-run preprocess" in str(e.value) and "\n" not in str(e.value)
    index = np.load(tmp_path / info.index)
    _flip(tmp_path / "old.tar", int(index[3, 0]))
    want = "document 3: member 'k0003.input_ids.npy'" if version == 2 else "document 3 fails"
    with pytest.raises(CorruptShardError, match=want):
        reader.read(3)


def test_bad_keys_and_ids_are_refused(tmp_path):
    w = ShardWriter(tmp_path, "s.tar", "uint16")
    one = (np.array([1]), np.array([True]))
    for key in ("a.b", "a/b", "", "x" * 81):
        with pytest.raises(ValueError, match="sample key"):
            w.add(key, "d", *one)
    w.add("k", "d", *one)
    with pytest.raises(ValueError, match="duplicate"):
        w.add("k", "d", *one)
    with pytest.raises(ValueError, match="does not fit"):
        w.add("big", "d", np.array([70000]), np.array([True]))
    w.abort()
    assert not list(tmp_path.iterdir())


def test_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(ShardFormatError, match="not a shard directory"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ShardFormatError, match="not a manifest"):
        Manifest.load(tmp_path)
    m = Manifest(tokenizer={"fingerprint": "x", "vocab_size": 10, "kind": "k"}, dtype="uint16")
    m.save(tmp_path)
    assert Manifest.load(tmp_path) == m and m.version == 3
    m.version = 2  # an older manifest, without per-shard sentence counts
    m.shards = [ShardInfo("s.tar", "train", 1, 2, 3, "x", "s.idx.npy", "y")]
    raw = json.loads(m.to_json())
    del raw["shards"][0]["sentences"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert Manifest.load(tmp_path) == m and m.shards[0].sentences is None
    m.version = 4
    m.save(tmp_path)
    with pytest.raises(ShardFormatError, match="version 4, this code reads 1, 2, 3"):
        Manifest.load(tmp_path)
