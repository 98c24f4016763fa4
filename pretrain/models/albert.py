"""ALBERT for pretraining: masked language model + sentence-order prediction (Lan et al., 2019).

Two changes to BERT make it small: a **factorised embedding** (tokens are embedded in
``embedding_size`` E, then mapped to the width H by one linear layer; the MLM head maps back to
E and decodes with the tied V x E matrix) and **cross-layer parameter sharing** (``share``).
Sentence-order prediction (SOP) replaces BERT's next-sentence prediction: label 0 when the two
segments are in their original order, 1 when swapped (HF's ``sentence_order_label``).

Parameter names are those of HF ``AlbertForPreTraining``: ``albert.embeddings.*`` (V x E),
``albert.encoder.embedding_hidden_mapping_in`` (E -> H),
``albert.encoder.albert_layer_groups.G.albert_layers.I.{attention.{query,key,value,dense,
LayerNorm}, ffn, ffn_output, full_layer_layer_norm}``, ``albert.pooler`` (H -> H, tanh),
``predictions.{dense (H -> E), LayerNorm, bias}`` (the decoder is the word-embedding matrix)
and ``sop_classifier.classifier`` (H -> 2).

Sharing (``share``; the paper's Table 4 compares the four):

- ``"all"``: HF's layer groups as configured. Layer i (of ``num_hidden_layers``) runs group
  ``i // (num_hidden_layers / num_hidden_groups)`` (HF's ``int(i / (L / G))``, equal for the
  divisible L, G required here), i.e. that group's ``inner_group_num`` layers in order. The
  default, one group of one layer, is ALBERT: a single layer applied L times.
- ``"none"``: every layer its own parameters, built (and named) as HF's
  ``num_hidden_groups = num_hidden_layers`` (BERT with a factorised embedding).
- ``"attention"``: one attention block (query/key/value/dense/LayerNorm) shared by all
  layers, a feed-forward block (ffn/ffn_output/full_layer_layer_norm) per layer.
- ``"ffn"``: one feed-forward block shared by all layers, an attention block per layer.

For ``"attention"`` / ``"ffn"`` (no HF equivalent) the shared block lives once under
``albert.encoder.shared.*`` and the per-layer blocks under ``albert.encoder.albert_layers.N.*``,
both with HF's names below the layer (``albert.encoder.shared.attention.query.weight``,
``albert.encoder.albert_layers.3.ffn.weight``). Every shared tensor is one ``nn.Parameter``
used L times per forward, so its gradient is the sum over the layers and the optimizer and
checkpoints hold it once. ``albert_hf`` exports these *unrolled* as HF
``num_hidden_groups = num_hidden_layers`` with the shared tensors copied into every layer
(HF then computes exactly our function) and folds them back on import.

Differences from the HF reference:

- ``forward`` decodes only the positions being predicted (``labels != -100``) and returns
  loss *sums* with counts (see ``pretrain.models``); ``mlm_logits`` gives full logits;
- the pooler and SOP head run only when ``sentence_labels`` are given (rows labelled -100,
  e.g. the loader's empty rows, count nothing); ``sentence_logits`` gives its (B, 2) logits;
- ``segment_ids`` (packed documents) restrict attention to the query's own document;
  positions are absolute, 0..T-1 across the whole row, as in HF;
- the feed-forward output gets ``hidden_dropout_prob`` dropout before its residual
  LayerNorm, as in google-research/albert and BERT (HF's PyTorch ``AlbertLayer`` builds that
  dropout but never applies it); identical at ALBERT-v2's dropout 0, the default here.
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
from pretrain.models.layers import Embeddings, SelfAttention, init_bert_weights, sdpa_mask_or_none

SHARE_MODES = ("all", "attention", "ffn", "none")


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """HF's "gelu_new": GELU with the tanh approximation (ALBERT's and GPT-2's)."""
    return F.gelu(x, approximate="tanh")


# HF's ACT2FN names of the activations supported: ALBERT's default and the exact (erf) GELU.
ACTIVATIONS = {"gelu_new": gelu_new, "gelu": F.gelu}


@dataclass
class Config(EncoderConfig):
    """Defaults: albert-base-v2 (Lan et al., 2019; HF ``albert/albert-base-v2``)."""

    vocab_size: int = 30000
    """Rows of the token embedding (ALBERT's SentencePiece vocabulary: 30,000)."""
    hidden_dropout_prob: float = 0.0
    """Dropout on embeddings and on each block's residual branches (v2: 0; v1: 0.1 except
    xxlarge; the paper reports that removing dropout helps)."""
    attention_probs_dropout_prob: float = 0.0
    """Dropout on attention probabilities (v2: 0)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (ALBERT: 1e-12)."""
    pad_token_id: int = 0
    """Padding id: its embedding row stays zero (<pad> = 0 in ALBERT's vocabulary)."""
    embedding_size: int = 128
    """E: width of the token / position / type embeddings and of the MLM head's output, mapped
    to hidden_size by ``embedding_hidden_mapping_in`` (the paper's factorisation; E = 128 for
    every published size)."""
    type_vocab_size: int = 2
    """Token types: 0 for the first segment ([CLS] A [SEP]), 1 for the second (B [SEP])."""
    num_hidden_groups: int = 1
    """share = "all": groups of layer parameters; layer i runs group i // (L / groups).
    Must divide num_hidden_layers. Other share modes derive the layout (leave it at 1)."""
    inner_group_num: int = 1
    """share = "all": layers per group, all run by each of the L layer steps (depth L x
    inner_group_num). Other share modes: 1."""
    hidden_act: str = "gelu_new"
    """Activation of the feed-forward blocks and the MLM head: "gelu_new" (tanh approximation,
    ALBERT's) or "gelu" (exact)."""
    classifier_dropout_prob: float = 0.1
    """Dropout on the pooled output before the SOP classifier (ALBERT: 0.1)."""
    share: str = "all"
    """Cross-layer sharing: "all" (HF's groups as configured; default: one layer shared by
    all), "attention" (attention shared, feed-forward per layer), "ffn" (feed-forward shared,
    attention per layer) or "none" (every layer its own parameters)."""

    ARCH: ClassVar[str] = "albert"
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "embedding_size",
        "type_vocab_size",
        "num_hidden_groups",
        "inner_group_num",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.share not in SHARE_MODES:
            self._fail(f"share must be one of {', '.join(SHARE_MODES)}, got {self.share!r}")
        if self.hidden_act not in ACTIVATIONS:
            self._fail(f"hidden_act must be 'gelu_new' or 'gelu', got {self.hidden_act!r}")
        if not 0.0 <= self.classifier_dropout_prob < 1.0:
            self._fail("classifier_dropout_prob must be in [0, 1)")
        if self.num_hidden_layers % self.num_hidden_groups:
            self._fail(
                f"num_hidden_layers {self.num_hidden_layers} is not divisible by "
                f"num_hidden_groups {self.num_hidden_groups}"
            )
        if self.share != "all" and (self.num_hidden_groups, self.inner_group_num) != (1, 1):
            self._fail(
                f"share={self.share!r} sets the layout itself: num_hidden_groups and "
                "inner_group_num must be 1 (groups apply to share='all' only)"
            )

    def hf_groups(self) -> tuple[int, int]:
        """(num_hidden_groups, inner_group_num) of the HF model computing the same function:
        as configured for "all", one group per layer (unrolled) otherwise."""
        if self.share == "all":
            return self.num_hidden_groups, self.inner_group_num
        return self.num_hidden_layers, 1


PRESETS = {
    # Tiny, for tests and the CPU smoke run; vocab_size comes from the tokenizer.
    "albert-debug": dict(
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    ),
    # The paper's Table 1 sizes (E = 128, all parameters shared); counts with vocab 30,000.
    "albert-base": dict(),  # 11,813,810
    "albert-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),  # 17,847,474
    "albert-xlarge": dict(
        hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192
    ),  # 59,021,490
    "albert-xxlarge": dict(
        hidden_size=4096, num_hidden_layers=12, num_attention_heads=64, intermediate_size=16384
    ),  # 223,158,450
    # The paper's E = 768 comparison (Tables 3 and 4): BERT-base-sized without / with sharing.
    "albert-base-e768-unshared": dict(embedding_size=768, share="none"),  # 110,295,602
    "albert-base-e768-shared": dict(embedding_size=768),  # 32,329,010
}

# The paper's rounded figures (Lan et al., 2019, Tables 1 and 3), printed by ``params`` beside
# ours. Ours count every parameter of AlbertForPreTraining (pooler, mapping and heads included);
# base/large/xlarge and E768-unshared are within 2.1 %, xxlarge is 5.0 % below (HF's model
# card says 223M) and E768-shared 4.3 % above (31.15M without pooler and mapping).
PAPER_PARAMS = {
    "albert-base": "12M",
    "albert-large": "18M",
    "albert-xlarge": "60M",
    "albert-xxlarge": "235M",
    "albert-base-e768-unshared": "108M",
    "albert-base-e768-shared": "31M",
}


class AlbertAttention(SelfAttention):
    """query/key/value (one SDPA call) -> dense -> dropout -> LayerNorm(x + .) (HF
    ``attention``: the projections and the output sit side by side)."""

    def __init__(self, c: Config):
        super().__init__(c.hidden_size, c.num_attention_heads, c.attention_probs_dropout_prob)
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.output_dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = self.output_dropout(self.dense(super().forward(x, mask)))  # (B, T, C)
        return self.LayerNorm(x + y)


class AlbertLayer(nn.Module):
    """Post-LayerNorm block: attention, then ffn -> act -> ffn_output -> dropout ->
    full_layer_layer_norm(. + residual) (HF ``albert_layers.I``).

    With ``attention=False`` or ``ffn=False`` it holds only the other block (partial sharing:
    the encoder combines a shared block with each layer's own)."""

    def __init__(self, c: Config, attention: bool = True, ffn: bool = True):
        super().__init__()
        if attention:
            self.attention = AlbertAttention(c)
        if ffn:
            self.ffn = nn.Linear(c.hidden_size, c.intermediate_size)
            self.ffn_output = nn.Linear(c.intermediate_size, c.hidden_size)
            self.full_layer_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
            self.dropout = nn.Dropout(c.hidden_dropout_prob)
            self.activation = ACTIVATIONS[c.hidden_act]

    def feed_forward(self, a: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.ffn_output(self.activation(self.ffn(a))))  # (B, T, C)
        return self.full_layer_layer_norm(y + a)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.feed_forward(self.attention(x, mask))


class AlbertLayerGroup(nn.Module):
    """``inner_group_num`` layers run in order (HF ``albert_layer_groups.G``)."""

    def __init__(self, c: Config, inner: int):
        super().__init__()
        self.albert_layers = nn.ModuleList(AlbertLayer(c) for _ in range(inner))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.albert_layers:
            x = layer(x, mask)
        return x


class AlbertTransformer(nn.Module):
    """E -> H mapping, then L layer steps with the parameters ``share`` says (HF ``encoder``)."""

    def __init__(self, c: Config):
        super().__init__()
        self.share = c.share
        self.num_layers = c.num_hidden_layers
        self.embedding_hidden_mapping_in = nn.Linear(c.embedding_size, c.hidden_size)
        if c.share in ("all", "none"):  # HF's layout: ModuleList of groups
            groups, inner = c.hf_groups()
            self.layers_per_group = c.num_hidden_layers // groups
            self.albert_layer_groups = nn.ModuleList(
                AlbertLayerGroup(c, inner) for _ in range(groups)
            )
        else:  # one shared block + each layer's other block
            attention_shared = c.share == "attention"
            self.shared = AlbertLayer(c, attention=attention_shared, ffn=not attention_shared)
            self.albert_layers = nn.ModuleList(
                AlbertLayer(c, attention=not attention_shared, ffn=attention_shared)
                for _ in range(c.num_hidden_layers)
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.embedding_hidden_mapping_in(x)  # (B, T, E) -> (B, T, C)
        if self.share == "attention":
            for own in self.albert_layers:
                x = own.feed_forward(self.shared.attention(x, mask))
        elif self.share == "ffn":
            for own in self.albert_layers:
                x = self.shared.feed_forward(own.attention(x, mask))
        else:
            for i in range(self.num_layers):  # HF: group int(i / (L / G)); L % G == 0 here
                x = self.albert_layer_groups[i // self.layers_per_group](x, mask)
        return x


class AlbertBackbone(nn.Module):
    """Embeddings (width E) + encoder + pooler (HF ``AlbertModel``); ``forward`` stops before
    the pooler, which only the SOP head uses (``pool``)."""

    def __init__(self, c: Config):
        super().__init__()
        self.max_len = c.max_position_embeddings
        self.embeddings = Embeddings(
            c.vocab_size,
            c.embedding_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.pad_token_id,
            c.layer_norm_eps,
            c.hidden_dropout_prob,
        )
        self.encoder = AlbertTransformer(c)
        self.pooler = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(
        self, input_ids, attention_mask, segment_ids=None, token_type_ids=None
    ) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.max_len:
            raise ValueError(
                f"sequence length {t} exceeds the model's maximum {self.max_len} "
                "(max_position_embeddings)"
            )
        position_ids = torch.arange(t, device=input_ids.device)[None]  # (1, T): HF's absolute
        x = self.embeddings(input_ids, position_ids, token_type_ids)  # (B, T, E)
        return self.encoder(x, sdpa_mask_or_none(attention_mask, segment_ids))  # (B, T, C)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler(h[:, 0]))  # (B, C): the [CLS] state


class AlbertMLMHead(nn.Module):
    """dense (H -> E) -> act -> LayerNorm -> decoder tied to the V x E word embeddings (HF
    ``predictions``). Owns only ``predictions.bias``: HF ties ``predictions.decoder.{weight,
    bias}`` to the word embeddings and to this bias, and writes neither to its files."""

    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.embedding_size)
        self.LayerNorm = nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.activation = ACTIVATIONS[c.hidden_act]

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        x = self.LayerNorm(self.activation(self.dense(h)))  # (N, E)
        return F.linear(x, embedding, self.bias)  # (N, V)


class AlbertSOPHead(nn.Module):
    """dropout -> classifier (H -> 2) on the pooled state (HF ``sop_classifier``); logit 0:
    original order, 1: swapped."""

    def __init__(self, c: Config):
        super().__init__()
        self.dropout = nn.Dropout(c.classifier_dropout_prob)
        self.classifier = nn.Linear(c.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))  # (B, 2)


class Model(nn.Module):
    predict_capacity: int | None = None
    """Labels per row the MLM head decodes with static shapes (``gather_predicted_fixed``);
    None: exactly the labelled positions (``gather_predicted``). A run-time setting
    (``pretrain.train.perf``), not part of the config; it changes only shapes: the same
    labelled rows in the same order, the same sums up to floating-point summation order."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.albert = AlbertBackbone(config)
        self.predictions = AlbertMLMHead(config)
        self.sop_classifier = AlbertSOPHead(config)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        segment_ids=None,
        token_type_ids=None,
        sentence_labels=None,
    ) -> dict[str, torch.Tensor]:
        h = self.albert(input_ids, attention_mask, segment_ids, token_type_ids)  # (B, T, C)
        out = {}
        if sentence_labels is not None:  # (B,): 0 original order, 1 swapped, -100 no pair
            out = sentence_sums(self.sop_classifier(self.albert.pool(h)), sentence_labels)
        h, targets = gather_rows(h, labels, self.predict_capacity)  # (N, C), (N,)
        logits = self.predictions(h, self.albert.embeddings.word_embeddings.weight)  # (N, V)
        return {**mlm_sums(logits, targets), **out}

    def mlm_logits(
        self, input_ids, attention_mask, segment_ids=None, token_type_ids=None
    ) -> torch.Tensor:
        h = self.albert(input_ids, attention_mask, segment_ids, token_type_ids)
        return self.predictions(h, self.albert.embeddings.word_embeddings.weight)  # (B, T, V)

    def sentence_logits(
        self, input_ids, attention_mask, token_type_ids=None, segment_ids=None
    ) -> torch.Tensor:
        h = self.albert(input_ids, attention_mask, segment_ids, token_type_ids)
        return self.sop_classifier(self.albert.pool(h))  # (B, 2)


def param_counts(model: Model) -> dict[str, int]:
    """Embedding (token, position, type, LayerNorm; width E) / everything else (mapping,
    encoder, pooler, both heads) / total, shared and tied weights once: ``total`` is HF
    ``AlbertForPreTraining``'s count for share "all" and "none" (for "attention" / "ffn", the
    unrolled HF export has (L - 1) more copies of the shared block)."""
    embedding = count_params(model.albert.embeddings)
    total = count_params(model)
    return {"embedding": embedding, "backbone": total - embedding, "total": total}
