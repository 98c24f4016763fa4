"""The shard format: our hand-written tar bytes equal what tarfile + np.save write, plain
webdataset reads the shards, the index gives random access, and damage is detected."""

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
    CorruptShardError,
    Manifest,
    PackedDocs,
    ShardFormatError,
    ShardReader,
    ShardWriter,
    check_shard,
)


def reference_tar(path, docs, dtype):
    """The same shard written the slow, obviously correct way: tarfile + np.save."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, doc_id, ids, ws in docs:
            for member, arr in (
                ("input_ids.npy", ids.astype(dtype)),
                ("word_start.npy", np.packbits(ws)),
            ):
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
    rng = np.random.default_rng(seed)
    top = 60000 if dtype == "uint16" else 70000
    lengths = [0, 1, 7, 8, 9, 100, 600_000, 3, 5, 1000]
    return [
        (f"k{i:04d}", f'doc "{i}" é\n', rng.integers(0, top, n), rng.random(n) < 0.5)
        for i, n in enumerate(lengths)
    ]


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_writer_bytes_equal_tarfile_and_np_save(tmp_path, dtype):
    docs = make_docs(dtype)
    w = ShardWriter(tmp_path, "s.tar", dtype)
    for key, doc_id, ids, ws in docs:
        w.add(key, doc_id, ids, ws)
    info = w.close("train")
    reference_tar(tmp_path / "ref.tar", docs, dtype)
    assert (tmp_path / "s.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
    assert info.sha256 == sha256_file(tmp_path / "s.tar")
    assert info.bytes == os.path.getsize(tmp_path / "s.tar")
    assert info.documents == len(docs) and info.tokens == sum(len(d[2]) for d in docs)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_batched_writes_equal_tarfile_and_np_save(tmp_path, dtype):
    """``add_batch`` (the preprocessing path): a subset of a packed batch in another order,
    keys of two lengths, a 600 K-token member, then a batch cut by ``stop_at``."""
    docs = make_docs(dtype, seed=2)
    docs[3] = ("longer-key-3", *docs[3][1:])
    ids = np.concatenate([d[2] for d in docs])
    ws = np.concatenate([d[3] for d in docs])
    bounds = np.cumsum([0] + [len(d[2]) for d in docs])
    packed = PackedDocs(ids, ws, bounds, dtype)
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
    for s, (_, doc_id, ids, ws) in zip(samples, docs, strict=True):
        np.testing.assert_array_equal(s["input_ids.npy"], ids)
        np.testing.assert_array_equal(np.unpackbits(s["word_start.npy"], count=len(ids)), ws)
        assert s["meta.json"] == {"id": doc_id, "tokens": len(ids)}
    for i, (_, _, ids, ws) in enumerate(docs):
        got_ids, got_ws = reader.read(i)
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_ws, ws)
    reader.close()


@pytest.mark.parametrize("batched", [False, True])
def test_index_member_extents_and_crc32s_match_tarfile(tmp_path, batched):
    """Every byte of a document's three members (headers and padding included) is covered
    by the index's extents and crc32s; a 1.2 MB member takes the unjoined write path."""
    docs = make_docs("uint16", seed=3)
    w = ShardWriter(tmp_path, "s.tar", "uint16")
    if batched:
        flat = PackedDocs(
            np.concatenate([d[2] for d in docs]),
            np.concatenate([d[3] for d in docs]),
            np.cumsum([0] + [len(d[2]) for d in docs]),
            "uint16",
        )
        w.add_batch(flat, range(len(docs)), [d[0] for d in docs], [d[1] for d in docs])
    else:
        for d in docs:
            w.add(*d)
    info = w.close("train")
    index = np.load(tmp_path / info.index)
    raw = (tmp_path / "s.tar").read_bytes()
    with tarfile.open(tmp_path / "s.tar") as tar:
        members = tar.getmembers()
    assert len(members) == 3 * len(docs)
    for i in range(len(docs)):
        bounds, crcs = index[i, 5:9].tolist(), index[i, 10:13].tolist()
        assert zlib.crc32(raw[bounds[0] : bounds[3]]) == index[i, 9]  # the whole record
        for k, m in enumerate(members[3 * i : 3 * i + 3]):
            end = m.offset_data + -(-m.size // 512) * 512  # header .. padded data
            assert (bounds[k], bounds[k + 1]) == (m.offset, end)
            assert zlib.crc32(raw[m.offset : end]) == crcs[k]
    assert index[-1, 8] + 1024 <= len(raw)  # only the end-of-archive blocks lie outside


def test_flipped_byte_truncation_and_missing_are_detected(tmp_path):
    w = ShardWriter(tmp_path, "s.tar", "uint16")
    for d in make_docs("uint16", seed=2)[:6]:
        w.add(*d)
    info = w.close("train")
    assert check_shard(tmp_path, info, full=True) is None
    raw = bytearray((tmp_path / "s.tar").read_bytes())
    offset = int(np.load(tmp_path / info.index)[5, 0])  # first byte of document 5's ids
    raw[offset] ^= 0xFF
    (tmp_path / "s.tar").write_bytes(bytes(raw))
    assert "sha256" in check_shard(tmp_path, info, full=True)
    with pytest.raises(CorruptShardError, match="document 5: member 'k0005.input_ids.npy'"):
        ShardReader(tmp_path, info, "uint16").read(5)
    (tmp_path / "s.tar").write_bytes(bytes(raw[: len(raw) // 2]))
    assert "truncated" in check_shard(tmp_path, info)
    (tmp_path / "s.tar").unlink()
    assert check_shard(tmp_path, info) == "missing"


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
    assert Manifest.load(tmp_path) == m
