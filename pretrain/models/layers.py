"""BERT-style encoder blocks shared by RoBERTa and ELECTRA, with Hugging Face parameter names.

Module and attribute names reproduce HF's ``BertEmbeddings`` / ``BertLayer`` tree
(``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``,
``attention.output.LayerNorm``, ``intermediate.dense``, ``output.dense`` ...), so converting
to and from ``transformers`` checkpoints is an identity on the names. The computation differs
from HF only in how it is organised:

- attention is one ``F.scaled_dot_product_attention`` call; with no padding and no packed
  segments the mask is dropped (``attn_mask=None``) so flash kernels can run on GPU;
- without ``token_type_ids`` the all-zero token-type lookup is a broadcast add of row 0
  (same values, same gradient);
- no decoder / cross-attention / KV-cache paths, no pooler (pretraining never uses them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common import attention_mask_for_sdpa, init_weights
from pretrain.models.taps import Taps, explicit_attention


def sdpa_mask_or_none(
    attention_mask: torch.Tensor, segment_ids: torch.Tensor | None
) -> torch.Tensor | None:
    """``attention_mask_for_sdpa``, or None when every key is visible to every query.

    A None mask is exact (nothing is masked) and lets SDPA pick flash attention on GPU,
    which refuses explicit masks. The ``.all()`` costs one host sync per forward.
    """
    if segment_ids is None and bool(attention_mask.all()):
        return None
    return attention_mask_for_sdpa(attention_mask, segment_ids)


class Embeddings(nn.Module):
    """Token + token-type + position embeddings, LayerNorm, dropout (HF ``*Embeddings``)."""

    def __init__(
        self,
        vocab_size: int,
        size: int,
        max_positions: int,
        type_vocab_size: int,
        pad_token_id: int,
        eps: float,
        dropout: float,
        position_padding_idx: int | None = None,
    ):
        super().__init__()
        # padding_idx keeps the pad rows' gradient at zero, as HF does (needed for grad parity).
        self.word_embeddings = nn.Embedding(vocab_size, size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(
            max_positions, size, padding_idx=position_padding_idx
        )
        self.token_type_embeddings = nn.Embedding(type_vocab_size, size)
        self.LayerNorm = nn.LayerNorm(size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.word_embeddings(input_ids)  # (B, T, E)
        if token_type_ids is None:
            # Single-segment rows have type 0 everywhere: add row 0, not an all-zero lookup.
            x = x + self.token_type_embeddings.weight[0]
        else:  # sentence pairs: [CLS] A [SEP] type 0, B [SEP] type 1
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)  # same summation order as HF
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention projections (HF ``attention.self``)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout_p = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, taps: Taps | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        shape = (B, T, self.num_heads, C // self.num_heads)
        q = self.query(x).view(shape).transpose(1, 2)  # (B, H, T, D)
        k = self.key(x).view(shape).transpose(1, 2)
        v = self.value(x).view(shape).transpose(1, 2)
        p = self.dropout_p if self.training else 0.0
        if taps is not None and taps.scores:  # distillation reads the scores: written out
            y, scores = explicit_attention(q, k, v, mask, p, self.training)
            taps.attention.append(scores)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)


class DenseResidualNorm(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): HF ``*SelfOutput`` and ``*Output``."""

    def __init__(self, in_size: int, out_size: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_size, out_size)
        self.LayerNorm = nn.LayerNorm(out_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    """Self-attention plus its output projection (HF ``attention``)."""

    def __init__(
        self, hidden: int, heads: int, eps: float, hidden_dropout: float, attn_dropout: float
    ):
        super().__init__()
        self.self = SelfAttention(hidden, heads, attn_dropout)
        self.output = DenseResidualNorm(hidden, hidden, eps, hidden_dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, taps: Taps | None = None
    ) -> torch.Tensor:
        return self.output(self.self(x, mask, taps), x)


class Intermediate(nn.Module):
    """First FFN projection with exact (erf) GELU, HF's ``"gelu"`` (HF ``intermediate``)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    """Post-LayerNorm transformer block (HF ``encoder.layer.N``)."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        intermediate: int,
        eps: float,
        hidden_dropout: float,
        attn_dropout: float,
    ):
        super().__init__()
        self.attention = Attention(hidden, heads, eps, hidden_dropout, attn_dropout)
        self.intermediate = Intermediate(hidden, intermediate)
        self.output = DenseResidualNorm(intermediate, hidden, eps, hidden_dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, taps: Taps | None = None
    ) -> torch.Tensor:
        x = self.attention(x, mask, taps)  # (B, T, C)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    """A stack of ``Layer`` (HF ``encoder``)."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layer = nn.ModuleList(Layer(**layer_kwargs) for _ in range(num_layers))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, taps: Taps | None = None
    ) -> torch.Tensor:
        if taps is None:
            for block in self.layer:
                x = block(x, mask)
            return x
        taps.hidden.append(x)  # HF's hidden_states: the embedding output, then every block's
        for block in self.layer:
            x = block(x, mask, taps)
            taps.hidden.append(x)
        return x


class TiedDecoder(nn.Module):
    """Output projection onto the vocabulary with the (tied) word-embedding matrix.

    Owns only the bias, so the state dict carries ``<name>.bias`` and no duplicate weight,
    exactly what ``transformers`` writes for tied heads.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)  # (N, V)


@torch.no_grad()
def init_bert_weights(module: nn.Module, std: float) -> None:
    """``common.init_weights`` plus the tied decoder's own bias (zero)."""
    init_weights(module, std)
    if isinstance(module, TiedDecoder):
        module.bias.zero_()
