"""ELECTRA replaced-token-detection pretraining (Clark et al., 2020).

A small MLM generator and a discriminator share one embedding module (token, position and
token-type embeddings and their LayerNorm, as in the paper's code, where both networks build
their embeddings in the same variable scope); each network has its own ``embeddings_project``
when its width differs from ``embedding_size``. The generator's output layer is tied to the
word embeddings. Names follow HF: ``discriminator.*`` is an ``ElectraForPreTraining``
(``electra.*``, ``discriminator_predictions.*``) and ``generator.*`` an ``ElectraForMaskedLM``
(``electra.*``, ``generator_predictions.*``, ``generator_lm_head.bias``).

Differences from the HF reference (which has no joint pretraining model):

- ``forward`` runs the whole RTD step: generator MLM decoded only at predicted positions,
  replacements sampled from the generator's softmax (no gradient through sampling; a sample
  equal to the original token counts as not replaced, as in the paper), discriminator BCE
  over real tokens; it returns sums and counts, the objective applies ``rtd_weight``;
- ``segment_ids`` restrict attention to the query's own packed document;
- no pooler, decoder or cross-attention modes; all tokens have token type 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.base import RTDConfig
from pretrain.models.common import (
    IGNORE_INDEX,
    count_params,
    gather_predicted,
    gather_predicted_fixed,
    mlm_sums,
    rtd_sums,
    sample_replacements,
)
from pretrain.models.layers import (
    Embeddings,
    Encoder,
    TiedDecoder,
    init_bert_weights,
    sdpa_mask_or_none,
)


@dataclass
class Config(RTDConfig):
    hidden_size: int = 256
    """Discriminator width (the base fields describe the discriminator)."""
    num_attention_heads: int = 4
    """Discriminator attention heads."""
    intermediate_size: int = 1024
    """Discriminator feed-forward inner width."""
    embedding_size: int = 128
    """Width of the shared embeddings; projected to each network's width when different."""
    type_vocab_size: int = 2
    """Token types (BERT/ELECTRA checkpoints have two; pretraining uses type 0)."""
    generator_size: float = 0.25
    """Generator width as a fraction of hidden_size (paper: small 1/4, base 1/3, large 1/4);
    used only when generator_hidden_size is not set."""
    generator_layers: float = 1.0
    """Generator depth as a fraction of num_hidden_layers; used only when
    generator_num_hidden_layers is not set."""

    ARCH: ClassVar[str] = "electra"
    POSITIVE: ClassVar[tuple[str, ...]] = (*RTDConfig.POSITIVE, "embedding_size", "type_vocab_size")

    def default_generator(self) -> dict[str, int]:
        """Width round(hidden_size * generator_size), depth round(num_hidden_layers *
        generator_layers), max(1, width // 64) heads and a 4x feed-forward, as in the paper's
        code; explicit ``generator_*`` values win."""
        width = self.generator_hidden_size or int(round(self.hidden_size * self.generator_size))
        return {
            "generator_hidden_size": width,
            "generator_num_hidden_layers": int(
                round(self.num_hidden_layers * self.generator_layers)
            ),
            "generator_num_attention_heads": max(1, width // 64),
            "generator_intermediate_size": 4 * width,
        }


PRESETS = {
    # Tiny, for tests and the CPU smoke run; vocab_size comes from the tokenizer.
    "electra-debug": dict(
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        generator_size=0.5,
    ),
    # Discriminator 13.5 M (published "14 M"), generator hidden 64.
    "electra-small": dict(),
    # Discriminator 109.5 M (published "110 M"), generator hidden 256.
    "electra-base": dict(
        embedding_size=768,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        generator_size=1 / 3,
    ),
    # Discriminator 335.1 M (published "335 M"), generator hidden 256.
    "electra-large": dict(
        embedding_size=1024,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ),
}
# The papers' rounded figures (`params` prints them beside the exact counts).
PAPER_PARAMS = {"electra-small": "14M", "electra-base": "110M", "electra-large": "335M"}


class ElectraEncoder(nn.Module):
    """(Shared) embeddings -> optional projection -> transformer stack (HF ``ElectraModel``)."""

    def __init__(
        self,
        embeddings: Embeddings,
        c: Config,
        hidden: int,
        layers: int,
        heads: int,
        intermediate: int,
    ):
        super().__init__()
        self.embeddings = embeddings
        if c.embedding_size != hidden:
            self.embeddings_project = nn.Linear(c.embedding_size, hidden)
        self.encoder = Encoder(
            layers,
            hidden=hidden,
            heads=heads,
            intermediate=intermediate,
            eps=c.layer_norm_eps,
            hidden_dropout=c.hidden_dropout_prob,
            attn_dropout=c.attention_probs_dropout_prob,
        )

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.embeddings.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings "
                f"{self.embeddings.position_embeddings.num_embeddings}"
            )
        position_ids = torch.arange(T, device=input_ids.device)[None]  # (1, T)
        x = self.embeddings(input_ids, position_ids)  # (B, T, E)
        if hasattr(self, "embeddings_project"):
            x = self.embeddings_project(x)  # (B, T, C)
        return self.encoder(x, mask)


class DiscriminatorPredictions(nn.Module):
    """dense -> GELU -> dense to one logit per token (HF ``discriminator_predictions``)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dense_prediction = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(F.gelu(self.dense(h))).squeeze(-1)  # (B, T)


class GeneratorPredictions(nn.Module):
    """dense to embedding width -> GELU -> LayerNorm (HF ``generator_predictions``)."""

    def __init__(self, hidden: int, embedding_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, embedding_size)
        self.LayerNorm = nn.LayerNorm(embedding_size, eps=eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(h)))


class Discriminator(nn.Module):
    """HF ``ElectraForPreTraining``."""

    def __init__(self, embeddings: Embeddings, c: Config):
        super().__init__()
        self.electra = ElectraEncoder(
            embeddings,
            c,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
        )
        self.discriminator_predictions = DiscriminatorPredictions(c.hidden_size)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.discriminator_predictions(self.electra(input_ids, mask))  # (B, T)


class Generator(nn.Module):
    """HF ``ElectraForMaskedLM``; ``head`` projects hidden states onto the vocabulary."""

    def __init__(self, embeddings: Embeddings, c: Config):
        super().__init__()
        self.electra = ElectraEncoder(
            embeddings,
            c,
            c.generator_hidden_size,
            c.generator_num_hidden_layers,
            c.generator_num_attention_heads,
            c.generator_intermediate_size,
        )
        self.generator_predictions = GeneratorPredictions(
            c.generator_hidden_size, c.embedding_size, c.layer_norm_eps
        )
        self.generator_lm_head = TiedDecoder(c.vocab_size)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        tied = self.electra.embeddings.word_embeddings.weight  # (V, E)
        return self.generator_lm_head(self.generator_predictions(h), tied)  # (..., V)


class Model(nn.Module):
    predict_capacity: int | None = None
    """Labels per row the generator head decodes with static shapes (see
    ``roberta.Model.predict_capacity``); None: exactly the labelled positions."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        c = config
        shared = Embeddings(
            c.vocab_size,
            c.embedding_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.pad_token_id,
            c.layer_norm_eps,
            c.hidden_dropout_prob,
        )
        # The same module object is registered under both networks: parameters() counts it
        # once and the optimizer sees it once; state_dict() lists it under both prefixes,
        # which is exactly the two HF files' layout.
        self.discriminator = Discriminator(shared, c)
        self.generator = Generator(shared, c)
        self.apply(lambda m: init_bert_weights(m, c.initializer_range))

    def forward(
        self, input_ids, attention_mask, labels, segment_ids=None
    ) -> dict[str, torch.Tensor]:
        mask = sdpa_mask_or_none(attention_mask, segment_ids)
        h = self.generator.electra(input_ids, mask)  # (B, T, Cg)
        cap = self.predict_capacity
        if cap is None:
            h, targets = gather_predicted(h, labels)  # (N, Cg), (N,)
        else:  # static shapes: (B*K, Cg), (B*K,) and the (B, K) positions they came from
            h, targets, pos, valid = gather_predicted_fixed(h, labels, cap)
        gen_logits = self.generator.head(h)  # (N, V)
        out = mlm_sums(gen_logits, targets)

        # Corrupt: the original sequence with every predicted position replaced by a sample.
        predicted = labels != IGNORE_INDEX  # (B, T)
        original = torch.where(predicted, labels, input_ids)
        sampled = sample_replacements(gen_logits)  # (N,), no grad; row-major like gather_predicted
        if cap is None:
            corrupted = original.masked_scatter(predicted, sampled)
        else:  # padding slots write back the original token
            keep = original.gather(1, pos)
            corrupted = original.scatter(1, pos, torch.where(valid, sampled.view_as(pos), keep))
        is_replaced = corrupted != original  # a sample equal to the original is not "replaced"

        disc_logits = self.discriminator(corrupted, mask)  # (B, T)
        out.update(rtd_sums(disc_logits, is_replaced, attention_mask))
        return out

    def mlm_logits(self, input_ids, attention_mask, segment_ids=None) -> torch.Tensor:
        """Generator logits (B, T, V)."""
        h = self.generator.electra(input_ids, sdpa_mask_or_none(attention_mask, segment_ids))
        return self.generator.head(h)

    def rtd_logits(self, input_ids, attention_mask, segment_ids=None) -> torch.Tensor:
        """Discriminator logits (B, T): > 0 means "replaced"."""
        return self.discriminator(input_ids, sdpa_mask_or_none(attention_mask, segment_ids))


def param_counts(model: Model) -> dict[str, int]:
    """Shared embeddings / everything else / total of the joint model (shared weights once),
    plus each network as its HF class counts it (both including the shared embeddings)."""
    embedding = count_params(model.discriminator.electra.embeddings)
    total = count_params(model)
    return {
        "embedding": embedding,
        "backbone": total - embedding,
        "total": total,
        "discriminator": count_params(model.discriminator),
        "generator": count_params(model.generator),
    }
