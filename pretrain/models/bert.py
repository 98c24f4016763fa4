"""BERT for pretraining: masked language model + next-sentence prediction (Devlin et al., 2019).

Parameter names are those of HF ``BertForPreTraining`` (``bert.embeddings.*``,
``bert.encoder.layer.N.*``, ``bert.pooler.dense``, ``cls.predictions.transform.dense``,
``cls.predictions.transform.LayerNorm``, ``cls.predictions.bias``, ``cls.seq_relationship``;
the decoder weight is the word-embedding matrix), so ``bert_hf`` only checks names and
shapes. Differences from the HF reference:

- ``forward`` decodes only the positions being predicted (``labels != -100``) and returns
  loss *sums* with counts (see ``pretrain.models``); ``mlm_logits`` gives full logits;
- the next-sentence head runs only when ``sentence_labels`` are given (rows labelled -100,
  e.g. the loader's empty rows, count nothing); ``sentence_logits`` gives its (B, 2) logits;
- ``segment_ids`` (packed documents) restrict attention to the query's own document;
  positions are absolute, 0..T-1 across the whole row, as in HF;
- no decoder/cross-attention modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.base import EncoderConfig
from pretrain.models.common import (
    count_params,
    gather_rows,
    mlm_sums,
    sentence_sums,
)
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
    vocab_size: int = 30522
    """Rows of the token embedding (bert-base-uncased's WordPiece: 30,522)."""
    max_position_embeddings: int = 512
    """Rows of the position embedding: the longest sequence (positions are 0..T-1)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT: 1e-12)."""
    pad_token_id: int = 0
    """Padding id: its embedding row stays zero ([PAD] = 0 in BERT's vocabularies)."""
    type_vocab_size: int = 2
    """Token types: 0 for the first segment ([CLS] A [SEP]), 1 for the second (B [SEP])."""

    sbo: bool = False
    """SpanBERT's span boundary objective: an extra head predicting every masked token from
    its span's boundary tokens (``pretrain.models.sbo``; needs masking.boundaries = true)."""
    sbo_positions: int = 64
    """Rows of the SBO head's relative position table (a token's place in its span; places
    beyond share the last row)."""

    ARCH: ClassVar[str] = "bert"
    POSITIVE: ClassVar[tuple[str, ...]] = ("type_vocab_size", "sbo_positions")


PRESETS = {
    # Tiny, for tests and the CPU smoke run; vocab_size comes from the tokenizer.
    "bert-debug": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    ),
    "bert-base": dict(),  # 110,106,428 parameters with vocab 30,522 (BertModel: 109,482,240)
    "bert-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),  # 336,226,108 (BertModel: 335,141,888)
    # Distillation students (issue 15): DistilBERT's size, BERT-base with every other layer
    # (Sanh et al., 2019; DistilBERT itself also drops the token types and the pooler, which
    # this BERT keeps: 67.6 M here with the NSP head, DistilBertModel 66.4 M), and TinyBERT's
    # general-distillation student (Jiao et al., 2020: 4 layers, width 312, FFN 1,200).
    "distilbert": dict(num_hidden_layers=6),
    "tinybert-4l-312": dict(
        hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200
    ),
}

# The papers' rounded figures (Devlin et al., 2019, section 3; DistilBERT; TinyBERT), printed
# by ``params`` beside ours.
PAPER_PARAMS = {
    "bert-base": "110M",
    "bert-large": "340M",
    "distilbert": "66M",
    "tinybert-4l-312": "14.5M",
}


class Pooler(nn.Module):
    """tanh(dense(h[:, 0])): the [CLS] state fed to the next-sentence head (HF ``pooler``)."""

    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, C)


class BertEncoder(nn.Module):
    """Embeddings + transformer stack + pooler (HF ``BertModel``); ``forward`` stops before the
    pooler, which only the next-sentence head uses."""

    def __init__(self, c: Config):
        super().__init__()
        self.max_len = c.max_position_embeddings
        self.embeddings = Embeddings(
            c.vocab_size,
            c.hidden_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.pad_token_id,
            c.layer_norm_eps,
            c.hidden_dropout_prob,
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
        self.pooler = Pooler(c)

    def forward(
        self, input_ids, attention_mask, segment_ids=None, token_type_ids=None, taps=None
    ) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.max_len:
            raise ValueError(
                f"sequence length {t} exceeds the model's maximum {self.max_len} "
                "(max_position_embeddings)"
            )
        position_ids = torch.arange(t, device=input_ids.device)[None]  # (1, T): HF's absolute
        x = self.embeddings(input_ids, position_ids, token_type_ids)  # (B, T, C)
        return self.encoder(x, sdpa_mask_or_none(attention_mask, segment_ids), taps)


class HeadTransform(nn.Module):
    """dense -> GELU -> LayerNorm (HF ``cls.predictions.transform``)."""

    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(h)))


class PredictionHead(nn.Module):
    """transform -> decoder tied to the word embeddings (HF ``cls.predictions``).

    Owns only ``cls.predictions.bias``: HF ties ``cls.predictions.decoder.{weight,bias}`` to
    the word embeddings and to this bias, and writes neither to its files.
    """

    def __init__(self, c: Config):
        super().__init__()
        self.transform = HeadTransform(c)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(h), embedding, self.bias)  # (N, V)


class PreTrainingHeads(nn.Module):
    """The MLM head and the next-sentence classifier (HF ``cls``)."""

    def __init__(self, c: Config):
        super().__init__()
        self.predictions = PredictionHead(c)
        self.seq_relationship = nn.Linear(c.hidden_size, 2)  # logit 0: B follows A


class Model(nn.Module):
    predict_capacity: int | None = None
    """Labels per row the MLM head decodes with static shapes (``gather_predicted_fixed``);
    None: exactly the labelled positions (``gather_predicted``). A run-time setting
    (``pretrain.train.perf``), not part of the config; it changes only shapes: the same
    labelled rows in the same order, the same sums up to floating-point summation order."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.bert = BertEncoder(config)
        self.cls = PreTrainingHeads(config)
        if config.sbo:  # SpanBERT's second head (not part of HF exports)
            self.sbo = SpanBoundaryHead.of(config)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        segment_ids=None,
        token_type_ids=None,
        sentence_labels=None,
        taps: Taps | None = None,
        span_left=None,
        span_right=None,
    ) -> dict[str, torch.Tensor]:
        """Loss sums and counts; ``taps`` records hidden states, attention scores and the
        decoded logits (``pretrain.models.taps``, for distillation); ``span_left`` /
        ``span_right``: the span boundaries the SBO head reads (``config.sbo``)."""
        h = self.bert(input_ids, attention_mask, segment_ids, token_type_ids, taps)  # (B, T, C)
        out = {}
        if sentence_labels is not None:  # (B,): 0 B follows A, 1 random B, -100 no pair
            out = sentence_sums(self.cls.seq_relationship(self.bert.pooler(h)), sentence_labels)
        if self.config.sbo:
            words = self.bert.embeddings.word_embeddings.weight
            out.update(sbo_forward(self, h, labels, span_left, span_right, words))
        h, targets = gather_rows(h, labels, self.predict_capacity)  # (N, C), (N,)
        logits = self.cls.predictions(h, self.bert.embeddings.word_embeddings.weight)  # (N, V)
        if taps is not None:
            taps.logits, taps.targets = logits, targets
        return {**mlm_sums(logits, targets), **out}

    def mlm_logits(
        self, input_ids, attention_mask, segment_ids=None, token_type_ids=None
    ) -> torch.Tensor:
        h = self.bert(input_ids, attention_mask, segment_ids, token_type_ids)
        return self.cls.predictions(h, self.bert.embeddings.word_embeddings.weight)  # (B, T, V)

    def sentence_logits(
        self, input_ids, attention_mask, token_type_ids=None, segment_ids=None
    ) -> torch.Tensor:
        h = self.bert(input_ids, attention_mask, segment_ids, token_type_ids)
        return self.cls.seq_relationship(self.bert.pooler(h))  # (B, 2)


def param_counts(model: Model) -> dict[str, int]:
    """Embedding (token, position, type, LayerNorm) / everything else (encoder, pooler, both
    heads) / total, tied weights once: ``total`` is HF ``BertForPreTraining``'s count."""
    embedding = count_params(model.bert.embeddings)
    total = count_params(model)
    return {"embedding": embedding, "backbone": total - embedding, "total": total}
