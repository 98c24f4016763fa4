"""ELECTRA <-> Hugging Face directories (``ElectraForPreTraining`` + ``ElectraForMaskedLM``).

Our parameter names already are HF's under the ``discriminator.`` / ``generator.`` prefixes,
so conversion checks configs, names and shapes and otherwise copies tensors unchanged: an
import followed by an export reproduces the original tensors exactly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from pretrain.models.base import BERT_LIKE, check_hf_config
from pretrain.models.electra import Config, Model
from pretrain.models.hf_io import load_converted_state, load_hf_dir, save_hf_dir

# Config fields with the same meaning in HF's ElectraConfig and ours (discriminator side).
_SHARED = (
    "vocab_size",
    "embedding_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "initializer_range",
    "pad_token_id",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
_NETWORK = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_EMB = "electra.embeddings."


def _hf_config(c: Config, architecture: str, network: dict, dtype: torch.dtype) -> dict:
    return {
        "architectures": [architecture],
        "model_type": "electra",
        "hidden_act": "gelu",
        "tie_word_embeddings": True,
        "dtype": str(dtype).removeprefix("torch."),
        **{k: getattr(c, k) for k in _SHARED},
        **network,
    }


def export_hf(model: Model, out_dir: str | os.PathLike) -> None:
    c = model.config
    dtype = model.discriminator.electra.embeddings.word_embeddings.weight.dtype
    disc = {k: getattr(c, k) for k in _NETWORK}
    gen = {k: getattr(c, "generator_" + k) for k in _NETWORK}
    save_hf_dir(
        out_dir,
        _hf_config(c, "ElectraForPreTraining", disc, dtype),
        model.discriminator.state_dict(),
    )
    save_hf_dir(
        Path(out_dir) / "generator",
        _hf_config(c, "ElectraForMaskedLM", gen, dtype),
        model.generator.state_dict(),
    )


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare ``ElectraModel`` files have no ``electra.`` prefix; buffers are not parameters."""
    out = {}
    for key, value in state.items():
        if key.startswith(("embeddings.", "embeddings_project.", "encoder.")):
            key = "electra." + key
        if key.endswith((".position_ids", ".token_type_ids")):
            continue
        out[key] = value
    return out


def import_hf(hf_dir, generator_dir=None, **overrides) -> Model:
    dcfg, dstate = load_hf_dir(hf_dir)
    check_hf_config(dcfg, hf_dir, "electra", BERT_LIKE)
    dstate = _normalise_keys(dstate)
    if any(k.startswith("generator_") for k in dstate):
        raise ValueError(
            f"{hf_dir}: this is an ElectraForMaskedLM generator; pass the "
            "discriminator directory (with the generator in generator/ or generator_dir)"
        )
    if generator_dir is None and (Path(hf_dir) / "generator" / "config.json").is_file():
        generator_dir = Path(hf_dir) / "generator"

    kwargs = {k: dcfg[k] for k in _SHARED + _NETWORK if k in dcfg}
    state = {"discriminator." + k: v for k, v in dstate.items()}
    allow_missing = ["generator.electra.embeddings."]  # shared: loaded through the discriminator
    if not any(k.startswith("discriminator.discriminator_predictions.") for k in state):
        allow_missing.append("discriminator.discriminator_predictions.")
        warnings.warn(f"{hf_dir}: no discriminator head; initialised fresh", stacklevel=2)

    if generator_dir is not None:
        gcfg, gstate = load_hf_dir(generator_dir)
        check_hf_config(gcfg, generator_dir, "electra", BERT_LIKE)
        for key in _SHARED[:4]:  # must agree for the embeddings to be shareable
            if gcfg.get(key) != dcfg.get(key):
                raise ValueError(
                    f"{generator_dir}: {key}={gcfg.get(key)} differs from the "
                    f"discriminator's {dcfg.get(key)}; they must share embeddings"
                )
        kwargs.update({"generator_" + k: gcfg[k] for k in _NETWORK})
        gstate = _normalise_keys(gstate)
        tied = gstate.pop("generator_lm_head.weight", None)  # older files store the tied copy
        emb = dstate.get(_EMB + "word_embeddings.weight")
        if tied is not None and emb is not None and not torch.equal(tied, emb):
            raise ValueError(
                f"{generator_dir}: generator_lm_head.weight is not tied to the "
                "word embeddings; untied heads are not supported"
            )
        differ = [
            k
            for k, v in gstate.items()
            if k.startswith(_EMB) and k in dstate and not torch.equal(v, dstate[k])
        ]
        if differ:
            warnings.warn(
                f"{generator_dir}: embeddings differ from the discriminator's "
                f"({', '.join(differ)}); using the discriminator's (ELECTRA shares them)",
                stacklevel=2,
            )
        state.update({"generator." + k: v for k, v in gstate.items() if not k.startswith(_EMB)})
    else:
        allow_missing.append("generator.")

    model = Model(Config(**{**kwargs, **overrides}))
    load_converted_state(model, state, str(hf_dir), allow_missing=tuple(allow_missing))
    return model
