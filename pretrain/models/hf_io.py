"""Hugging Face model directories: ``config.json`` + weights written and read (never
executing pickled code), and loading converted weights into a model exactly."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data_pipeline.common import load_torch_file


def save_hf_dir(
    out_dir: str | os.PathLike, hf_config: dict, state_dict: dict[str, torch.Tensor]
) -> None:
    """Write ``config.json`` and ``model.safetensors`` (tensors made contiguous and unshared)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")


def load_hf_dir(hf_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict) of a local HF model directory, never executing pickled code.

    Prefers ``model.safetensors``; falls back to ``pytorch_model.bin`` through
    ``load_torch_file`` (``torch.load(weights_only=True)``), which refuses anything but
    tensors and containers with a one-line ``UnsafeFileError``.
    """
    d = Path(hf_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    config = json.loads(cfg_path.read_text())
    if (d / "model.safetensors").is_file():
        return config, load_file(str(d / "model.safetensors"))
    if (d / "pytorch_model.bin").is_file():
        state = load_torch_file(d / "pytorch_model.bin")
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"{d / 'pytorch_model.bin'}: not a state dict of tensors")
        return config, state
    raise ValueError(f"{hf_dir}: no model.safetensors or pytorch_model.bin")


def load_converted_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    allow_missing: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``model`` exactly: every model key present (except names starting
    with one of ``allow_missing``, which keep their fresh initialisation), no unknown key, equal
    shapes. Errors list the offending keys in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allow_missing)]
    unknown = [k for k in state if k not in own]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown keys: {', '.join(unknown)}")
        raise ValueError(f"{source}: checkpoint does not match the model; {'; '.join(parts)}")
    bad = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"{source}: shape mismatch: {'; '.join(bad)}")
    model.load_state_dict(state, strict=False)


def normalise_keys(
    state: dict[str, torch.Tensor],
    prefix: str,
    tied: tuple[tuple[str, str], ...],
    source,
    drop: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Map the key variants HF has written over the years onto a ``*ForPreTraining`` /
    ``*ForMaskedLM`` state dict whose encoder lives under ``prefix`` (e.g. ``"bert."``):

    - a bare encoder's keys (``embeddings.``, ``encoder.``, ``pooler.``) get the prefix;
    - position-id / token-type-id buffers and keys starting with ``drop`` are removed;
    - LayerNorm ``gamma`` / ``beta`` (files converted from the TF checkpoints, which
      transformers renames on load too) become ``weight`` / ``bias``;
    - ``tied``: (key, twin) pairs of tied copies older files store (the decoder): accepted
      only if equal to their twin, then dropped; otherwise a one-line ``ValueError``.
    """
    out = {}
    for key, value in state.items():
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = prefix + key
        if key.endswith((".position_ids", ".token_type_ids")) or key.startswith(drop):
            continue
        if key.endswith(".gamma"):
            key = key.removesuffix("gamma") + "weight"
        elif key.endswith(".beta"):
            key = key.removesuffix("beta") + "bias"
        out[key] = value
    for key, twin in tied:
        if key in out:
            copy = out.pop(key)
            if twin in out and not torch.equal(copy, out[twin]):
                raise ValueError(
                    f"{source}: {key} differs from {twin}; untied heads are not supported"
                )
    return out


def load_with_optional_heads(
    model: nn.Module, state: dict[str, torch.Tensor], source, optional: dict[str, str]
) -> None:
    """``load_converted_state``, where the parts under each prefix of ``optional`` (prefix ->
    what it is, e.g. ``{"bert.pooler.": "pooler"}``) may be absent from ``state`` (a bare
    encoder, a *ForMaskedLM file): those keep their fresh initialisation, with one warning."""
    fresh = tuple(p for p in optional if not any(k.startswith(p) for k in state))
    load_converted_state(model, state, str(source), allow_missing=fresh)
    if fresh:
        warnings.warn(
            f"{source}: no {' and no '.join(optional[p] for p in fresh)} in the checkpoint; "
            f"{', '.join(p.rstrip('.') for p in fresh)} initialised fresh",
            stacklevel=3,
        )
