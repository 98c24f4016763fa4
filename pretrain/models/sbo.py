"""SpanBERT's span boundary objective (Joshi et al., 2020), a head for BERT and RoBERTa.

Every predicted token x_i of a span (s, e) is predicted a second time from the span's
boundary tokens only: y_i = f([h_(s-1); h_(e+1); p_(i-s+1)]), where p is a learned relative
position embedding and f two layers of Linear -> GeLU -> LayerNorm (SpanBERT's
``MLPWithLayerNorm``), decoded onto the vocabulary with the tied word-embedding matrix plus a
bias of its own. The loss is summed like MLM's and normalised by the same global count of
predicted tokens: loss = (S_mlm + S_sbo) / N_mlm.

The boundaries come with the batch (``span_left`` / ``span_right`` from
``data_pipeline.masking.boundaries``, ``masking.boundaries = true``): a span is a maximal run
of predicted tokens; a boundary that does not exist (row edge) or is padding is -1 and
contributes a zero vector. Boundary tokens are never predicted tokens, so the masked
tokens' own hidden states get no gradient through this head (tested).

The head is a pretraining head: checkpoints hold it (``sbo.*``); HF exports drop it
(``strip_for_export``) and import without it, so the exported backbone gives the same MLM
logits as the trained model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common import IGNORE_INDEX, predicted_positions


class SpanBoundaryHead(nn.Module):
    """[h(s-1); h(e+1); p(i-s+1)] -> 2 x (Linear, GeLU, LayerNorm) -> tied decoder + bias."""

    def __init__(self, hidden: int, vocab_size: int, positions: int, eps: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.dense1 = nn.Linear(3 * hidden, hidden)
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.dense2 = nn.Linear(hidden, hidden)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    @classmethod
    def of(cls, config) -> SpanBoundaryHead:
        """The head of a BERT / RoBERTa ``config`` (``sbo_positions`` rows of places)."""
        return cls(
            config.hidden_size, config.vocab_size, config.sbo_positions, config.layer_norm_eps
        )

    def forward(
        self, left: torch.Tensor, right: torch.Tensor, offset: torch.Tensor, embedding
    ) -> torch.Tensor:
        """(N, V) logits from (N, C) boundary states and (N,) offsets i - s + 1 (>= 1)."""
        offset = offset.clamp(max=self.position_embeddings.num_embeddings - 1)
        x = torch.cat([left, right, self.position_embeddings(offset)], dim=-1)  # (N, 3C)
        x = self.layer_norm1(F.gelu(self.dense1(x)))
        x = self.layer_norm2(F.gelu(self.dense2(x)))
        return F.linear(x, embedding, self.bias)  # (N, V)


def boundary_inputs(
    h: torch.Tensor,
    labels: torch.Tensor,
    span_left: torch.Tensor,
    span_right: torch.Tensor,
    capacity: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(left states, right states, offsets, targets) for the decoded rows, in the order of
    the MLM head's rows: row-major labelled positions (``gather_predicted``), or with a fixed
    ``capacity`` the (B*K) slots of ``gather_predicted_fixed`` (targets IGNORE_INDEX in the
    padding slots). A missing boundary (-1) gives a zero state."""
    b, t, c = h.shape
    if capacity is None:
        row, pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)  # row-major order
        targets = labels[row, pos]
    else:
        qpos, valid = predicted_positions(labels, capacity)  # (B, K)
        row = torch.arange(b, device=h.device)[:, None].expand_as(qpos).reshape(-1)
        pos = qpos.reshape(-1)
        targets = torch.where(valid.reshape(-1), labels[row, pos], IGNORE_INDEX)
    left, right = span_left[row, pos], span_right[row, pos]

    def state(at: torch.Tensor) -> torch.Tensor:
        gathered = h[row, at.clamp(min=0)]  # (N, C)
        return torch.where((at >= 0)[:, None], gathered, torch.zeros_like(gathered))

    # i - s + 1 with s = left + 1: the token's 1-based place in its span (left = -1: s = 0).
    offset = (pos - left).clamp(min=1)
    return state(left), state(right), offset, targets


def sbo_sums(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed cross-entropy and number correct of the boundary predictions (the count is the
    MLM head's: the same predicted tokens)."""
    loss = F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=IGNORE_INDEX)
    return {"sbo_loss_sum": loss, "sbo_correct": (logits.argmax(-1) == targets).sum()}


def sbo_forward(model, h, labels, span_left, span_right, embedding) -> dict[str, torch.Tensor]:
    """The SBO sums of ``model`` (which has ``config.sbo`` and a ``sbo`` head) on the (B, T, C)
    last hidden states ``h``; refuses a batch without boundaries."""
    if span_left is None or span_right is None:
        raise ValueError(
            "the span boundary objective (model sbo = true) needs span_left / span_right "
            "in every batch: set masking.boundaries = true"
        )
    cap = getattr(model, "predict_capacity", None)
    left, right, offset, targets = boundary_inputs(h, labels, span_left, span_right, cap)
    return sbo_sums(model.sbo(left, right, offset, embedding), targets)


def strip_for_export(config: dict, state: dict) -> tuple[dict, dict]:
    """An HF export's config and tensors without the SBO head (a pretraining head that
    ``transformers`` does not have): ``sbo`` false and no ``sbo.*`` tensors."""
    config = {**config, "sbo": False}
    return config, {k: v for k, v in state.items() if not k.startswith("sbo.")}
