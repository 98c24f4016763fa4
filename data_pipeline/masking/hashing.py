"""Counter-based 64-bit hashing in numpy: randomness without RNG state.

Dynamic masking must give a row the same mask whichever rank, worker, batch or batch
position it lands in, so nothing here keeps state: every random number is
``mix64(stream_key + counter * GOLDEN)``, the output function of splitmix64 (Steele,
Lea & Flood 2014) applied to a Weyl sequence. ``mix64`` is Stafford's "variant 13"
finaliser, a bijection on 64-bit words with full avalanche, so distinct inputs give
distinct, well-scattered outputs. Independent streams (selection order, split order,
random replacement ids, span draws) come from mixing the row key with a per-stream salt.
``content_keys`` hashes a row's tokens instead of its id, for static masking (a row's mask
then follows its contents wherever it lands).

All functions take and return numpy ``uint64`` *arrays*: numpy wraps array arithmetic
modulo 2**64 silently, whereas operations on ``np.uint64`` scalars warn on overflow.
"""

from __future__ import annotations

import numpy as np

U64 = np.uint64
GOLDEN = U64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd: splitmix64's Weyl increment
_M1 = U64(0xBF58476D1CE4E5B9)
_M2 = U64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = U64(30), U64(27), U64(31), U64(11)
MAX64 = U64(0xFFFFFFFFFFFFFFFF)

# One salt per independent stream (arbitrary odd constants: digits of pi and e).
STREAM_SELECT = U64(0x243F6A8885A308D3)  # token (mlm) or word (wwm) selection order
STREAM_SPLIT = U64(0x13198A2E03707345)  # order deciding mask / random / unchanged
STREAM_RANDOM = U64(0xA4093822299F31D1)  # which random id replaces a token
STREAM_ROW = U64(0x082EFA98EC4E6C89)  # per-row uniforms (probabilistic rounding)
STREAM_SPAN = U64(0x452821E638D01377)  # span anchors, lengths and budget coins
SALT_SEED = U64(0xB7E151628AED2A6B)
SALT_EPOCH = U64(0xBF7158809CF4F3C7)
SALT_TOKEN = U64(0x9216D5D98979FB1B)  # content_keys: token ids, then the row's length
SALT_LENGTH = U64(0xD1310BA698DFB5AC)


def mix64(z: np.ndarray) -> np.ndarray:
    """Stafford variant-13 / splitmix64 finaliser of a uint64 array (returns a new array)."""
    z = z ^ (z >> _S30)
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def stream_keys(keys: np.ndarray, salt: np.uint64) -> np.ndarray:
    """Per-row keys of one independent stream: ``mix64(key ^ salt)``."""
    return mix64(keys ^ salt)


def hash_at(skeys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """``mix64(skey + (counter + 1) * GOLDEN)``, broadcasting ``skeys`` against ``counters``.

    With ``skeys`` of shape (B, 1) and ``counters`` of shape (L,) this is the (B, L)
    matrix of per-position hashes; with equal 1-D shapes it hashes selected positions only.
    """
    z = counters.astype(U64) + U64(1)
    z *= GOLDEN
    return mix64(z + skeys)


def to_unit(h: np.ndarray) -> np.ndarray:
    """Top 53 bits of a hash as a float64 uniform in [0, 1)."""
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def row_uniforms(keys: np.ndarray, salt: np.uint64, counters: np.ndarray) -> np.ndarray:
    """(len(keys), len(counters)) uniforms in [0, 1) of stream ``salt``."""
    return to_unit(hash_at(stream_keys(keys, salt)[:, None], counters))


def _as_u64_scalar(name: str, value: int) -> np.ndarray:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= int(value) < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return np.array([int(value)], dtype=U64)


def row_keys(seed: int, epoch: int, sample_ids: np.ndarray) -> np.ndarray:
    """The masking key of each sample: a 64-bit hash of (seed, epoch, sample id).

    For a fixed (seed, epoch) the map id -> key is a bijection (composition of
    bijections), so distinct samples never share a key; for a fixed (seed, id) the map
    epoch -> key is a bijection too, so a sample's key changes every epoch.
    """
    s = mix64(_as_u64_scalar("seed", seed) ^ SALT_SEED)
    e = mix64(s ^ mix64(_as_u64_scalar("epoch", epoch) + SALT_EPOCH))
    ids = np.asarray(sample_ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"sample_ids must be integers, got dtype {ids.dtype}")
    if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
        raise ValueError(f"sample_ids must be non-negative, got {int(ids.min())}")
    return mix64(mix64(ids.astype(U64) + e) ^ s)


def content_keys(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """A 64-bit, order-sensitive hash of each row's real (attention 1) token ids: (B,) uint64.

    Static masking keys rows by these (``row_keys(seed, epoch % N, content_keys(...))``) so
    that identical rows get identical masks wherever they land. The hash is a sum over the
    real tokens of ``hash_at(mix64(id ^ SALT_TOKEN), k)``, k the token's rank among the row's
    real tokens (so padding, wherever it is, changes nothing), mixed with the row's length:
    swapping two different tokens changes the sum, and for distinct rows a collision has
    probability ~2**-64. An empty row gets a valid key like any other.
    """
    ids, att = np.asarray(input_ids), np.asarray(attention_mask)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"input_ids must be a 2-D integer array, got {ids.ndim}-D {ids.dtype}")
    if att.shape != ids.shape:
        raise ValueError(f"attention_mask {att.shape} must match input_ids {ids.shape}")
    real = att != 0
    rank = np.cumsum(real, axis=1) - 1  # 0, 1, ... over the real tokens of each row
    terms = hash_at(stream_keys(ids.astype(U64), SALT_TOKEN), rank.astype(U64))
    total = np.where(real, terms, U64(0)).sum(axis=1, dtype=U64)  # wraps modulo 2**64
    length = real.sum(axis=1).astype(U64)
    return mix64(total ^ stream_keys(length, SALT_LENGTH))
