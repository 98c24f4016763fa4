"""RoBERTa for masked-language-model pretraining (Liu et al., 2019).

Parameter names are those of HF ``RobertaForMaskedLM`` (``roberta.embeddings.*``,
``roberta.encoder.layer.N.*``, ``lm_head.dense``, ``lm_head.layer_norm``, ``lm_head.bias``;
the decoder weight is the word-embedding matrix), so ``roberta_hf`` only checks
names and shapes. Differences from the HF reference:

- ``forward`` decodes only the positions being predicted (``labels != -100``) and returns
  loss *sums* with counts (see ``pretrain.models``); ``mlm_logits`` gives full logits;
- ``segment_ids`` (packed documents) restrict attention to the query's own document;
  position ids still follow HF (count non-pad tokens from ``pad_token_id + 1`` across the
  whole row, as fairseq's FULL-SENTENCES packing does);
- no pooler, no decoder/cross-attention modes, a single token type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.base import EncoderConfig
from pretrain.models.common import count_params, gather_rows, mlm_sums
from pretrain.models.layers import (
    Embeddings,
    Encoder,
    init_bert_weights,
    sdpa_mask_or_none,
)
from pretrain.models.sbo import SpanBoundaryHead, sbo_forward
from pretrain.models.taps import Taps


@dataclass
class Config(EncoderConfig):
    vocab_size: int = 50265
    """Rows of the token embedding (RoBERTa's byte-level BPE: 50,265)."""
    max_position_embeddings: int = 514
    """Rows of the position embedding; sequences may be ``max_position_embeddings -
    pad_token_id - 1`` long (512 with RoBERTa's pad id 1), because positions start after pad."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (fairseq RoBERTa: 1e-5)."""
    pad_token_id: int = 1
    """Padding id: its embedding row stays zero and positions are counted after it."""
    type_vocab_size: int = 1
    """Token types (RoBERTa uses one)."""

    sbo: bool = False
    """SpanBERT's span boundary objective: an extra head predicting every masked token from
    its span's boundary tokens (``pretrain.models.sbo``; needs masking.boundaries = true)."""
    sbo_positions: int = 64
    """Rows of the SBO head's relative position table (a token's place in its span; places
    beyond share the last row)."""

    ARCH: ClassVar[str] = "roberta"
    POSITIVE: ClassVar[tuple[str, ...]] = ("type_vocab_size", "sbo_positions")

    def __post_init__(self):
        super().__post_init__()
        if self.pad_token_id + 2 > self.max_position_embeddings:
            self._fail(
                f"max_position_embeddings {self.max_position_embeddings} leaves no room: "
                f"positions start at pad_token_id + 1 = {self.pad_token_id + 1} (as in HF)"
            )


PRESETS = {
    # Tiny, for tests and the CPU smoke run; vocab_size comes from the tokenizer.
    "roberta-debug": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=258,
    ),
    "roberta-base": dict(),  # 124.7 M parameters with vocab 50,265
    "roberta-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),  # 355.4 M
    # DistilRoBERTa (HF's distilroberta-base): roberta-base with 6 layers, 82.1 M.
    "distilroberta": dict(num_hidden_layers=6),
}
# The papers' rounded figures (`params` prints them beside the exact counts).
PAPER_PARAMS = {"roberta-base": "125M", "roberta-large": "355M", "distilroberta": "82M"}


class RobertaEncoder(nn.Module):
    """Embeddings + transformer stack (HF ``RobertaModel`` without the pooler)."""

    def __init__(self, c: Config):
        super().__init__()
        self.pad_token_id = c.pad_token_id
        self.max_len = c.max_position_embeddings - c.pad_token_id - 1
        self.embeddings = Embeddings(
            c.vocab_size,
            c.hidden_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.pad_token_id,
            c.layer_norm_eps,
            c.hidden_dropout_prob,
            position_padding_idx=c.pad_token_id,
        )
        self.encoder = Encoder(
            c.num_hidden_layers,
            hidden=c.hidden_size,
            heads=c.num_attention_heads,
            intermediate=c.intermediate_size,
            eps=c.layer_norm_eps,
            hidden_dropout=c.hidden_dropout_prob,
            attn_dropout=c.attention_probs_dropout_prob,
        )

    def forward(self, input_ids, attention_mask, segment_ids=None, taps=None) -> torch.Tensor:
        if input_ids.shape[1] > self.max_len:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds the model's "
                f"maximum {self.max_len} (max_position_embeddings)"
            )
        # HF create_position_ids_from_input_ids: non-pad tokens count from pad_token_id + 1,
        # pad tokens get pad_token_id (whose position row is zero).
        not_pad = input_ids.ne(self.pad_token_id).int()
        position_ids = (torch.cumsum(not_pad, dim=1) * not_pad).long() + self.pad_token_id
        x = self.embeddings(input_ids, position_ids)  # (B, T, C)
        return self.encoder(x, sdpa_mask_or_none(attention_mask, segment_ids), taps)


class RobertaLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the word embeddings (HF ``lm_head``).

    The decoder owns only ``lm_head.bias``: HF ties ``lm_head.decoder.{weight,bias}`` to the
    word embeddings and to this bias, and writes neither to its files.
    """

    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(h))), embedding, self.bias)  # (N, V)


class Model(nn.Module):
    predict_capacity: int | None = None
    """Labels per row the MLM head decodes with static shapes (``gather_predicted_fixed``);
    None: exactly the labelled positions (``gather_predicted``). A run-time setting
    (``pretrain.train.perf``), not part of the config. For MLM it changes only shapes: the same
    labelled rows in the same order, the same sums up to floating-point summation order.
    For RTD models (ELECTRA, DeBERTa-v3) it also changes the sampled replacements: the
    generator draws its Gumbel noise for every decoded row, padding slots included, so from
    the same RNG state the real rows get other (identically distributed) draws, hence other
    replaced tokens and RTD losses."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.roberta = RobertaEncoder(config)
        self.lm_head = RobertaLMHead(config)
        if config.sbo:  # SpanBERT's second head (not part of HF exports)
            self.sbo = SpanBoundaryHead.of(config)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        segment_ids=None,
        taps: Taps | None = None,
        span_left=None,
        span_right=None,
    ) -> dict[str, torch.Tensor]:
        """Loss sums and counts; ``taps`` records hidden states, attention scores and the
        decoded logits (``pretrain.models.taps``, for distillation); ``span_left`` /
        ``span_right``: the span boundaries the SBO head reads (``config.sbo``)."""
        h = self.roberta(input_ids, attention_mask, segment_ids, taps)  # (B, T, C)
        words = self.roberta.embeddings.word_embeddings.weight
        extra = (
            sbo_forward(self, h, labels, span_left, span_right, words) if self.config.sbo else {}
        )
        h, targets = gather_rows(h, labels, self.predict_capacity)  # (N, C), (N,)
        logits = self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)  # (N, V)
        if taps is not None:
            taps.logits, taps.targets = logits, targets
        return {**mlm_sums(logits, targets), **extra}

    def mlm_logits(self, input_ids, attention_mask, segment_ids=None) -> torch.Tensor:
        h = self.roberta(input_ids, attention_mask, segment_ids)
        return self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)  # (B, T, V)


def param_counts(model: Model) -> dict[str, int]:
    """Embedding (token, position, type, LayerNorm) / everything else / total, tied weights once."""
    embedding = count_params(model.roberta.embeddings)
    total = count_params(model)
    return {"embedding": embedding, "backbone": total - embedding, "total": total}
