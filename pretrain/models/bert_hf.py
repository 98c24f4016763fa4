"""BERT <-> Hugging Face directories (``BertForPreTraining``; also reads ``BertForMaskedLM``
and ``BertModel``).

Our parameter names are HF's, so conversion checks the config, names and shapes and copies
tensors unchanged: an import followed by an export reproduces the original tensors. An
export also loads in ``BertForMaskedLM`` (``AutoModelForMaskedLM``), which ignores the pooler
and the next-sentence head.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import torch

from pretrain.models.base import BERT_LIKE, check_hf_config, config_kwargs
from pretrain.models.bert import Config, Model
from pretrain.models.hf_io import load_hf_dir, load_with_optional_heads, normalise_keys, save_hf_dir
from pretrain.models.sbo import strip_for_export

# Parts a checkpoint may lack (BertForMaskedLM: pooler and NSP head; BertModel: both heads,
# sometimes the pooler): prefix -> what it is, for the warning.
_OPTIONAL = {
    "bert.pooler.": "pooler",
    "cls.predictions.": "MLM head",
    "cls.seq_relationship.": "next-sentence head",
}


def hf_config(config: Config, dtype: torch.dtype = torch.float32) -> dict:
    """``config.json`` contents for ``transformers.BertForPreTraining``."""
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "tie_word_embeddings": True,
        "dtype": str(dtype).removeprefix("torch."),
        **asdict(config),
    }


def export_hf(model: Model, out_dir: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``BertForPreTraining`` (and,
    without pooler and NSP head, by ``BertForMaskedLM``)."""
    dtype = model.bert.embeddings.word_embeddings.weight.dtype
    # SpanBERT's SBO head is a pretraining head HF does not have: the backbone is exported.
    save_hf_dir(out_dir, *strip_for_export(hf_config(model.config, dtype), model.state_dict()))


def import_hf(hf_dir: str | os.PathLike, **overrides) -> Model:
    """Our model initialised from a local ``BertForPreTraining``, ``BertForMaskedLM`` or
    ``BertModel`` directory.

    Parts the file lacks (pooler, MLM head, next-sentence head) are initialised fresh, with
    a warning naming them; the tied ``cls.predictions.decoder.*`` copies and position /
    token-type id buffers are not parameters here and are dropped. ``overrides`` replace
    config fields (e.g. dropout); anything else that does not match raises ``ValueError``
    naming the keys.
    """
    cfg, state = load_hf_dir(hf_dir)
    check_hf_config(cfg, hf_dir, "bert", BERT_LIKE)
    model = Model(Config(**{**config_kwargs(cfg, Config), **overrides}))

    # An SBO head (init_from with sbo = true) is never in an export: initialised fresh.
    optional = {**_OPTIONAL, "sbo.": "span boundary head"} if model.config.sbo else _OPTIONAL
    load_with_optional_heads(model, _normalise_keys(state, hf_dir), hf_dir, optional)
    return model


def _normalise_keys(state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Key variants of older files onto ``BertForPreTraining``'s (see ``normalise_keys``)."""
    tied = (
        ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    )
    return normalise_keys(state, "bert.", tied, source)
