"""The tar bytes of a shard, written by hand: exactly what ``tarfile`` (USTAR, mode 0o644,
uid/gid 0, mtime 0, empty uname/gname) and ``np.save`` would write, built from cached parts
(see ``writer`` for why, and tests/data_pipeline/shards/test_shards.py for the check)."""

from __future__ import annotations

import io
import json
from functools import lru_cache

import numpy as np

from data_pipeline.shards.manifest import MEMBER_SUFFIXES

BLOCK, RECORD = 512, 20 * 512  # tar block; tarfile pads the archive to whole records
_MODE_UID_GID = b"0000644\x000000000\x000000000\x00"
_MTIME = b"00000000000\x00"
_MAGIC = b"ustar\x0000"
_CONST_SUM = sum(_MODE_UID_GID) + sum(_MTIME) + sum(b" " * 8) + ord("0") + sum(_MAGIC)
_HEADER_END = b"0" + bytes(100) + _MAGIC + bytes(BLOCK - 265)  # typeflag .. end of block
_ZEROS = bytes(BLOCK)
MAX_KEY_BYTES = 80  # member names ("<key>.sentence_start.npy") must fit USTAR's 100-byte field
BIG_MEMBER = 1 << 20  # a member this large is written from its buffer, never joined


# A header in parts: key, name tail (rest of the name field, mode, uid, gid), size digits
# (+ NUL, mtime), checksum, end (typeflag .. end of block). The checksum is the sum of all
# bytes with its own field as spaces: a constant of the name tail, plus the key's and the
# size digits' sums. (Checked against tarfile by tests/data_pipeline/shards/test_shards.py.)
@lru_cache(maxsize=16)
def name_tails(key_bytes: int) -> tuple[tuple[bytes, int], ...]:
    """Per member: (name tail after a ``key_bytes``-long key, its checksum constant)."""
    out = []
    for m in MEMBER_SUFFIXES:
        tail = m + bytes(100 - key_bytes - len(m)) + _MODE_UID_GID
        out.append((tail, _CONST_SUM - sum(_MODE_UID_GID) + sum(tail)))
    return tuple(out)


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


# member kind (numpy descr; "" for the meta) -> length -> what member_parts returns
MEMBERS_BY_LENGTH: dict[str, dict[int, tuple]] = {}
META_MEMBERS = MEMBERS_BY_LENGTH.setdefault("", {})
_CACHED_BELOW = 1 << 14  # lengths cached (most documents have one of a few thousand)


def member_parts(cache: dict, descr: str, itemsize: int, n: int) -> tuple:
    """Of a member holding a length-``n`` array of ``descr`` (or, for descr "", ``n`` bytes
    of JSON): (size digits + NUL + mtime, header end + npy header, padding, bytes of the
    whole member, sum of the size digits, offset of its data from the header)."""
    npy = _npy_header(descr, n) if descr else b""
    size = len(npy) + n * itemsize
    digits = b"%011o" % size
    pad = _ZEROS[: -size % BLOCK]
    entry = (
        digits + b"\x00" + _MTIME, _HEADER_END + npy, pad, BLOCK + size + len(pad),
        sum(digits), BLOCK + len(npy),
    )  # fmt: skip
    if n < _CACHED_BELOW:
        cache[n] = entry
    return entry


json_str = json.JSONEncoder(ensure_ascii=False).encode
