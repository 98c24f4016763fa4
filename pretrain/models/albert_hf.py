"""ALBERT <-> Hugging Face directories (``AlbertForPreTraining``; also reads
``AlbertForMaskedLM`` and ``AlbertModel``).

For ``share`` "all" and "none" our parameter names are HF's ("none" is HF's
``num_hidden_groups = num_hidden_layers``), so conversion checks the config, names and shapes
and copies tensors unchanged: an import followed by an export reproduces the original tensors.
An export also loads in ``AlbertForMaskedLM`` (``AutoModelForMaskedLM``), which ignores the
pooler and the SOP head.

HF has no partial sharing: a ``share`` "attention" / "ffn" model is exported **unrolled**, as
``num_hidden_groups = num_hidden_layers``, ``inner_group_num = 1``, with the shared block
copied into every layer (``albert.encoder.shared.X`` -> ``albert.encoder.albert_layer_groups.
{0..L-1}.albert_layers.0.X``; each layer's own ``albert.encoder.albert_layers.N.Y`` ->
``albert.encoder.albert_layer_groups.N.albert_layers.0.Y``), which HF computes exactly as we
do. ``config.json`` also records ``"share"`` (HF keeps it as an unused attribute); import folds
the copies back into one tensor when the file (or an override) says "attention" / "ffn", and
refuses copies that differ (e.g. after HF fine-tuning; import those with ``share="all"``, which
keeps the L layers apart).
"""

from __future__ import annotations

import os
from dataclasses import asdict

import torch

from pretrain.models.albert import ACTIVATIONS, Config, Model
from pretrain.models.base import check_hf_config, config_kwargs
from pretrain.models.hf_io import load_hf_dir, load_with_optional_heads, normalise_keys, save_hf_dir

# What an HF ALBERT config must say for our modules to compute the same function, besides
# hidden_act (two values, checked apart): key -> (HF's default when absent, the value supported).
ALBERT_LIKE = {
    "position_embedding_type": ("absolute", "absolute"),  # older transformers wrote it
    "tie_word_embeddings": (True, True),
}

# Parts a checkpoint may lack (AlbertForMaskedLM: pooler and SOP head; AlbertModel: both
# heads): prefix -> what it is, for the warning.
_OPTIONAL = {
    "albert.pooler.": "pooler",
    "predictions.": "MLM head",
    "sop_classifier.": "sentence-order head",
}

_SHARED = "albert.encoder.shared."  # share "attention" / "ffn": the block used by every layer
_OWN = "albert.encoder.albert_layers."  # ... and each layer's own block
_UNROLLED = "albert.encoder.albert_layer_groups.{}.albert_layers.0."


def hf_config(config: Config, dtype: torch.dtype = torch.float32) -> dict:
    """``config.json`` contents for ``transformers.AlbertForPreTraining`` (groups unrolled for
    share "none" / "attention" / "ffn"; ``share`` recorded for our import)."""
    groups, inner = config.hf_groups()
    return {
        "architectures": ["AlbertForPreTraining"],
        "model_type": "albert",
        "tie_word_embeddings": True,
        "dtype": str(dtype).removeprefix("torch."),
        **asdict(config),
        "num_hidden_groups": groups,
        "inner_group_num": inner,
    }


def hf_names(key: str, num_layers: int) -> list[str]:
    """The HF names of our parameter ``key``: itself, except for the partially shared
    layouts, where the shared block appears in every layer of the unrolled HF model."""
    if key.startswith(_SHARED):
        rest = key.removeprefix(_SHARED)
        return [_UNROLLED.format(i) + rest for i in range(num_layers)]
    if key.startswith(_OWN):
        layer, rest = key.removeprefix(_OWN).split(".", 1)
        return [_UNROLLED.format(layer) + rest]
    return [key]


def hf_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """``model``'s state under HF ``AlbertForPreTraining`` names (shared blocks copied per
    layer for share "attention" / "ffn")."""
    layers = model.config.num_hidden_layers
    return {hf: v for k, v in model.state_dict().items() for hf in hf_names(k, layers)}


def export_hf(model: Model, out_dir: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``AlbertForPreTraining`` (and,
    without pooler and SOP head, by ``AlbertForMaskedLM``)."""
    dtype = model.albert.embeddings.word_embeddings.weight.dtype
    save_hf_dir(out_dir, hf_config(model.config, dtype), hf_state_dict(model))


def import_hf(hf_dir: str | os.PathLike, **overrides) -> Model:
    """Our model initialised from a local ``AlbertForPreTraining``, ``AlbertForMaskedLM`` or
    ``AlbertModel`` directory.

    Parts the file lacks (pooler, MLM head, SOP head) are initialised fresh, with a warning
    naming them; the tied ``predictions.decoder.*`` copies and position / token-type id
    buffers are not parameters here and are dropped. ``share`` comes from the file's
    ``"share"`` key (written by ``export_hf``; absent: "all") or an override; "none",
    "attention" and "ffn" need an unrolled file (``num_hidden_groups = num_hidden_layers``,
    ``inner_group_num = 1``). ``overrides`` replace config fields (e.g. dropout); anything
    else that does not match raises ``ValueError`` naming the keys.
    """
    cfg, state = load_hf_dir(hf_dir)
    check_hf_config(cfg, hf_dir, "albert", ALBERT_LIKE)
    act = cfg.get("hidden_act", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"{hf_dir}: hidden_act={act!r} is not supported (only "
            f"{' or '.join(repr(a) for a in ACTIVATIONS)})"
        )
    kwargs = {**config_kwargs(cfg, Config), **overrides}
    share = kwargs.get("share", "all")
    if share != "all":
        layers = kwargs.get("num_hidden_layers", Config.num_hidden_layers)
        layout = (cfg.get("num_hidden_groups", 1), cfg.get("inner_group_num", 1))
        if layout != (layers, 1):
            raise ValueError(
                f"{hf_dir}: share={share!r} needs an unrolled checkpoint (num_hidden_groups = "
                f"num_hidden_layers = {layers}, inner_group_num = 1), got num_hidden_groups="
                f"{layout[0]}, inner_group_num={layout[1]}"
            )
        kwargs.update(num_hidden_groups=1, inner_group_num=1)
    model = Model(Config(**kwargs))

    load_with_optional_heads(
        model, _fold_shared(_normalise_keys(state, hf_dir), model, hf_dir), hf_dir, _OPTIONAL
    )
    return model


def _normalise_keys(state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Key variants of older files onto ``AlbertForPreTraining``'s (see ``normalise_keys``)."""
    tied = (
        ("predictions.decoder.weight", "albert.embeddings.word_embeddings.weight"),
        ("predictions.decoder.bias", "predictions.bias"),
    )
    return normalise_keys(state, "albert.", tied, source)


def _fold_shared(state: dict[str, torch.Tensor], model: Model, source) -> dict[str, torch.Tensor]:
    """Unrolled HF names -> ours (``hf_names`` inverted): every layer's copy of a shared block
    must be present and equal, and becomes one tensor. The identity for "all" / "none"."""
    layers = model.config.num_hidden_layers
    ours = {hf: key for key in model.state_dict() for hf in hf_names(key, layers) if hf != key}
    if not ours:
        return state
    absent = [hf for hf in ours if hf not in state]
    if absent:
        raise ValueError(
            f"{source}: checkpoint does not match the model; missing keys: {', '.join(absent)}"
        )
    out, origin = {}, {}
    for hf, value in state.items():
        key = ours.get(hf, hf)
        if key in out:
            if not torch.equal(out[key], value):
                raise ValueError(
                    f"{source}: {hf} differs from {origin[key]}, but share="
                    f"{model.config.share!r} shares them; import with share='all' to keep "
                    "the layers apart"
                )
            continue
        out[key], origin[key] = value, hf
    return out
