"""RoBERTa <-> Hugging Face directories (``RobertaForMaskedLM``; also reads ``RobertaModel``).

Our parameter names are HF's, so conversion checks the config, names and shapes and copies
tensors unchanged: an import followed by an export reproduces the original tensors.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict

import torch

from pretrain.models.base import BERT_LIKE, check_hf_config, config_kwargs
from pretrain.models.hf_io import load_converted_state, load_hf_dir, normalise_keys, save_hf_dir
from pretrain.models.roberta import Config, Model
from pretrain.models.sbo import strip_for_export


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
    # SpanBERT's SBO head is a pretraining head HF does not have: the backbone is exported.
    save_hf_dir(out_dir, *strip_for_export(hf_config(model.config, dtype), model.state_dict()))


def import_hf(hf_dir: str | os.PathLike, **overrides) -> Model:
    """Our model initialised from a local ``RobertaForMaskedLM`` or ``RobertaModel`` directory.

    A bare encoder (no ``lm_head.*``) gets a freshly initialised MLM head; its pooler, the
    tied ``lm_head.decoder.*`` copies and position-id buffers are not parameters here and are
    dropped. ``overrides`` replace config fields (e.g. dropout); anything else that does not
    match raises ``ValueError`` naming the keys.
    """
    cfg, state = load_hf_dir(hf_dir)
    check_hf_config(cfg, hf_dir, "roberta", BERT_LIKE)
    model = Model(Config(**{**config_kwargs(cfg, Config), **overrides}))

    pooler = sorted(k for k in state if k.startswith(("pooler.", "roberta.pooler.")))
    if pooler:
        warnings.warn(
            f"{hf_dir}: pooler not used for MLM pretraining, dropped: {', '.join(pooler)}",
            stacklevel=2,
        )
    state = _normalise_keys(state, hf_dir)
    fresh_head = not any(k.startswith("lm_head.") for k in state)
    # An SBO head (init_from with sbo = true) is never in an export: initialised fresh.
    fresh = ("lm_head.",) if fresh_head else ()
    load_converted_state(model, state, str(hf_dir), allow_missing=(*fresh, "sbo."))
    if fresh_head:
        warnings.warn(
            f"{hf_dir}: no MLM head in the checkpoint; lm_head initialised fresh", stacklevel=2
        )
    return model


def _normalise_keys(state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Key variants of older files onto ``RobertaForMaskedLM``'s (see ``normalise_keys``);
    the pooler is not used for MLM pretraining and is dropped."""
    tied = (
        ("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
        ("lm_head.decoder.bias", "lm_head.bias"),
    )
    return normalise_keys(state, "roberta.", tied, source, drop=("roberta.pooler.",))
