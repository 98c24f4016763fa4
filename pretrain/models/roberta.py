"""RoBERTa for masked-language-model pretraining (Liu et al., 2019).

Parameter names are those of HF ``RobertaForMaskedLM`` (``roberta.embeddings.*``,
``roberta.encoder.layer.N.*``, ``lm_head.dense``, ``lm_head.layer_norm``, ``lm_head.bias``;
the decoder weight is the word-embedding matrix), so ``import_hf``/``export_hf`` only check
names and shapes. Differences from the HF reference:

- ``forward`` decodes only the positions being predicted (``labels != -100``) and returns
  loss *sums* with counts (see ``pretrain.models``); ``mlm_logits`` gives full logits;
- ``segment_ids`` (packed documents) restrict attention to the query's own document;
  position ids still follow HF (count non-pad tokens from ``pad_token_id + 1`` across the
  whole row, as fairseq's FULL-SENTENCES packing does);
- no pooler, no decoder/cross-attention modes, a single token type.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common import (
    count_params,
    gather_predicted,
    gather_predicted_fixed,
    load_hf_dir,
    mlm_sums,
    save_hf_dir,
)
from pretrain.models.layers import (
    Embeddings,
    Encoder,
    init_bert_weights,
    load_converted_state,
    sdpa_mask_or_none,
)


@dataclass
class Config:
    vocab_size: int = 50265
    """Rows of the token embedding (the tokenizer's vocabulary size)."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_hidden_layers: int = 12
    """Number of transformer blocks."""
    num_attention_heads: int = 12
    """Attention heads per block (hidden_size must be divisible by it)."""
    intermediate_size: int = 3072
    """Inner width of the feed-forward network."""
    max_position_embeddings: int = 514
    """Rows of the position embedding; sequences may be ``max_position_embeddings -
    pad_token_id - 1`` long (512 with RoBERTa's pad id 1), because positions start after pad."""
    type_vocab_size: int = 1
    """Token types (RoBERTa uses one)."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on each block's residual branches."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (fairseq RoBERTa: 1e-5)."""
    initializer_range: float = 0.02
    """Std of the normal initialisation of weights."""
    pad_token_id: int = 1
    """Padding id: its embedding row stays zero and positions are counted after it."""

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"roberta config: {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"roberta config: hidden_size {self.hidden_size} is not divisible "
                f"by num_attention_heads {self.num_attention_heads}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"roberta config: {name} must be in [0, 1)")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"roberta config: pad_token_id {self.pad_token_id} outside the vocabulary"
            )
        if self.pad_token_id + 2 > self.max_position_embeddings:
            raise ValueError(
                f"roberta config: max_position_embeddings {self.max_position_embeddings}"
                f" leaves no room: positions start at pad_token_id + 1 = "
                f"{self.pad_token_id + 1} (as in HF)"
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
}


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

    def forward(self, input_ids, attention_mask, segment_ids=None) -> torch.Tensor:
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
        return self.encoder(x, sdpa_mask_or_none(attention_mask, segment_ids))


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
    (``pretrain.perf``), not part of the config. For MLM it changes only shapes: the same
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
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(
        self, input_ids, attention_mask, labels, segment_ids=None
    ) -> dict[str, torch.Tensor]:
        h = self.roberta(input_ids, attention_mask, segment_ids)  # (B, T, C)
        if self.predict_capacity is None:
            h, targets = gather_predicted(h, labels)  # (N, C), (N,)
        else:
            h, targets, _, _ = gather_predicted_fixed(h, labels, self.predict_capacity)
        logits = self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)  # (N, V)
        return mlm_sums(logits, targets)

    def mlm_logits(self, input_ids, attention_mask, segment_ids=None) -> torch.Tensor:
        h = self.roberta(input_ids, attention_mask, segment_ids)
        return self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)  # (B, T, V)


def param_counts(model: Model) -> dict[str, int]:
    """Embedding (token, position, type, LayerNorm) / everything else / total, tied weights once."""
    embedding = count_params(model.roberta.embeddings)
    total = count_params(model)
    return {"embedding": embedding, "backbone": total - embedding, "total": total}


# ----------------------------------------------------------------------------- HF conversion


def hf_config(config: Config, dtype: torch.dtype = torch.float32) -> dict:
    """``config.json`` contents for ``transformers.RobertaForMaskedLM``."""
    return {
        "architectures": ["RobertaForMaskedLM"],
        "model_type": "roberta",
        "hidden_act": "gelu",
        "tie_word_embeddings": True,
        "dtype": str(dtype).removeprefix("torch."),
        **asdict(config),
    }


def export_hf(model: Model, out_dir: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``RobertaForMaskedLM``."""
    dtype = model.roberta.embeddings.word_embeddings.weight.dtype
    save_hf_dir(out_dir, hf_config(model.config, dtype), model.state_dict())


def import_hf(hf_dir: str | os.PathLike, **overrides) -> Model:
    """Our model initialised from a local ``RobertaForMaskedLM`` or ``RobertaModel`` directory.

    A bare encoder (no ``lm_head.*``) gets a freshly initialised MLM head; its pooler, the
    tied ``lm_head.decoder.*`` copies and position-id buffers are not parameters here and are
    dropped. ``overrides`` replace config fields (e.g. dropout); anything else that does not
    match raises ``ValueError`` naming the keys.
    """
    cfg, state = load_hf_dir(hf_dir)
    if cfg.get("model_type") != "roberta":
        raise ValueError(f"{hf_dir}: model_type is {cfg.get('model_type')!r}, expected 'roberta'")
    for key, want in (
        ("hidden_act", "gelu"),
        ("position_embedding_type", "absolute"),
        ("is_decoder", False),
        ("tie_word_embeddings", True),
    ):
        if cfg.get(key, want) != want:
            raise ValueError(f"{hf_dir}: {key}={cfg[key]!r} is not supported (only {want!r})")
    names = {f.name for f in fields(Config)}
    model = Model(Config(**{**{k: v for k, v in cfg.items() if k in names}, **overrides}))

    pooler = sorted(k for k in state if k.startswith(("pooler.", "roberta.pooler.")))
    if pooler:
        warnings.warn(
            f"{hf_dir}: pooler not used for MLM pretraining, dropped: {', '.join(pooler)}",
            stacklevel=2,
        )
    state = _normalise_keys(state, hf_dir)
    fresh_head = not any(k.startswith("lm_head.") for k in state)
    load_converted_state(
        model, state, str(hf_dir), allow_missing=("lm_head.",) if fresh_head else ()
    )
    if fresh_head:
        warnings.warn(
            f"{hf_dir}: no MLM head in the checkpoint; lm_head initialised fresh", stacklevel=2
        )
    return model


def _normalise_keys(state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Map the key variants HF has written over the years onto ``RobertaForMaskedLM``'s."""
    out = {}
    for key, value in state.items():
        if key.startswith(("embeddings.", "encoder.", "pooler.")):  # RobertaModel: no prefix
            key = "roberta." + key
        if key.endswith((".position_ids", ".token_type_ids")) or key.startswith("roberta.pooler."):
            continue  # buffers and the unused pooler
        out[key] = value
    # Older files also store the tied decoder; accept it only if it really is tied.
    for key, twin in (
        ("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
        ("lm_head.decoder.bias", "lm_head.bias"),
    ):
        if key in out:
            tied = out.pop(key)
            if twin in out and not torch.equal(tied, out[twin]):
                raise ValueError(
                    f"{source}: {key} differs from {twin}; untied heads are not supported"
                )
    return out
