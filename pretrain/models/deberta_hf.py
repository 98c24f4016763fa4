"""DeBERTa <-> Hugging Face ``transformers`` directories (no ``transformers`` import needed).

Layout written by ``export_hf`` (and read back by ``import_hf``):

- MLM model: ``config.json`` + ``model.safetensors`` for ``DebertaV2ForMaskedLM`` with
  ``legacy=False`` (head ``lm_predictions.lm_head.*``, decoder = the token embedding). With
  EMD, ``deberta.embeddings.position_embeddings.weight`` is kept in the file (microsoft's
  layout; HF ignores that key on load) so that pretraining can continue with EMD; HF runs
  the model without EMD.
- RTD model: the discriminator as ``DebertaV2Model`` with its effective token embedding (GDES:
  generator embedding + delta; ES: the generator's; NES: its own), the generator as
  ``DebertaV2ForMaskedLM`` in ``generator/``, and in ``rtd_state.safetensors`` what continuing
  RTD needs beyond them: the RTD head (``mask_predictions.*``), the ``embedding_sharing`` mode
  (in the file's metadata; absent = "gdes", microsoft's) and, for GDES, the delta itself
  (``deberta.embeddings.word_embeddings_delta``; recomputing it as a difference of the two
  embeddings would round its low bits away). A side file, so that HF loads the encoder with
  no unexpected keys.

``import_hf`` also reads HF's legacy MLM head (``cls.predictions.*``, decoder tied to the
embedding), bare ``DebertaV2Model`` files (keys without ``deberta.``), microsoft/DeBERTa's
``pytorch_model.generator.bin`` and its ``mask_predictions.classifer`` (sic) name.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from data_pipeline.common import load_torch_file
from pretrain.models.base import check_hf_config
from pretrain.models.deberta import Config, Model
from pretrain.models.hf_io import load_hf_dir, save_hf_dir

RTD_STATE_FILE = "rtd_state.safetensors"
WORDS = "deberta.embeddings.word_embeddings.weight"
EMD_POSITIONS = "deberta.embeddings.position_embeddings.weight"
DELTA = "deberta.embeddings.word_embeddings_delta"
SHARING = "embedding_sharing"  # rtd_state.safetensors metadata key: the mode to continue with
_HEADS = ("lm_predictions.", "mask_predictions.")
# Config fields with the same name and meaning in HF's DebertaV2Config (pad_token_id apart:
# HF writes null for "none").
HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "initializer_range",
    "layer_norm_eps",
    "position_buckets",
    "max_relative_positions",
    "share_att_key",
)


def hf_config(c: Config, architecture: str, dtype: torch.dtype) -> dict:
    """``config.json`` for ``transformers.DebertaV2Config`` describing ``c``'s encoder."""
    return {
        "architectures": [architecture],
        "model_type": "deberta-v2",
        "hidden_act": "gelu",
        "type_vocab_size": 0,
        "relative_attention": True,
        "pos_att_type": ["p2c", "c2p"],
        "norm_rel_ebd": "layer_norm",
        "position_biased_input": False,
        "legacy": False,
        "dtype": str(dtype).removeprefix("torch."),
        **{k: getattr(c, k) for k in (*HF_FIELDS, "pad_token_id")},
    }


def export_hf(model: Model, out_dir: str | os.PathLike) -> None:
    c, out = model.config, Path(out_dir)
    if c.objective == "mlm":
        dtype = model.deberta.embeddings.word_embeddings.weight.dtype
        save_hf_dir(out, hf_config(c, "DebertaV2ForMaskedLM", dtype), model.state_dict())
        return
    from safetensors.torch import save_file

    gen = model.generator
    dtype = gen.deberta.embeddings.word_embeddings.weight.dtype
    save_hf_dir(
        out / "generator",
        hf_config(c.generator_config(), "DebertaV2ForMaskedLM", dtype),
        gen.state_dict(),
    )
    disc = {f"deberta.{k}": v for k, v in model.deberta.state_dict().items()}
    disc[WORDS] = model.deberta.embeddings.word_weight(
        gen.deberta.embeddings.word_embeddings.weight
    )
    delta = disc.pop(DELTA, None)  # GDES only
    save_hf_dir(out, hf_config(replace(c, emd=False), "DebertaV2Model", dtype), disc)
    extra = {f"mask_predictions.{k}": v for k, v in model.mask_predictions.state_dict().items()}
    if delta is not None:
        extra[DELTA] = delta
    extra = {k: v.detach().cpu().contiguous().clone() for k, v in extra.items()}
    meta = {"format": "pt", SHARING: c.embedding_sharing}
    save_file(extra, str(out / RTD_STATE_FILE), metadata=meta)


# ----------------------------------------------------------------------------- import


def config_from_hf(cfg: dict, where) -> dict:
    """``Config`` keyword arguments of an HF DeBERTa-v2 config; refuses non-v3 variants."""
    pos_att = cfg.get("pos_att_type") or []
    if isinstance(pos_att, str):
        pos_att = [x.strip() for x in pos_att.lower().split("|")]
    norm_rel = cfg.get("norm_rel_ebd", "none").strip().lower()
    hidden, heads = cfg.get("hidden_size", 1536), cfg.get("num_attention_heads", 24)
    # key -> (HF's default when absent, what DeBERTa-v3 as implemented here needs)
    v3 = {
        "relative_attention": (False, True),
        "position_biased_input": (True, False),
        "pos_att_type": ([], ["c2p", "p2c"]),
        "norm_rel_ebd": ("none", "layer_norm"),
        "type_vocab_size": (0, 0),
        "hidden_act": ("gelu", "gelu"),
        "conv_kernel_size": (0, 0),
        "embedding_size": (hidden, hidden),
        "attention_head_size": (hidden // heads, hidden // heads),
    }
    check_hf_config(
        {**cfg, "pos_att_type": sorted(pos_att), "norm_rel_ebd": norm_rel}, where, "deberta-v2", v3
    )
    out = {k: cfg[k] for k in HF_FIELDS if k in cfg}
    out["pad_token_id"] = cfg.get("pad_token_id") or 0
    out.setdefault("position_buckets", -1)  # HF: absent = no buckets
    out.setdefault("share_att_key", False)  # HF: absent = separate relative projections (v1/v2)
    return out


def normalise_keys(state: dict[str, torch.Tensor], where) -> dict[str, torch.Tensor]:
    """HF/microsoft key variants -> our names; unknown keys raise."""
    out = {}
    for key, value in state.items():
        if key.startswith(("embeddings.", "encoder.")):  # a bare DebertaV2Model
            key = "deberta." + key
        key = re.sub(r"^cls\.predictions\.transform\.", "lm_predictions.lm_head.", key)
        key = "lm_predictions.lm_head.bias" if key == "cls.predictions.bias" else key
        key = key.replace("mask_predictions.classifer.", "mask_predictions.classifier.")
        if key == "deberta.embeddings.position_ids":
            continue  # a buffer older HF versions saved
        if key.startswith("cls.predictions.decoder."):
            out[key] = value  # checked against the tied tensor below
            continue
        if not key.startswith(("deberta.",) + _HEADS):
            raise ValueError(f"{where}: unknown weight {key!r} in a DeBERTa checkpoint")
        out[key] = value
    for tied, source in (
        ("cls.predictions.decoder.weight", WORDS),
        ("cls.predictions.decoder.bias", "lm_predictions.lm_head.bias"),
    ):
        if tied in out:
            value = out.pop(tied)
            if source in out and not torch.equal(value, out[source]):
                raise ValueError(
                    f"{where}: {tied} is not tied to {source}; untied MLM "
                    "decoders are not supported"
                )
    return out


def _find_generator(hf_dir: Path):
    """(config kwargs, state) of the RTD generator next to a discriminator, or None."""
    if (hf_dir / "generator" / "config.json").is_file():
        cfg, state = load_hf_dir(hf_dir / "generator")
        where = hf_dir / "generator"
        return config_from_hf(cfg, where), normalise_keys(state, where)
    bin_path = hf_dir / "pytorch_model.generator.bin"  # microsoft's hub layout
    if bin_path.is_file():
        state = load_torch_file(bin_path)
        state = normalise_keys(state, bin_path)
        layers = {
            int(m.group(1))
            for k in state
            if (m := re.match(r"deberta\.encoder\.layer\.(\d+)\.", k))
        }
        ffn = state["deberta.encoder.layer.0.intermediate.dense.weight"].shape[0]
        return {
            "num_hidden_layers": max(layers) + 1,
            "intermediate_size": ffn,
            "hidden_size": state[WORDS].shape[1],
        }, state
    return None


def import_hf(hf_dir: str | os.PathLike, **overrides) -> Model:
    """Our model initialised from a local HF DeBERTa-v3 directory, for continued pretraining.

    The objective defaults to "rtd" when a generator is found (``generator/`` or
    microsoft's ``pytorch_model.generator.bin``), else "mlm"; ``emd`` defaults to whether the
    (generator's) file holds an EMD position table, so that pretraining continues with it;
    ``emd=False`` builds the model as HF runs the directory (``DebertaV2ForMaskedLM`` has no
    EMD) and ignores that table silently. ``overrides`` replace ``Config`` fields
    (unknown names raise ``TypeError``). Encoder weights must all be present and known
    (``ValueError`` naming them); heads absent from the files (public v3 checkpoints ship
    none) are freshly initialised, with a warning; heads the objective does not use are
    dropped, with a warning. RTD: ``embedding_sharing`` defaults to the mode the export
    recorded ("gdes" when none is); GDES without a stored delta takes delta = discriminator
    embedding - generator embedding; NES keeps the discriminator's embedding as its own; ES
    uses the generator's (with a warning when the discriminator's differs).
    """
    hf_dir = Path(hf_dir)
    cfg, state = load_hf_dir(hf_dir)
    kwargs = config_from_hf(cfg, hf_dir)
    state = normalise_keys(state, hf_dir)
    sharing = "gdes"  # microsoft's v3 checkpoints, and exports from before the other modes
    if (hf_dir / RTD_STATE_FILE).is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file

        extra = load_file(str(hf_dir / RTD_STATE_FILE))
        state.update(normalise_keys(extra, hf_dir / RTD_STATE_FILE))
        with safe_open(str(hf_dir / RTD_STATE_FILE), "pt") as f:
            sharing = (f.metadata() or {}).get(SHARING, sharing)
    sharing = overrides.get(SHARING, sharing)
    gen = _find_generator(hf_dir)
    if overrides.get("emd") is False:  # chosen: no EMD, so its table is not "dropped"
        state.pop(EMD_POSITIONS, None)
        if gen is not None:
            gen[1].pop(EMD_POSITIONS, None)
    objective = overrides.get("objective", "rtd" if gen is not None else "mlm")
    if objective == "rtd":
        if gen is None:
            raise ValueError(
                f"{hf_dir}: objective 'rtd' needs a generator (generator/ or "
                "pytorch_model.generator.bin); use objective='mlm' for MLM"
            )
        gen_kwargs, gen_state = gen
        same = ("vocab_size", "position_buckets", "max_relative_positions")
        for k in same + (() if sharing == "nes" else ("hidden_size",)):  # NES: any width
            if k in gen_kwargs and gen_kwargs[k] != kwargs.get(k):
                raise ValueError(
                    f"{hf_dir}: generator {k}={gen_kwargs[k]} differs from the "
                    f"discriminator's {kwargs.get(k)}"
                )
        kwargs.update(
            embedding_sharing=sharing,
            generator_hidden_size=gen_kwargs.get("hidden_size", kwargs["hidden_size"]),
            generator_num_hidden_layers=gen_kwargs["num_hidden_layers"],
            generator_num_attention_heads=gen_kwargs.get(
                "num_attention_heads", kwargs["num_attention_heads"]
            ),
            generator_intermediate_size=gen_kwargs["intermediate_size"],
        )
    kwargs["emd"] = EMD_POSITIONS in (state if objective == "mlm" else gen[1])
    model = Model(Config(**{**kwargs, "objective": objective, **overrides}))
    if objective == "mlm":
        target = dict(state)
    else:
        target = _rtd_state(state, gen[1], hf_dir, sharing)
    _load(model, target, hf_dir)
    return model


def _rtd_state(disc: dict, gen: dict, where, sharing: str) -> dict:
    """Discriminator + generator files -> our RTD state for ``sharing`` (the discriminator's
    embedding as NES's own table, dropped for ES, GDES's delta unless stored exactly)."""
    if WORDS not in disc or WORDS not in gen:
        raise ValueError(f"{where}: missing weights: {WORDS} (discriminator or generator)")
    out = {f"generator.{k}": v for k, v in gen.items()}
    out.update(disc)
    # microsoft's discriminators carry a position table their RTD model never reads.
    out.pop(EMD_POSITIONS, None)
    words, stored = out.pop(WORDS), out.pop(DELTA, None)
    if sharing == "nes":  # a GDES delta is already folded into ``words``
        return {**out, WORDS: words}
    if words.shape != gen[WORDS].shape:
        raise ValueError(
            f"{where}: discriminator and generator embeddings differ in shape "
            f"({tuple(words.shape)} vs {tuple(gen[WORDS].shape)}); "
            f"{sharing.upper()} needs equal"
        )
    if sharing == "es":
        if not torch.equal(words, gen[WORDS].to(words.dtype)):
            warnings.warn(
                f"{where}: the discriminator's token embedding differs from the generator's; "
                "embedding_sharing='es' uses the generator's",
                stacklevel=3,
            )
        return out
    if stored is not None and torch.equal(gen[WORDS] + stored.to(gen[WORDS].dtype), words):
        out[DELTA] = stored  # the trained delta, bit for bit
        return out
    if stored is not None:
        warnings.warn(
            f"{where}: {DELTA} does not reproduce the discriminator embedding "
            "(edited files?); using their difference instead",
            stacklevel=3,
        )
    out[DELTA] = words.float() - gen[WORDS].float()
    return out


def _load(model: Model, target: dict[str, torch.Tensor], where) -> None:
    expected = model.state_dict()
    fresh_ok = (f"{p}{h}" for p in ("", "generator.") for h in _HEADS)
    optional = tuple(fresh_ok) + (EMD_POSITIONS, "generator." + EMD_POSITIONS, DELTA)
    dropped = sorted(k for k in target if k not in expected and k.startswith(optional))
    unknown = sorted(k for k in target if k not in expected and k not in dropped)
    missing = sorted(k for k in expected if k not in target)
    fresh = [k for k in missing if k.startswith(optional)]
    hard = [k for k in missing if k not in fresh]
    for what, keys in (("unknown weights", unknown), ("missing weights", hard)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            names = ", ".join(keys[:5])
            raise ValueError(f"{where}: {what} for this DeBERTa config: {names}{more}")
    for k in target:
        if k in expected and target[k].shape != expected[k].shape:
            raise ValueError(
                f"{where}: {k} has shape {tuple(target[k].shape)}, the config "
                f"expects {tuple(expected[k].shape)}"
            )
    if fresh:
        warnings.warn(
            f"{where}: not in the checkpoint, initialised fresh: {_summary(fresh)}", stacklevel=3
        )
    if dropped:
        warnings.warn(
            f"{where}: not used by this objective, ignored: {_summary(dropped)}", stacklevel=3
        )
    model.load_state_dict({k: v for k, v in target.items() if k in expected}, strict=False)


def _summary(keys: list[str]) -> str:
    """Modules of weight names (``lm_predictions.lm_head.dense.weight`` -> ``lm_predictions``)."""
    roots = set()
    for k in keys:
        parts = k.split(".")
        n = 2 if parts[0] == "generator" else 1
        roots.add(k.rsplit(".", 1)[0] if "position_embeddings" in k else ".".join(parts[:n]))
    return ", ".join(sorted(roots))
