"""DeBERTa-v3 building blocks with HF ``DebertaV2ForMaskedLM`` names (see ``deberta``).

Each takes ``c``, a ``pretrain.models.deberta.Config`` (typed here by its base class: this
module sits below ``deberta``, which composes these blocks).

Embeddings, post-LN transformer blocks around ``DisentangledSelfAttention``, the encoder
with its LayerNorm-ed relative embeddings, the MLM head and microsoft/DeBERTa's RTD head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.base import EncoderConfig as Config  # the blocks take DeBERTa's Config
from pretrain.models.deberta_attention import DisentangledSelfAttention


class Embeddings(nn.Module):
    """Token embedding -> LayerNorm -> zero padding -> dropout (no absolute positions added).

    ``sharing`` (an RTD discriminator's ``embedding_sharing``) decides where the token table
    lives: None (MLM model, generator) or "nes": ``word_embeddings`` of its own; "es": none,
    the generator's table is used as is; "gdes": none, stop_gradient(generator table) +
    ``word_embeddings_delta``. ``position_embeddings`` exists only for EMD.
    """

    def __init__(self, c: Config, sharing: str | None = None):
        super().__init__()
        self.pad_token_id, self.sharing = c.pad_token_id, sharing
        self.word_embeddings = None
        if sharing in (None, "nes"):
            self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, c.pad_token_id)
        elif sharing == "gdes":
            self.word_embeddings_delta = nn.Parameter(torch.zeros(c.vocab_size, c.hidden_size))
        self.position_embeddings = (
            nn.Embedding(c.max_position_embeddings, c.hidden_size) if c.emd else None
        )
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def word_weight(self, shared: torch.Tensor | None = None) -> torch.Tensor:
        """(V, C) token table; ``shared`` = the generator's (ignored with a table of its own)."""
        if self.word_embeddings is not None:
            return self.word_embeddings.weight
        if self.sharing == "es":
            return shared  # not detached: the RTD loss trains the generator's table too
        return shared.detach() + self.word_embeddings_delta

    def forward(self, input_ids, attention_mask, shared=None) -> torch.Tensor:
        x = F.embedding(input_ids, self.word_weight(shared), self.pad_token_id)  # (B, T, C)
        x = self.LayerNorm(x) * attention_mask.unsqueeze(-1).to(x.dtype)  # HF zeroes padding
        return self.dropout(x)


class ResidualNorm(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual) (HF ``attention.output`` and ``output``)."""

    def __init__(self, c: Config, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.self = DisentangledSelfAttention(
            c.hidden_size,
            c.num_attention_heads,
            c.attention_probs_dropout_prob,
            c.hidden_dropout_prob,
            share_att_key=c.share_att_key,
        )
        self.output = ResidualNorm(c, c.hidden_size)

    def forward(self, hidden, query, rel, ctx, taps=None):
        return self.output(self.self(hidden, query, rel, ctx, taps), query)


class Intermediate(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    """Post-LN block; ``query`` (B, M, C) replaces the queries (and residual) when given."""

    def __init__(self, c: Config):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = ResidualNorm(c, c.intermediate_size)

    def forward(self, hidden, ctx, rel, query=None, taps=None):
        a = self.attention(hidden, hidden if query is None else query, rel, ctx, taps)  # (B, M, C)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        span = c.position_buckets if c.position_buckets > 0 else c.relative_range
        self.rel_embeddings = nn.Embedding(2 * span, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)  # norm_rel_ebd

    def rel(self) -> torch.Tensor:
        return self.LayerNorm(self.rel_embeddings.weight)  # (2S, C)

    def forward(self, x, ctx, skip_last: bool = False, taps=None) -> torch.Tensor:
        """``taps`` (``pretrain.models.taps.Taps``) records the input and every block's output
        (and the scores, which need ``ctx`` without flex attention)."""
        rel = self.rel()
        if taps is not None:
            taps.hidden.append(x)
        for layer in self.layer[: len(self.layer) - int(skip_last)]:
            x = layer(x, ctx, rel, taps=taps)
            if taps is not None:
                taps.hidden.append(x)
        return x  # (B, T, C)


class DebertaModel(nn.Module):
    """HF ``DebertaV2Model``: embeddings + encoder."""

    def __init__(self, c: Config, sharing: str | None = None):
        super().__init__()
        self.embeddings = Embeddings(c, sharing)
        self.encoder = Encoder(c)

    def forward(self, input_ids, attention_mask, ctx, shared=None, skip_last=False, taps=None):
        x = self.embeddings(input_ids, attention_mask, shared)
        return self.encoder(x, ctx, skip_last, taps)  # (B, T, C)


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> token embedding^T + bias (HF/microsoft ``lm_head``)."""

    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h, embedding):
        return F.linear(self.LayerNorm(F.gelu(self.dense(h))), embedding, self.bias)  # (.., V)


class LMPredictions(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.lm_head = LMHead(c)


class RTDHead(nn.Module):
    """microsoft/DeBERTa ``LMMaskPredictionHead``: each token sees its document's first token."""

    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.classifier = nn.Linear(c.hidden_size, 1)

    def forward(self, h, first):
        x = self.LayerNorm(h + first)  # (B, T, C); first: each token's document start state
        return self.classifier(F.gelu(self.dense(x))).squeeze(-1)  # (B, T)


class MaskedLM(nn.Module):
    """The RTD generator: ``deberta`` + ``lm_predictions``, as HF ``DebertaV2ForMaskedLM``."""

    def __init__(self, c: Config):
        super().__init__()
        self.deberta = DebertaModel(c)
        self.lm_predictions = LMPredictions(c)
