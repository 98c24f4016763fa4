"""A model as a Hugging Face ``transformers`` directory (``export_model``; the command is
``python -m pretrain export``, ``pretrain.commands.export``).

The directory holds ``config.json`` + ``model.safetensors`` (RTD models: the discriminator,
with the generator in ``generator/``) and a copy of every tokenizer file, so the standard
classes load it with no code of ours: ``AutoModelForMaskedLM`` (RoBERTa, DeBERTa MLM),
``ElectraForPreTraining`` / ``ElectraForMaskedLM`` (``generator/``), ``AutoTokenizer``.
After writing, the directory is imported back and its tensors compared with the model's.

``load_model_dir`` (shared with ``fill-mask``) opens a run directory through
``pretrain.checkpoint.load_run_model`` or an HF directory through the architecture's
``import_hf``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from data_pipeline.common import CommandError
from data_pipeline.tokenizer import Tokenizer
from pretrain.checkpoint import load_run_model
from pretrain.models import ARCHITECTURES, hf_module

# HF ``model_type`` -> our architecture name.
MODEL_TYPES = {
    "bert": "bert",
    "albert": "albert",
    "roberta": "roberta",
    "electra": "electra",
    "deberta-v2": "deberta",
}
# Files of a model directory that are model, not tokenizer: never copied as tokenizer files.
_MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
}


def arch_of(model: nn.Module) -> str:
    """Our architecture name of a model instance (from the module defining its class)."""
    by_module = {module: arch for arch, module in ARCHITECTURES.items()}
    module = type(model).__module__
    if module not in by_module:
        raise ValueError(f"{type(model).__qualname__} is not a model of {sorted(ARCHITECTURES)}")
    return by_module[module]


def hf_arch(hf_dir: str | os.PathLike) -> str:
    """Architecture of an HF model directory, from its ``config.json`` ``model_type``."""
    cfg_path = Path(hf_dir) / "config.json"
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise CommandError(f"{cfg_path}: unreadable ({e})") from e
    if model_type not in MODEL_TYPES:
        raise CommandError(
            f"{hf_dir}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return MODEL_TYPES[model_type]


def is_run_dir(path: Path) -> bool:
    return (path / "config.toml").is_file() or (path / "checkpoints").is_dir()


# ``import_hf`` overrides that build an HF directory as ``transformers`` runs it. DeBERTa's
# enhanced mask decoder is a pretraining decoder that HF's DebertaV2ForMaskedLM does not have:
# an export keeps the EMD position table only so that ``init_from`` can continue pretraining.
AS_HF_RUNS_IT = {"deberta": {"emd": False}}


def load_model_dir(path: str | os.PathLike, as_hf: bool = False) -> tuple[nn.Module, Path]:
    """(model, tokenizer directory) of a run directory or an HF model directory.

    ``as_hf`` (inference: fill-mask): an HF directory computes what ``transformers`` computes
    on it (``AS_HF_RUNS_IT``: no DeBERTa EMD); otherwise it is imported as for continued
    pretraining (EMD kept), which a re-export writes back unchanged. A run directory's model
    is always the one trained, EMD included.
    """
    p = Path(path)
    if not p.is_dir():
        raise CommandError(f"{path}: not a directory")
    if (p / "config.json").is_file():
        arch = hf_arch(p)
        overrides = AS_HF_RUNS_IT.get(arch, {}) if as_hf else {}
        try:
            return hf_module(arch).import_hf(p, **overrides), p
        except ValueError as e:
            raise CommandError(str(e)) from e
    if is_run_dir(p):
        model, tokenizer_dir = load_run_model(p)
        return model, Path(tokenizer_dir)
    raise CommandError(
        f"{path}: neither a run directory (config.toml, checkpoints/) nor a "
        "Hugging Face model directory (config.json)"
    )


def tokenizer_files(tokenizer_dir: str | os.PathLike) -> list[Path]:
    """Every regular file of ``tokenizer_dir`` except model config and weights."""
    d = Path(tokenizer_dir)
    if not d.is_dir():
        raise ValueError(f"{tokenizer_dir}: tokenizer directory does not exist")
    files = sorted(
        f
        for f in d.iterdir()
        if f.is_file()
        and f.name not in _MODEL_FILES
        and not f.name.endswith((".safetensors", ".bin"))
    )
    if not any(f.name in ("tokenizer.json", "tokenizer_config.json") for f in files):
        raise ValueError(
            f"{tokenizer_dir}: no tokenizer.json or tokenizer_config.json; "
            "not a tokenizer directory"
        )
    return files


def export_model(
    model: nn.Module, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """Write ``model`` and the tokenizer files as an HF directory; returns ``out_dir``.

    Existing files of the same names in ``out_dir`` are overwritten. The tokenizer files
    go next to each network's weights (also ``generator/`` for RTD models), so each loads
    with ``pipeline(..., model=dir, tokenizer=dir)``.
    """
    out = Path(out_dir)
    if out.exists() and out.resolve() == Path(tokenizer_dir).resolve():
        raise ValueError(f"{out_dir}: the output directory must differ from the source")
    files = tokenizer_files(tokenizer_dir)
    special = _tokenizer_ids(model, tokenizer_dir)
    module = hf_module(arch_of(model))
    module.export_hf(model, out)
    targets = [out] + ([out / "generator"] if (out / "generator" / "config.json").is_file() else [])
    for target in targets:
        for f in files:
            shutil.copyfile(f, target / f.name)
        cfg = json.loads((target / "config.json").read_text())
        cfg.update(special)  # HF reads bos/eos from the model config, not the tokenizer
        (target / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    _verify(model, module, out)
    return out


def _tokenizer_ids(model: nn.Module, tokenizer_dir) -> dict[str, int]:
    """bos/eos ids for config.json; refuses a tokenizer whose ids the model cannot embed."""
    tok = Tokenizer.load(tokenizer_dir)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{tokenizer_dir}: tokenizer has {tok.vocab_size} ids but the model "
            f"embeds {model.config.vocab_size}; not this model's tokenizer"
        )
    if tok.pad_id != model.config.pad_token_id:
        warnings.warn(
            f"{tokenizer_dir}: tokenizer pad id {tok.pad_id} differs from the model's "
            f"pad_token_id {model.config.pad_token_id}",
            stacklevel=3,
        )
    return {"bos_token_id": int(tok.cls_id), "eos_token_id": int(tok.sep_id)}


def _verify(model: nn.Module, module, out: Path) -> None:
    """Import the written directory and require every tensor to equal the model's (but the
    pretraining-only SBO head, which exports drop)."""
    reloaded = module.import_hf(out).state_dict()
    mine = {k: v for k, v in model.state_dict().items() if not k.startswith("sbo.")}
    differ = [
        k
        for k, v in mine.items()
        if k not in reloaded or not torch.equal(v.detach().cpu().float(), reloaded[k].float())
    ]
    if differ:
        raise RuntimeError(
            f"{out}: exported weights do not reload identically: {', '.join(differ)}"
        )
