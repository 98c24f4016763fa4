"""DeBERTa-v3 (He et al., 2021): disentangled attention, EMD, and RTD with GDES (or ES, NES).

Parameter names are those of HF ``DebertaV2ForMaskedLM`` with ``legacy=False``
(``deberta.embeddings.word_embeddings``, ``deberta.encoder.layer.N.attention.self.query_proj``,
``deberta.encoder.rel_embeddings``, ``deberta.encoder.LayerNorm``,
``lm_predictions.lm_head.{dense,LayerNorm,bias}``: microsoft/DeBERTa's own names). Only the
v3 architecture is built: relative attention with c2p + p2c terms, log buckets,
``share_att_key``, LayerNorm-ed relative embeddings, no absolute positions in the input, no
token types, scale sqrt(3 d). Differences from HF ``modeling_deberta_v2``:

- ``forward`` returns loss *sums* with counts and decodes only the predicted positions;
  ``segment_ids`` (packed documents) keep attention inside a document (see
  ``deberta_attention``; relative positions need no reset, EMD positions restart per document);
- ``attention_impl="flex"`` runs the relative terms inside FlexAttention (``deberta_attention``);
- optional enhanced mask decoder (``emd``), as microsoft/DeBERTa's ``EnhancedMaskDecoder``:
  absolute position embeddings (``deberta.embeddings.position_embeddings``, their name) added
  to the input of the last layer, which is re-applied ``EMD_REPEATS`` = 2 times with those
  queries against the unchanged keys/values; here only for the predicted positions. HF has
  no EMD: an exported model is encoder + head, i.e. ``mlm_logits(..., emd=False)``;
- ``objective="rtd"``: microsoft/DeBERTa's ``RTDModel`` in one module: a generator
  (``generator.*``, an MLM model of the same width (NES: any), half the depth), a discriminator
  (``deberta.*``) whose token embedding is, with ``embedding_sharing="gdes"`` (default),
  stop_gradient(generator embedding) + ``deberta.embeddings.word_embeddings_delta``
  (zero-initialised; "es" and "nes": ``deberta_rtd``), and their RTD head
  ``mask_predictions`` (LayerNorm(h + h[first token of the document]) -> dense -> GELU ->
  classifier). Both losses come from one forward pass, for the objective to combine
  (microsoft's ``decoupled_training=False``; their default steps G and D separately).
  Replacement labels follow microsoft/ELECTRA: a sampled token equal to the original is
  "not replaced". Their code's default RTD weight is 10 (``--rtd_lambda``); ours is 50, as
  ELECTRA (``Config.rtd_weight``).

``param_counts``: *embedding* = the token-embedding matrix (vocab x hidden) of the encoder
that ships (the discriminator for RTD); *backbone* = the rest of that encoder (HF
``DebertaV2Model``: embedding LayerNorm, layers, relative embeddings and their LayerNorm;
model cards also quote backbone without the embedding matrix); *total* = every trainable
parameter of the pretraining model (heads, EMD position table, generator, and the GDES delta
or the NES discriminator's own table; ES adds nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from pretrain.models.base import RTDConfig
from pretrain.models.common import (
    IGNORE_INDEX,
    check_capacity,
    count_params,
    gather_predicted,
    gather_predicted_fixed,
    init_weights,
    mlm_sums,
    predicted_positions,
    rtd_sums,
    sample_replacements,
)
from pretrain.models.deberta_attention import build_context, relative_index
from pretrain.models.deberta_layers import (
    DebertaModel,
    LMPredictions,
    MaskedLM,
    RTDHead,
)
from pretrain.models.deberta_rtd import EMBEDDING_SHARING, discriminator_input, sharing_diagnostics

EMD_REPEATS = 2  # microsoft/DeBERTa EnhancedMaskDecoder: the last layer is applied twice
EMD_QUERY_MULTIPLE = 64  # EMD query counts are padded to a multiple: few distinct shapes


@dataclass
class Config(RTDConfig):
    vocab_size: int = 128100
    """Rows of the token embedding (the tokenizer's vocabulary size; 128,100 for v3's spm)."""
    max_position_embeddings: int = 512
    """Longest sequence the EMD position table covers; the default relative range."""
    layer_norm_eps: float = 1e-7
    """LayerNorm epsilon (DeBERTa-v3: 1e-7)."""
    position_buckets: int = 256
    """Log buckets on each side for relative positions (DeBERTa-v3: 256); <= 0 disables."""
    max_relative_positions: int = -1
    """Largest relative distance told apart; -1 = max_position_embeddings (v3 configs: -1)."""
    share_att_key: bool = True
    """Relative embeddings projected by the content query/key projections (DeBERTa-v3, True),
    or by projections of their own, ``pos_query_proj`` / ``pos_key_proj`` (DeBERTa v1/v2's
    W_q,r and W_k,r: False; HF's default when the key is absent)."""
    emd: bool = False
    """Enhanced mask decoder before the MLM head (microsoft/DeBERTa); not part of HF exports."""
    objective: str = "rtd"
    """"rtd": generator MLM + discriminator replaced-token detection (DeBERTa-v3); "mlm"."""
    embedding_sharing: str = "gdes"
    """RTD only: how the discriminator gets its token embedding (``deberta_rtd``). "gdes":
    stop_gradient(generator's) + a zero-initialised delta (DeBERTa-v3); "es": the generator's,
    trained by both losses (ELECTRA); "nes": its own table (the generator may be narrower)."""
    attention_impl: str = "plain"
    """"plain" (PyTorch, anywhere), "flex" (FlexAttention; needs attention dropout 0, CUDA
    to train), "auto" (flex on CUDA when no attention dropout applies, plain otherwise)."""

    ARCH: ClassVar[str] = "deberta"

    def __post_init__(self):
        super().__post_init__()
        if self.position_buckets > 0 and not (
            self.position_buckets >= 4 and self.relative_range > self.position_buckets // 2 + 1
        ):
            self._fail(
                f"position_buckets {self.position_buckets} needs "
                f">= 4 and max_relative_positions > position_buckets // 2 + 1"
            )
        if self.objective not in ("mlm", "rtd"):
            self._fail(f"objective must be 'mlm' or 'rtd', got {self.objective!r}")
        if self.attention_impl not in ("plain", "flex", "auto"):
            self._fail(
                f"attention_impl must be 'plain', 'flex' or 'auto', got {self.attention_impl!r}"
            )
        if self.attention_impl == "flex" and self.attention_probs_dropout_prob > 0:
            self._fail(
                "attention_impl='flex' cannot apply attention dropout; set "
                "attention_probs_dropout_prob=0 or use 'auto'/'plain'"
            )
        if self.embedding_sharing not in EMBEDDING_SHARING:
            self._fail(
                f"embedding_sharing must be 'es', 'nes' or 'gdes', got {self.embedding_sharing!r}"
            )
        shares = self.objective == "rtd" and self.embedding_sharing != "nes"
        if shares and self.generator_hidden_size != self.hidden_size:
            self._fail(
                f"{self.embedding_sharing.upper()} shares the token embedding, so "
                "generator_hidden_size must equal hidden_size (embedding_sharing='nes' need not)"
            )

    @property
    def relative_range(self) -> int:
        """Effective max_relative_positions (HF: values < 1 mean max_position_embeddings)."""
        if self.max_relative_positions >= 1:
            return self.max_relative_positions
        return self.max_position_embeddings

    def generator_config(self) -> Config:
        """The RTD generator's own config (an MLM model, with this config's EMD setting)."""
        return Config(
            **{
                **self.__dict__,
                "objective": "mlm",
                "hidden_size": self.generator_hidden_size,
                "num_hidden_layers": self.generator_num_hidden_layers,
                "num_attention_heads": self.generator_num_attention_heads,
                "intermediate_size": self.generator_intermediate_size,
            }
        )


# Official configs of microsoft/deberta-v3-* (generator depth from microsoft/DeBERTa's
# experiments/language_model/rtd_*.json). Counts with vocab 128,100: see param_counts.
PRESETS = {
    # Tiny, for tests and the CPU smoke run; vocab_size comes from the tokenizer.
    "deberta-debug": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        position_buckets=32,
    ),
    "deberta-v3-xsmall": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536
    ),  # generator: 6 layers
    "deberta-v3-small": dict(
        hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072
    ),  # generator: 3 layers
    "deberta-v3-base": dict(),  # generator: 6 layers
    "deberta-v3-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),  # generator: 12 layers
}
# The papers' rounded figures (`params` prints them beside the exact counts).
PAPER_PARAMS = {
    "deberta-v3-xsmall": "22M backbone + 48M embedding",
    "deberta-v3-small": "44M backbone + 98M embedding",
    "deberta-v3-base": "86M backbone + 98M embedding",
    "deberta-v3-large": "304M backbone + 131M embedding",
}


class Model(nn.Module):
    """MLM model (``deberta``, ``lm_predictions``) or RTD model (``generator``, ``deberta``,
    ``mask_predictions``), chosen by ``config.objective``."""

    predict_capacity: int | None = None
    """Labels per row the MLM head (and EMD) decode with static shapes (see
    ``roberta.Model.predict_capacity``); None: exactly the labelled positions."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        if config.objective == "mlm":
            self.deberta = DebertaModel(config)
            self.lm_predictions = LMPredictions(config)
        else:
            self.generator = MaskedLM(config.generator_config())
            # The discriminator has no EMD; its token table depends on the sharing mode.
            disc = replace(config, emd=False)
            self.deberta = DebertaModel(disc, sharing=config.embedding_sharing)
            self.mask_predictions = RTDHead(config)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    @property
    def mlm_part(self) -> nn.Module:
        """The module holding the MLM ``deberta`` + ``lm_predictions`` (self or the generator)."""
        return self if self.config.objective == "mlm" else self.generator

    def forward(self, input_ids, attention_mask, labels, segment_ids=None, taps=None) -> dict:
        """Loss sums and counts; ``taps`` (MLM objective; ``pretrain.models.taps``) records
        hidden states, attention scores (on the plain attention path) and decoded logits.
        With EMD, ``taps.hidden`` ends before the last block (EMD runs it for the head)."""
        if taps is not None and self.config.objective != "mlm":
            raise ValueError("taps record an MLM model; this DeBERTa trains RTD")
        plain = taps is not None and taps.scores  # flex attention never forms the scores
        ctx = self._context(input_ids, attention_mask, segment_ids, plain)
        h, targets, slots = self._mlm_hidden(
            input_ids, attention_mask, segment_ids, ctx, labels, taps=taps
        )
        gen = self.mlm_part
        words = gen.deberta.embeddings.word_embeddings.weight
        logits = gen.lm_predictions.lm_head(h, words)  # (N, V): predicted positions only
        out = mlm_sums(logits, targets)
        if taps is not None:
            taps.logits, taps.targets = logits, targets
        if self.config.objective == "mlm":
            return out
        # Replace every predicted position by a sample of the generator (no gradient).
        sampled = sample_replacements(logits)  # (N,), same order as the gathered rows
        disc_ids = discriminator_input(input_ids, labels, sampled, slots)
        original = torch.where(labels != IGNORE_INDEX, labels, input_ids)
        h = self.deberta(disc_ids, attention_mask, ctx, shared=words)  # (B, T, C)
        first = _document_first(segment_ids, h.shape[1], h.device)  # (B|1, T)
        first_h = h.gather(1, first.expand(h.shape[0], -1)[..., None].expand_as(h))
        rtd_logits = self.mask_predictions(h, first_h)  # (B, T)
        out.update(rtd_sums(rtd_logits, disc_ids != original, attention_mask))
        return out

    def mlm_logits(self, input_ids, attention_mask, segment_ids=None, *, emd=None) -> torch.Tensor:
        """(B, T, V) logits of the (generator's) MLM head; ``emd=False``: as HF exports compute."""
        ctx = self._context(input_ids, attention_mask, segment_ids)
        h, _, _ = self._mlm_hidden(input_ids, attention_mask, segment_ids, ctx, None, emd)
        gen = self.mlm_part
        return gen.lm_predictions.lm_head(h, gen.deberta.embeddings.word_embeddings.weight)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """What validation reports beside the losses: for RTD, how the generator's and the
        discriminator's token embeddings relate (``deberta_rtd.sharing_diagnostics``: the
        per-token cosine between the two tables, and each table's average cosine between
        different tokens, by which the DeBERTa-v3 paper compares ES / NES / GDES)."""
        return sharing_diagnostics(self) if self.config.objective == "rtd" else {}

    def encode(self, input_ids, attention_mask, segment_ids=None) -> torch.Tensor:
        """(B, T, C) last hidden states of the encoder that ships (HF ``DebertaV2Model``): the
        MLM encoder, or the discriminator for RTD (whose input is then the unmodified text)."""
        ctx = self._context(input_ids, attention_mask, segment_ids)
        shared = None
        if self.config.objective == "rtd":
            shared = self.generator.deberta.embeddings.word_embeddings.weight
        return self.deberta(input_ids, attention_mask, ctx, shared=shared)

    def _context(self, input_ids, attention_mask, segment_ids, plain: bool = False):
        c = self.config
        flex = not plain and (
            c.attention_impl == "flex"
            or (
                c.attention_impl == "auto"
                and input_ids.is_cuda
                and not (self.training and c.attention_probs_dropout_prob > 0)
            )
        )
        rel = relative_index(
            input_ids.shape[1], c.position_buckets, c.relative_range, input_ids.device
        )
        return build_context(rel, attention_mask.bool(), segment_ids, flex)

    def _mlm_hidden(self, input_ids, attention_mask, segment_ids, ctx, labels, emd=None, taps=None):
        """What the MLM head decodes: (N, C) states at labelled positions, their (N,) targets
        (row-major order, as ``gather_predicted``) and None; with ``predict_capacity`` K:
        (B*K, C), (B*K,) targets (IGNORE_INDEX in padding slots) and the (B, K) positions and
        validity. Without labels: (B, T, C), None, None."""
        part, cap = self.mlm_part, self.predict_capacity
        if not (self.config.emd if emd is None else emd):
            h = part.deberta(input_ids, attention_mask, ctx, taps=taps)  # (B, T, C)
            if labels is None:
                return h, None, None
            if cap is None:
                return (*gather_predicted(h, labels), None)
            h, targets, pos, valid = gather_predicted_fixed(h, labels, cap)
            return h, targets, (pos, valid)
        if not self.config.emd:
            raise ValueError("this model was built without EMD (Config.emd=False)")
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {t} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings} (EMD's position table)"
            )
        # EMD: the last layer again, queries = its input + absolute positions, keys/values =
        # its input; only for the positions the head decodes (microsoft does all, then drops).
        penult = part.deberta(input_ids, attention_mask, ctx, skip_last=True, taps=taps)
        pos = torch.arange(t, device=input_ids.device)
        pos = (pos - _document_first(segment_ids, t, input_ids.device)).expand(b, t)
        qctx, z, valid = ctx, penult, None
        if labels is not None:
            qpos, valid = _predicted_queries(labels, cap)  # (B, M) each
            qctx = ctx.with_queries(qpos)
            z = penult.gather(1, qpos[..., None].expand(-1, -1, penult.shape[-1]))  # (B, M, C)
            pos = pos.gather(1, qpos)
        z = z + part.deberta.embeddings.position_embeddings(pos)
        last, rel = part.deberta.encoder.layer[-1], part.deberta.encoder.rel()
        for _ in range(EMD_REPEATS):
            z = last(penult, qctx, rel, query=z)
        if labels is None:
            return z, None, None
        targets = labels.gather(1, qpos)
        if cap is None:
            return z[valid], targets[valid], None
        targets = torch.where(valid, targets, IGNORE_INDEX).reshape(-1)
        return z.reshape(-1, z.shape[-1]), targets, (qpos, valid)


def _document_first(segment_ids, length: int, device) -> torch.Tensor:
    """(B, T) index of each token's document start ((1, T) zeros without segment_ids)."""
    if segment_ids is None:
        return torch.zeros(1, length, dtype=torch.long, device=device)
    pos = torch.arange(length, device=device)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return torch.where(starts, pos, 0).cummax(dim=1).values


def _predicted_queries(
    labels: torch.Tensor, capacity: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M) labelled positions of each row in increasing order (padded with unlabelled
    ones up to M) and (B, M) bool: really labelled. M = ``capacity`` when given (static,
    checked), else the most labels in a row rounded up to a multiple of EMD_QUERY_MULTIPLE
    (reading that count waits for the device)."""
    b, t = labels.shape
    if capacity is not None:
        check_capacity(labels, capacity)
        return predicted_positions(labels, capacity)
    most = int((labels != IGNORE_INDEX).sum(1).max()) if b else 0
    m = min(t, max(1, math.ceil(most / EMD_QUERY_MULTIPLE)) * EMD_QUERY_MULTIPLE)
    return predicted_positions(labels, m)


def param_counts(model: Model) -> dict[str, int]:
    """embedding = token table (V x C) of the shipped encoder; backbone = the rest of it (HF
    ``DebertaV2Model``); total = all parameters of the pretraining model (module docstring)."""
    c, enc = model.config, model.deberta
    backbone = count_params(enc.embeddings.LayerNorm) + count_params(enc.encoder)
    return {
        "embedding": c.vocab_size * c.hidden_size,
        "backbone": backbone,
        "total": count_params(model),
    }
