"""Distillation loss terms as *sums* with the counts that normalise them (as every loss
here: the objective divides by global counts across micro-batches and ranks).

Per micro-batch, from the student's and the teacher's ``Taps`` (``pretrain.models.taps``):

    ce         T**2 * sum_masked KL(softmax(t / T) || softmax(s / T))     / N_masked
    cos        sum_real (1 - cos(W s_L, t_N))                              / N_real
    embedding  sum_real mean_d (W_e s_0 - t_0)**2                         / N_real
    hidden     sum_m sum_real mean_d (W_h s_m - t_map(m))**2               / N_real
    attention  sum_m sum_(q,k) visible mean_heads (a_s,m - a_t,map(m))**2  / N_visible

The soft-target term is the cross-entropy to the teacher's distribution minus the teacher's
entropy (a constant of the student): the same gradient, and exactly zero for a student that
matches its teacher. Attention scores are pre-softmax; only query-key pairs where a real
query may attend (its document's real keys) count, so padding and masked entries (set to
the dtype's minimum by the models) never enter the differences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.models.common import IGNORE_INDEX, attention_mask_for_sdpa


def visible_pairs(attention_mask: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, T, T) bool: real query may attend to key (its own document's real tokens)."""
    mask = attention_mask_for_sdpa(attention_mask, segment_ids)  # keys; (B,1,1,T) or (B,1,T,T)
    real_q = attention_mask.bool()[:, None, :, None]
    return mask & real_q


def visible_pair_count(attention_mask: torch.Tensor, segment_ids: torch.Tensor | None) -> int:
    """``visible_pairs(...).sum()`` without the (B, T, T) mask: a real query sees the real
    tokens of its segment (the whole row without segments), so the count is the sum over rows
    and segments of (real tokens)**2. For the host-side counts of every step."""
    real = attention_mask.bool()
    if segment_ids is None:
        return int((real.sum(1).long() ** 2).sum())
    seg = segment_ids.long()
    width = int(seg.max()) + 1 if seg.numel() else 1
    key = seg + width * torch.arange(seg.shape[0], device=seg.device)[:, None]  # (row, segment)
    per_segment = torch.bincount(key[real], minlength=width * seg.shape[0])
    return int((per_segment.long() ** 2).sum())


def soft_ce_sum(s_logits, t_logits, targets, temperature: float) -> torch.Tensor:
    """T**2 * summed KL(teacher || student) at temperature T over rows with a target."""
    keep = targets != IGNORE_INDEX
    log_s = F.log_softmax(s_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(t_logits.float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (N,)
    return torch.where(keep, kl, 0.0).sum() * temperature**2


def cosine_sum(s_hidden, t_hidden, real: torch.Tensor) -> torch.Tensor:
    """Summed 1 - cosine similarity over real tokens ((B, T, C) states, (B, T) bool)."""
    cos = F.cosine_similarity(s_hidden.float(), t_hidden.float(), dim=-1)  # (B, T)
    return torch.where(real, 1.0 - cos, 0.0).sum()


def mse_sum(s_hidden, t_hidden, real: torch.Tensor) -> torch.Tensor:
    """Per-token mean squared error over the width, summed over real tokens."""
    err = (s_hidden.float() - t_hidden.float()).pow(2).mean(-1)  # (B, T)
    return torch.where(real, err, 0.0).sum()


def attention_sum(s_scores, t_scores, visible: torch.Tensor) -> torch.Tensor:
    """Squared difference of (B, H, T, T) scores, mean over heads, summed over visible pairs."""
    diff = torch.where(visible, s_scores.float() - t_scores.float(), 0.0)
    return diff.pow(2).mean(1).sum()
