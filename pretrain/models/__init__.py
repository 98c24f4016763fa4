"""Model registry: every architecture is ``<arch>.py`` (the model, reading top to bottom) and
``<arch>_hf.py`` (its Hugging Face conversion), with the same small interface; the registry
resolves both (``arch_module``, ``hf_module``). Shared pieces: ``base`` (the common Config
fields and the HF-config check), ``layers`` (BERT-style blocks), ``common`` (masks, sparse
loss sums, sampling, initialisation), ``hf_io`` (HF directories, weights-only).

Every architecture module (``bert``, ``albert``, ``roberta``, ``electra``, ``deberta``) defines:

``Config``
    a dataclass extending ``base.EncoderConfig`` (one docstring per field) with the
    architecture's own hyper-parameters, e.g. ``rtd_weight`` for RTD models.
``PRESETS: dict[str, dict]``
    preset name -> ``Config`` keyword arguments (e.g. ``"roberta-base"``). Names are
    unique across architectures; every module has a tiny ``<arch>-debug`` preset.
``Model(nn.Module)``
    the pretraining model, built as ``Model(config)``. Plain PyTorch, HF parameter names.

    ``forward(input_ids, attention_mask, labels, segment_ids=None) -> dict[str, Tensor]``
        ``input_ids``/``attention_mask``/``labels``: (B, L) int64, labels -100 where
        nothing is predicted; ``segment_ids``: (B, L) int, when given attention is
        restricted to equal non-zero segment ids (packed documents kept apart).
        Sentence-pair models (``PAIR_ARCHITECTURES``: BERT's NSP, ALBERT's SOP) also take
        ``token_type_ids`` (B, L) and ``sentence_labels`` (B,), -100 for rows without a pair.
        Returns *sums and counts, never means*, so that the objective can normalise
        by the global count of predicted tokens across micro-batches and ranks:

        - ``mlm_loss_sum`` (float), ``mlm_correct`` (int), ``mlm_count`` (int):
          cross-entropy summed over positions with ``labels != -100`` (for RTD
          models: the generator's MLM);
        - pair models, when ``sentence_labels`` is given: ``sentence_loss_sum``,
          ``sentence_correct``, ``sentence_count`` (rows with a label);
        - RTD models also: ``rtd_loss_sum`` (BCE summed over ``attention_mask == 1``
          positions), ``rtd_correct``, ``rtd_count``, ``replaced_count``, and for precision
          and recall on replaced tokens ``rtd_pred_pos`` (flagged as replaced) and
          ``rtd_true_pos`` (flagged and replaced).
    ``mlm_logits(input_ids, attention_mask, segment_ids=None) -> (B, L, V)``
        full-vocabulary logits (for fill-mask and parity tests; training never
        projects unmasked positions).
    ``config``: the ``Config`` it was built with.

``param_counts(model) -> {"embedding": int, "backbone": int, "total": int}``

Every conversion module (``<arch>_hf``) defines:

``export_hf(model, out_dir)``
    write ``config.json`` + ``model.safetensors`` loadable by the standard
    ``transformers`` classes (RTD models: discriminator in ``out_dir``, generator in
    ``out_dir/generator``). Tokenizer files are added by ``pretrain.export``.
``import_hf(hf_dir, **overrides) -> Model``
    initialise from a local HF directory (safetensors or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

ARCHITECTURES = {
    "bert": "pretrain.models.bert",
    "albert": "pretrain.models.albert",
    "roberta": "pretrain.models.roberta",
    "electra": "pretrain.models.electra",
    "deberta": "pretrain.models.deberta",
}


# Architectures with a sentence-pair head (their forward takes token_type_ids and
# sentence_labels; data.packing = "pairs" feeds them).
PAIR_ARCHITECTURES = ("bert", "albert")

# The special-token family of each architecture's published tokenizers (docs/models.md):
# RoBERTa <s> <pad> </s> <unk> <mask>; the others [CLS] [SEP] [PAD] [UNK] [MASK].
TOKENIZER_FAMILY = {
    "bert": "bert",
    "albert": "bert",
    "roberta": "roberta",
    "electra": "bert",
    "deberta": "bert",
}
# The tokenizer kind the papers used: WordPiece (BERT, ELECTRA), sentencepiece (ALBERT,
# DeBERTa-v3), GPT-2 byte-level BPE (RoBERTa); `train-tokenizer --family ARCH` trains it.
TOKENIZER_KIND = {
    "bert": "wordpiece",
    "albert": "spm",
    "roberta": "bytelevel",
    "electra": "wordpiece",
    "deberta": "spm",
}


def tokenizer_mismatch(arch: str, tokenizer_info: dict) -> tuple[str | None, str | None]:
    """(error, note) about the shards' tokenizer (``manifest.tokenizer``) for ``arch``.

    error: its special tokens are of another family than ``arch``'s (it would train, but the
    export and fill-mask then speak another token convention); note: another kind of
    vocabulary than the paper's (e.g. sentencepiece for BERT), which is a legitimate choice.
    """
    want, got = TOKENIZER_FAMILY.get(arch), tokenizer_info.get("family")
    fix = f"train one with `python -m data_pipeline train-tokenizer --family {arch}`"
    if want is not None and got is not None and got != want:
        return (
            f"model.arch = {arch} expects a {want}-family tokenizer "
            f"({_SPECIALS[want]}), but the shards' tokenizer is of the {got} family "
            f'({_SPECIALS.get(got, "?")}); {fix}, or set data.tokenizer_mismatch = "warn" '
            "to train anyway",
            None,
        )
    kind, usual = tokenizer_info.get("kind"), TOKENIZER_KIND.get(arch)
    if kind and usual and kind != "synthetic" and not kind.startswith(usual):
        return (
            None,
            f"note: {arch} is usually trained with a {usual} tokenizer, the shards' is {kind} ({fix})",
        )
    return None, None


_SPECIALS = {"roberta": "<s> </s> <pad> <unk> <mask>", "bert": "[CLS] [SEP] [PAD] [UNK] [MASK]"}


def arch_module(arch: str) -> ModuleType:
    """The module implementing ``arch`` (one of ``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    return importlib.import_module(ARCHITECTURES[arch])


def hf_module(arch: str) -> ModuleType:
    """The module converting ``arch`` to and from Hugging Face directories (``<arch>_hf``)."""
    return importlib.import_module(arch_module(arch).__name__ + "_hf")


def find_preset(name: str) -> tuple[str, dict]:
    """(architecture, Config kwargs) of a preset name such as ``roberta-base``."""
    for arch in ARCHITECTURES:
        presets = arch_module(arch).PRESETS
        if name in presets:
            return arch, dict(presets[name])
    known = sorted(p for a in ARCHITECTURES for p in arch_module(a).PRESETS)
    raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(known)}")


def build_model(arch: str, preset: str | None = None, **overrides):
    """Build ``arch``'s pretraining model from a preset plus keyword overrides (e.g. vocab_size)."""
    mod = arch_module(arch)
    kwargs = {}
    if preset is not None:
        preset_arch, kwargs = find_preset(preset)
        if preset_arch != arch:
            raise ValueError(f"preset {preset!r} belongs to {preset_arch!r}, not {arch!r}")
    kwargs.update(overrides)
    return mod.Model(mod.Config(**kwargs))
