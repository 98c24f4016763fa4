"""What every architecture's ``Config`` shares, and the one check of an HF ``config.json``.

``EncoderConfig`` holds the fields all encoders here have, under HF's names, with their
validation; an architecture's ``Config`` subclasses it, redeclares the defaults it changes
(RoBERTa's position table, DeBERTa's epsilon, ...) and adds its own fields. Validation runs
in ``__post_init__``: a subclass that derives fields (a generator's size) fills them first,
then calls ``super().__post_init__()``.

``check_hf_config`` refuses an HF config this code cannot reproduce exactly (another
``model_type``, activation, position embedding, ...), naming the key; ``config_kwargs``
takes the fields a ``Config`` shares with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass
class EncoderConfig:
    vocab_size: int = 30522
    """Rows of the token embedding (training sets it from the shards' tokenizer)."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_hidden_layers: int = 12
    """Number of transformer blocks."""
    num_attention_heads: int = 12
    """Attention heads per block (hidden_size must be divisible by it)."""
    intermediate_size: int = 3072
    """Inner width of the feed-forward network."""
    max_position_embeddings: int = 512
    """Rows of the position embedding (the longest sequence; see each architecture)."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on each block's residual branches."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT/ELECTRA: 1e-12)."""
    initializer_range: float = 0.02
    """Std of the normal initialisation of weights."""
    pad_token_id: int = 0
    """Padding id: its embedding row stays zero (training sets it from the tokenizer)."""

    ARCH: ClassVar[str] = "encoder"  # the architecture's name in error messages
    POSITIVE: ClassVar[tuple[str, ...]] = ()  # further integer fields that must be >= 1
    HEADS: ClassVar[tuple[tuple[str, str], ...]] = ()  # further (width, heads) pairs

    def __post_init__(self):
        common = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        for name in (*common, *self.POSITIVE):
            if getattr(self, name) < 1:
                self._fail(f"{name} must be >= 1, got {getattr(self, name)}")
        for width, heads in (("hidden_size", "num_attention_heads"), *self.HEADS):
            if getattr(self, width) % getattr(self, heads):
                self._fail(
                    f"{width} {getattr(self, width)} is not divisible by "
                    f"{heads} {getattr(self, heads)}"
                )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                self._fail(f"{name} must be in [0, 1)")
        if not 0 <= self.pad_token_id < self.vocab_size:
            self._fail(f"pad_token_id {self.pad_token_id} is outside the vocabulary")

    def _fail(self, message: str) -> None:
        raise ValueError(f"{self.ARCH} config: {message}")


@dataclass
class RTDConfig(EncoderConfig):
    """An encoder trained by replaced-token detection beside an MLM generator (ELECTRA,
    DeBERTa-v3): the base fields describe the discriminator."""

    rtd_weight: float = 50.0
    """Weight of the discriminator loss: loss = mlm_sum / N_masked + rtd_weight * rtd_sum /
    N_tokens (ELECTRA: 50; microsoft/DeBERTa's code default: 10)."""
    generator_hidden_size: int | None = None
    """Generator width; None: the architecture's default (``default_generator``)."""
    generator_num_hidden_layers: int | None = None
    """Generator depth; None: the architecture's default."""
    generator_num_attention_heads: int | None = None
    """Generator attention heads; None: the architecture's default."""
    generator_intermediate_size: int | None = None
    """Generator feed-forward width; None: the architecture's default."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "generator_hidden_size",
        "generator_num_hidden_layers",
        "generator_num_attention_heads",
        "generator_intermediate_size",
    )
    HEADS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("generator_hidden_size", "generator_num_attention_heads"),
    )

    def default_generator(self) -> dict[str, int]:
        """The generator's size fields where they are None: here the discriminator at half
        its depth (DeBERTa-v3); ELECTRA derives a narrower one."""
        return {
            "generator_hidden_size": self.hidden_size,
            "generator_num_hidden_layers": max(1, self.num_hidden_layers // 2),
            "generator_num_attention_heads": self.num_attention_heads,
            "generator_intermediate_size": self.intermediate_size,
        }

    def __post_init__(self):
        for name, value in self.default_generator().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__()
        if self.rtd_weight < 0:
            self._fail(f"rtd_weight must be >= 0, got {self.rtd_weight}")


# What an HF BERT-family config (BERT, RoBERTa, ELECTRA) must say for our modules to compute
# the same function: key -> (HF's default when the key is absent, the value supported).
BERT_LIKE = {
    "hidden_act": ("gelu", "gelu"),
    "position_embedding_type": ("absolute", "absolute"),
    "is_decoder": (False, False),
    "tie_word_embeddings": (True, True),
}


def check_hf_config(cfg: dict, where, model_type: str, expected: dict[str, tuple[Any, Any]]):
    """Refuse an HF ``config.json`` (``cfg``) this code cannot reproduce exactly.

    ``expected``: key -> (HF's default when the key is absent, the value supported here).
    One-line ``ValueError`` naming the directory and the key.
    """
    if cfg.get("model_type") != model_type:
        raise ValueError(
            f"{where}: model_type is {cfg.get('model_type')!r}, expected {model_type!r}"
        )
    for key, (default, want) in expected.items():
        value = cfg.get(key, default)
        if value != want:
            raise ValueError(f"{where}: {key}={value!r} is not supported (only {want!r})")


def config_kwargs(cfg: dict, config_cls: type, keys: tuple[str, ...] | None = None) -> dict:
    """The entries of an HF config that are fields of ``config_cls`` (or only ``keys``)."""
    names = {f.name for f in fields(config_cls)} if keys is None else set(keys)
    return {k: v for k, v in cfg.items() if k in names}
