"""DeBERTa's disentangled self-attention: relative positions, a plain path and a FlexAttention path.

score(i, j) = (q_i . k_j  +  q_i . k_rel[r(i, j)]  +  k_j . q_rel[r(i, j)]) / sqrt(3 d)
               content->content  content->position      position->content

with ``r(i, j) = clamp(bucket(i - j) + span, 0, 2 span - 1)`` the row of the (LayerNorm-ed)
relative embedding table, ``k_rel``/``q_rel`` that table through the layer's own key/query
projections (``share_att_key``), and ``bucket`` DeBERTa-v3's log bucketing. Because
``bucket`` is odd-symmetric, HF's p2c index ``clamp(-bucket(j - i) + span)`` is the same
``r(i, j)``: one (L, L) index serves both terms.

- Plain path (``attention_impl="plain"``, CPU and GPU): the three score matrices, HF's
  masked softmax (``finfo.min`` fill, so fully padded rows give no NaN), dropout on the
  probabilities. Same operations, in the same order, as
  ``transformers.models.deberta_v2.modeling_deberta_v2.DisentangledSelfAttention``.
- Flex path (``"flex"``; ``"auto"`` picks it on CUDA): ``torch.nn.attention.flex_attention``
  with the c2p table (B, H, Lq, 2 span) = Q . K_rel and the p2c table (B, H, L, 2 span) =
  K . Q_rel precomputed and added in ``score_mod`` (gradients flow into the captured tables
  on GPU); padding and packed documents through a ``block_mask``. FlexAttention has no
  dropout on probabilities (``Config`` refuses "flex" with attention dropout; "auto" falls
  back to plain while training with it) and no backward on CPU (a clear error is raised).
  Fully masked query rows (padding) give zeros instead of the plain path's uniform average:
  only padding positions differ, and nothing reads them.

Queries may be a subset of positions (``query_pos``, (B, M)): the enhanced mask decoder
re-runs the last layer only for the positions being predicted.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace

import torch
from torch import nn


def log_bucket_position(rel: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa's log bucketing of relative distances (exact below bucket_size // 2).

    The float operations are HF's ``make_log_bucket_position`` one for one, so that bucket
    boundaries (a ``ceil`` of a logarithm) agree bit for bit.
    """
    sign = torch.sign(rel)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (rel < mid) & (rel > -mid), torch.tensor(mid - 1).type_as(rel), torch.abs(rel)
    )
    log_pos = (
        torch.ceil(
            torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)
        )
        + mid
    )
    return torch.where(abs_pos <= mid, rel.type_as(log_pos), log_pos * sign)


def attention_span(position_buckets: int, max_relative_positions: int) -> int:
    """Relative positions on each side (HF ``pos_ebd_size``); the table has 2x as many rows."""
    return position_buckets if position_buckets > 0 else max_relative_positions


@functools.lru_cache(maxsize=16)
def _relative_index_cpu(length: int, position_buckets: int, max_relative_positions: int):
    pos = torch.arange(length, dtype=torch.long)
    rel = pos[:, None] - pos[None, :]  # (L, L): query i minus key j
    if position_buckets > 0 and max_relative_positions > 0:
        rel = log_bucket_position(rel, position_buckets, max_relative_positions).long()
    span = attention_span(position_buckets, max_relative_positions)
    return torch.clamp(rel + span, 0, 2 * span - 1)


@functools.lru_cache(maxsize=16)
def _relative_index_on(length: int, position_buckets: int, max_relative_positions: int, device):
    return _relative_index_cpu(length, position_buckets, max_relative_positions).to(device)


def relative_index(length: int, position_buckets: int, max_relative_positions: int, device):
    """(L, L) long: row of the relative table used by query i for key j.

    Built on the CPU (identical buckets whatever the device), cached per length and device
    (no host-to-device copy per step). Read-only: callers must not modify it.
    """
    return _relative_index_on(
        length, position_buckets, max_relative_positions, torch.device(device)
    )


@dataclass(frozen=True)
class AttentionContext:
    """Everything about one batch's attention pattern, built once and shared by all layers."""

    rel_index: torch.Tensor
    """(L, L) relative-table row of query position i and key position j."""
    key_ok: torch.Tensor
    """(B, L) bool: real (non-padding) keys."""
    segment_ids: torch.Tensor | None
    """(B, L) document ids of packed rows, or None (one document per row)."""
    use_flex: bool
    """Run FlexAttention instead of the plain path."""
    query_pos: torch.Tensor | None = None
    """(B, M) positions of the queries when they are a subset (EMD); None = all positions."""
    mask: torch.Tensor | None = None
    """Plain path: (B, 1, M, L) bool, True where the query may attend to the key (HF's
    query-and-key padding product, and equal segment ids)."""
    block_mask: object | None = None
    """Flex path: a ``BlockMask`` for padding/documents, or None when nothing is masked."""

    def with_queries(self, query_pos: torch.Tensor) -> AttentionContext:
        """The same batch with queries restricted to ``query_pos`` (B, M)."""
        return build_context(
            self.rel_index, self.key_ok, self.segment_ids, self.use_flex, query_pos
        )


def build_context(rel_index, key_ok, segment_ids, use_flex, query_pos=None) -> AttentionContext:
    ctx = AttentionContext(rel_index, key_ok, segment_ids, use_flex, query_pos)
    if use_flex:
        return replace(ctx, block_mask=_block_mask(ctx))
    q_ok = key_ok if query_pos is None else key_ok.gather(1, query_pos)  # (B, M)
    mask = q_ok[:, :, None] & key_ok[:, None, :]  # (B, M, L)
    if segment_ids is not None:
        q_seg = segment_ids if query_pos is None else segment_ids.gather(1, query_pos)
        mask = mask & (q_seg[:, :, None] == segment_ids[:, None, :])
    return replace(ctx, mask=mask[:, None])


def _block_mask(ctx: AttentionContext):
    from torch.nn.attention.flex_attention import create_block_mask

    key_ok, seg, qpos = ctx.key_ok, ctx.segment_ids, ctx.query_pos
    if seg is None and bool(key_ok.all()):
        return None  # nothing to mask: let the kernel skip mask evaluation entirely
    batch, keys = key_ok.shape
    queries = keys if qpos is None else qpos.shape[1]
    if seg is None:

        def mask_mod(b, h, q, k):
            return key_ok[b, k]
    elif qpos is None:

        def mask_mod(b, h, q, k):
            return key_ok[b, k] & (seg[b, q] == seg[b, k])
    else:

        def mask_mod(b, h, q, k):
            return key_ok[b, k] & (seg[b, qpos[b, q]] == seg[b, k])

    return create_block_mask(mask_mod, batch, None, queries, keys, device=key_ok.device)


_compiled_flex = None


def _flex_attention(*args, **kwargs):
    """Compiled FlexAttention on CUDA (the fused kernel); the eager reference on CPU."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not args[0].is_cuda:  # eager, and out of any compiled block: inductor's CPU backend
        return _eager_flex(*args, **kwargs)  # cannot lower this score_mod
    if torch.compiler.is_compiling():  # inside a compiled block: the kernel joins its graph
        return flex_attention(*args, **kwargs)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(*args, **kwargs)


@torch.compiler.disable
def _eager_flex(*args, **kwargs):
    """The eager reference FlexAttention (CPU checks of the fast path's maths, not speed)."""
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


class DisentangledSelfAttention(nn.Module):
    """HF ``attention.self``: query/key/value projections, shared with the relative table
    (``share_att_key``, DeBERTa-v3) or beside the relative table's own ``pos_query_proj`` /
    ``pos_key_proj`` (DeBERTa v1/v2)."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        attn_dropout: float,
        pos_dropout: float,
        share_att_key: bool = True,
    ):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query_proj = nn.Linear(hidden, hidden)
        self.key_proj = nn.Linear(hidden, hidden)
        self.value_proj = nn.Linear(hidden, hidden)
        if not share_att_key:  # HF creates both for pos_att_type = c2p|p2c
            self.pos_key_proj = nn.Linear(hidden, hidden)
            self.pos_query_proj = nn.Linear(hidden, hidden)
        self.share_att_key = share_att_key
        self.pos_dropout = nn.Dropout(pos_dropout)
        self.dropout = nn.Dropout(attn_dropout)
        self.scale = math.sqrt(self.head_dim * 3)  # three score terms: c2c, c2p, p2c

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_dim).transpose(-3, -2)

    def forward(self, hidden, query, rel_embeddings, ctx: AttentionContext, taps=None):
        """hidden (B, L, C) gives keys/values, query (B, M, C) the queries -> (B, M, C);
        ``taps`` (``pretrain.models.taps.Taps``) records the scores of the plain path."""
        q = self._heads(self.query_proj(query))  # (B, H, M, D)
        k = self._heads(self.key_proj(hidden))  # (B, H, L, D)
        v = self._heads(self.value_proj(hidden))  # (B, H, L, D)
        rel = self.pos_dropout(rel_embeddings)  # (2S, C)
        shared = self.share_att_key
        pos_q = self._heads((self.query_proj if shared else self.pos_query_proj)(rel))  # (H, 2S, D)
        pos_k = self._heads((self.key_proj if shared else self.pos_key_proj)(rel))  # (H, 2S, D)
        if ctx.use_flex:
            out = self._flex(q, k, v, pos_q, pos_k, ctx)  # (B, H, M, D)
        else:
            out = self._plain(q, k, v, pos_q, pos_k, ctx, taps)
        return out.transpose(1, 2).reshape(*query.shape[:-1], -1)  # (B, M, C)

    def _plain(self, q, k, v, pos_q, pos_k, ctx, taps=None):
        b, h, m, _ = q.shape
        keys = k.shape[2]
        idx = ctx.rel_index if ctx.query_pos is None else ctx.rel_index[ctx.query_pos]
        idx = idx.reshape(-1, 1, m, keys)  # (1 or B, 1, M, L)
        scores = torch.matmul(q, k.transpose(-1, -2) / self.scale)  # (B, H, M, L)
        c2p = torch.matmul(q, pos_k.transpose(-1, -2))  # (B, H, M, 2S)
        c2p = c2p.gather(-1, idx.expand(b, h, m, keys))
        p2c = torch.matmul(k, pos_q.transpose(-1, -2))  # (B, H, L, 2S)
        p2c = p2c.gather(-1, idx.transpose(-1, -2).expand(b, h, keys, m)).transpose(-1, -2)
        scores = scores + (c2p / self.scale + p2c / self.scale)
        scores = scores.masked_fill(~ctx.mask, torch.finfo(scores.dtype).min)
        if taps is not None and taps.scores:
            taps.attention.append(scores)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        return torch.matmul(probs, v)  # (B, H, M, D)

    def _flex(self, q, k, v, pos_q, pos_k, ctx):
        if not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError(
                "attention_impl='flex' cannot train on CPU (PyTorch FlexAttention has no CPU "
                "backward); use attention_impl='plain' or 'auto'"
            )
        if self.training and self.dropout.p > 0:
            raise RuntimeError("attention_impl='flex' cannot apply attention-probability dropout")
        c2p = torch.matmul(q, pos_k.transpose(-1, -2)) / self.scale  # (B, H, M, 2S)
        p2c = torch.matmul(k, pos_q.transpose(-1, -2)) / self.scale  # (B, H, L, 2S)
        idx, qpos = ctx.rel_index, ctx.query_pos
        if qpos is None:

            def score_mod(score, b, h, i, j):
                r = idx[i, j]
                return score + c2p[b, h, i, r] + p2c[b, h, j, r]
        else:

            def score_mod(score, b, h, i, j):
                r = idx[qpos[b, i], j]
                return score + c2p[b, h, i, r] + p2c[b, h, j, r]

        return _flex_attention(
            q, k, v, score_mod=score_mod, block_mask=ctx.block_mask, scale=1.0 / self.scale
        )
