"""What a forward pass can record for distillation (``Taps``), and the explicit attention
path that exposes the attention scores.

A model's ``forward(..., taps=Taps())`` fills, as HF's ``output_hidden_states`` /
``output_attentions`` would: the embedding output and every block's output (``hidden``,
HF's ``hidden_states``), the MLM logits and targets at the decoded positions, and, when
``Taps(scores=True)``, every block's attention *scores* (pre-softmax, scaled, masked
entries at the dtype's minimum; their softmax is HF's ``attentions``). Scores need the
explicit path below: SDPA never materialises them, so it stays the default whenever no one
asks (``taps=None`` or ``scores=False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Taps:
    scores: bool = False
    """Record each block's attention scores (switches attention to the explicit path)."""
    hidden: list[torch.Tensor] = field(default_factory=list)
    """(B, T, C) embedding output, then each block's output (L + 1 tensors; DeBERTa with
    EMD: L, the last block runs inside the mask decoder)."""
    attention: list[torch.Tensor] = field(default_factory=list)
    """(B, H, T, T) pre-softmax scores of each block (only with ``scores``)."""
    logits: torch.Tensor | None = None
    """(N, V) MLM logits at the decoded positions (the order of ``gather_predicted``)."""
    targets: torch.Tensor | None = None
    """(N,) their targets (IGNORE_INDEX in the padding slots of a fixed capacity)."""


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.scaled_dot_product_attention`` written out: (output (B, H, T, D), scores (B, H, T, T)).

    ``mask``: SDPA's boolean mask (True = may attend) or None. Masked scores are set to the
    dtype's minimum (as HF does), so a softmax over them gives exactly zero weight."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.dropout(torch.softmax(scores, dim=-1), dropout_p, training)
    return torch.matmul(probs, v), scores
