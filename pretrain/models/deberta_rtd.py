"""DeBERTa-v3's RTD pieces beside the model: the discriminator's input and embedding sharing.

The three ways of sharing the token embedding that the DeBERTa-v3 paper compares
(``Config.embedding_sharing``; parameter names of ``deberta.Model``):

- "es" (ELECTRA's sharing): one table, ``generator.deberta.embeddings.word_embeddings``,
  read by both models and trained by both losses (the RTD loss pulls it too);
- "nes" (no sharing): the discriminator has ``deberta.embeddings.word_embeddings`` of its
  own; each table is trained only by its own model's loss (the generator may be narrower);
- "gdes" (DeBERTa-v3's default): the discriminator's table is stop_gradient(generator table)
  + ``deberta.embeddings.word_embeddings_delta`` (zero-initialised); the RTD loss trains only
  the delta, the MLM loss only the generator's table.

Diagnostics for them: ``embedding_cosine``, the average cosine similarity of the two models'
embeddings of the same token (ES: 1 by construction; NES drifts apart; GDES stays close), and
``within_table_cosine``, each table's average cosine similarity between different tokens (the
per-model figure the DeBERTa-v3 paper compares the modes by).
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.models.common import IGNORE_INDEX

EMBEDDING_SHARING = ("es", "nes", "gdes")


def discriminator_input(input_ids, labels, sampled, slots) -> torch.Tensor:
    """(B, T) ids with every predicted position replaced by its ``sampled`` (N,) token (in
    ``gather_predicted`` order); ``slots``: the (B, K) positions and validity of a fixed
    prediction capacity, whose padding slots write back the input token."""
    if slots is None:
        predicted = (labels.reshape(-1) != IGNORE_INDEX).nonzero(as_tuple=True)[0]  # (N,)
        return input_ids.reshape(-1).scatter(0, predicted, sampled).view_as(input_ids)
    pos, valid = slots
    keep = input_ids.gather(1, pos)
    return input_ids.scatter(1, pos, torch.where(valid, sampled.view_as(pos), keep))


@torch.no_grad()
def embedding_cosine(model: nn.Module) -> float:
    """Average over token ids (the padding row excluded) of the cosine similarity between the
    generator's and the discriminator's effective token embeddings (DeBERTa-v3, section 3.2).

    ES gives exactly 1.0, GDES 1.0 while its delta is zero, NES about 0 at initialisation.
    ``model`` is a ``deberta.Model`` with ``objective="rtd"`` (unwrapped: the tables are read
    whole); an MLM model raises ``ValueError``. NES with a narrower generator has no
    comparable rows and raises too.
    """
    config = model.config
    if getattr(config, "objective", None) != "rtd":
        raise ValueError(
            "embedding_cosine compares an RTD generator's and discriminator's token "
            f"embeddings; this model's objective is {getattr(config, 'objective', None)!r}"
        )
    gen = model.generator.deberta.embeddings.word_embeddings.weight
    disc = model.deberta.embeddings.word_weight(gen)
    if gen.shape != disc.shape:
        raise ValueError(
            f"embedding_cosine needs tables of one width; the generator's is {gen.shape[1]}, "
            f"the discriminator's {disc.shape[1]}"
        )
    keep = torch.ones(gen.shape[0], dtype=torch.bool, device=gen.device)
    keep[config.pad_token_id] = False  # zero in both tables at initialisation: no direction
    a, b = gen[keep].float(), disc[keep].float()
    # dot / sqrt(|a|^2 |b|^2) rather than F.cosine_similarity: for a row equal in both
    # tables the sums are the same floats and sqrt(x * x) == x, so ES reads exactly 1.0.
    dot = (a * b).sum(-1)
    norms = ((a * a).sum(-1) * (b * b).sum(-1)).sqrt()
    return (dot / norms.clamp_min(torch.finfo(torch.float32).tiny)).mean().item()


@torch.no_grad()
def within_table_cosine(table: torch.Tensor, pad_token_id: int) -> float:
    """Average cosine similarity between the embeddings of two different tokens of one table
    (the padding row excluded): how much the table's directions have collapsed together, the
    per-model figure the DeBERTa-v3 paper tabulates for ES / NES / GDES. Exact, in O(V x C):
    the mean over pairs i != j of u_i . u_j is (|sum u|^2 - n) / (n (n - 1)) for unit rows u."""
    keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
    keep[pad_token_id] = False
    u = table[keep].float()
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    n = u.shape[0]
    if n < 2:
        return 0.0
    total = u.sum(0)
    return float(((total @ total) - (u * u).sum()) / (n * (n - 1)))


def sharing_diagnostics(model: nn.Module) -> dict[str, float]:
    """``embedding_cosine`` (between the two models, per token; when widths agree) and each
    model's ``within_table_cosine`` (``generator_`` / ``discriminator_embedding_similarity``)."""
    c = model.config
    gen = model.generator.deberta.embeddings.word_embeddings.weight
    disc = model.deberta.embeddings.word_weight(gen)
    out = {
        "generator_embedding_similarity": within_table_cosine(gen, c.pad_token_id),
        "discriminator_embedding_similarity": within_table_cosine(disc, c.pad_token_id),
    }
    if gen.shape == disc.shape:
        out["embedding_cosine"] = embedding_cosine(model)
    return out
