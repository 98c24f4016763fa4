"""The two encoding engines behind ``Tokenizer``: sentencepiece and HF ``tokenizers``.

A backend knows nothing about special tokens beyond listing the ones its model defines;
``Tokenizer`` adds those, plus word starts, chunking of huge texts and the file layout.
Every backend encodes plain text only: special-token strings in the text are ordinary text.

``lossless`` backends map text to tokens whose surfaces (``surfaces()``) concatenate to the
text's exact UTF-8 bytes, so token byte offsets are a cumulative sum and decode gives the
text back. That holds for the sentencepiece models this project trains (identity
normalisation, no dummy prefix, byte fallback) and for GPT-2/RoBERTa byte-level BPE, not
for WordPiece (kind ``wordpiece``: lowercased, whitespace dropped) nor other HF models
(``hf``), whose word starts come from character offsets (``encode_offsets``).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache

import numpy as np

from data_pipeline.tokenizer.hf_files import (
    BYTE,
    CONTROL,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    spm_to_hf,
)

BLOCK = "\u2581"  # sentencepiece's visible space, "▁"
SPM_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table (inverse of ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # platforms without affinity
        return os.cpu_count() or 1


class SpmBackend:
    """A sentencepiece model (``spm.model``): fast C++ batch encoding."""

    def __init__(self, proto_bytes: bytes):
        from sentencepiece import SentencePieceProcessor
        from sentencepiece import sentencepiece_model_pb2 as pb

        self.proto_bytes = proto_bytes
        self.proto = pb.ModelProto()
        self.proto.ParseFromString(proto_bytes)
        self.sp = SentencePieceProcessor(model_proto=proto_bytes)
        self.size = self.sp.get_piece_size()
        self.types = [p.type for p in self.proto.pieces]
        self.kind = "spm-" + SPM_TYPES.get(self.proto.trainer_spec.model_type, "unknown")
        spec = self.proto.normalizer_spec
        self.lossless = bool(
            self.proto.trainer_spec.byte_fallback
            and not spec.precompiled_charsmap
            and not spec.add_dummy_prefix
            and not spec.remove_extra_whitespaces
        )
        # sentencepiece turns spaces into "▁", so a literal "▁" in the text would decode as a
        # space; lossless models spell it with its three UTF-8 byte pieces instead.
        self._block_ids = (
            [self.sp.piece_to_id(f"<0x{b:02X}>") for b in BLOCK.encode()] if self.lossless else None
        )

    def special_pieces(self) -> list[int]:
        return [i for i, t in enumerate(self.types) if t in (CONTROL, UNKNOWN)]

    def atomic_pieces(self) -> list[str]:
        """Pieces that sentencepiece always cuts out of the text (user-defined symbols)."""
        pieces = self.proto.pieces
        return [p.piece for p, t in zip(pieces, self.types, strict=True) if t == USER_DEFINED]

    def surfaces(self) -> list[bytes]:
        out = []
        for p, t in zip(self.proto.pieces, self.types, strict=True):
            if t == BYTE:
                out.append(bytes([int(p.piece[3:5], 16)]))
            elif t in (CONTROL, UNKNOWN, UNUSED):
                out.append(b"")
            else:
                out.append(p.piece.replace(BLOCK, " ").encode())
        return out

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        # plain Python lists: flattening them in one go is cheaper than one array per text.
        # Threads: as many as this process may run on. sentencepiece's default is every core
        # of the machine, which for a process pinned to fewer (mpirun binds each rank to a
        # core) only adds thread switching, a few % more CPU time.
        out = self.sp.encode(texts, num_threads=_usable_cpus())
        if self._block_ids is not None:
            for k, t in enumerate(texts):
                if BLOCK in t:
                    parts = self.sp.encode(t.split(BLOCK), num_threads=_usable_cpus())
                    out[k] = parts[0]
                    for p in parts[1:]:
                        out[k] += self._block_ids + p
        return out

    def encode_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, (n, 2) character spans) for word starts of lossy models."""
        r = self.sp.encode(text, out_type="offset_mapping")
        spans = np.array(r["offsets"], dtype=np.int64).reshape(-1, 2)
        return np.asarray(r["ids"], dtype=np.int64), spans

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def id_to_token(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def token_to_id(self, s: str) -> int | None:
        i = self.sp.piece_to_id(s)
        return i if self.sp.id_to_piece(i) == s else None

    def digest(self) -> str:
        return hashlib.sha256(self.proto_bytes).hexdigest()

    def hf_plain(self) -> dict:
        return spm_to_hf(self.proto)


class HFBackend:
    """An HF ``tokenizers`` tokenizer given as JSON without special tokens."""

    def __init__(self, plain_json: dict):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(json.dumps(plain_json))
        # round-trip through the library so that equal tokenizers give equal JSON
        self.plain = json.loads(self.tok.to_str())
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.size = max(vocab.values(), default=-1) + 1
        model = self.plain.get("model") or {}
        pre = self.plain.get("pre_tokenizer") or {}
        if (
            model.get("type") == "BPE"
            and self.plain.get("normalizer") is None
            and pre.get("type") == "ByteLevel"
            and not pre.get("add_prefix_space")
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")
        ):
            self.kind = "bytelevel"
        elif model.get("type") == "WordPiece":
            self.kind = "wordpiece"  # lossy: offsets give word starts, decode is approximate
        else:
            self.kind = "hf"
        self.lossless = self.kind == "bytelevel"
        # WordPiece marks word-internal pieces ("##ing"): the classic whole-word rule
        self.continuing_prefix = (
            model.get("continuing_subword_prefix") if model.get("type") == "WordPiece" else None
        )

    def special_pieces(self) -> list[int]:
        return []  # special added tokens were split off into the Tokenizer

    def atomic_pieces(self) -> list[str]:
        return [
            a["content"]
            for a in self.plain.get("added_tokens") or []
            if not a.get("normalized", True)
        ]

    def surfaces(self) -> list[bytes]:
        out, table = [], byte_decoder()
        for i in range(self.size):
            t = self.tok.id_to_token(i) or ""
            if self.kind == "bytelevel" and all(c in table for c in t):
                out.append(bytes(table[c] for c in t))
            else:
                out.append(t.replace(BLOCK, " ").encode())
        return out

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.21) skips offsets we do not need here
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encode_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        e = self.tok.encode(text, add_special_tokens=False)
        spans = np.array(e.offsets, dtype=np.int64).reshape(-1, 2)
        return np.array(e.ids, dtype=np.int64), spans

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def token_to_id(self, s: str) -> int | None:
        return self.tok.token_to_id(s)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.plain, sort_keys=True).encode()).hexdigest()

    def hf_plain(self) -> dict:
        return self.plain
