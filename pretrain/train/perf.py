"""Performance knobs that change how a model runs, never what it computes.

``PerfConfig`` (the run config's ``[perf]`` table) and ``apply_perf(model, perf, masking,
seq_len)``, called once on the freshly built model before DeepSpeed wraps it:

- ``predict_capacity="auto"``: the MLM head decodes a fixed number K of positions per row
  (``pretrain.models.common.gather_predicted_fixed``) instead of exactly the labelled ones
  (``nonzero``, which waits for the device and changes shapes every batch). "auto" uses
  the bound the masking guarantees: token masking (``kind="mlm"``) selects
  ``floor(mask_prob * maskable + u) <= floor(mask_prob * seq_len) + 1`` tokens per row
  (``data_pipeline.masking``), so K = that bound and nothing can be dropped. Whole-word and
  span masking have no such bound (the word crossing the budget may be long), so "auto"
  keeps the exact path for them. The sums are the same terms; only summation order and,
  for RTD, the random numbers drawn for the replacements differ from the exact path.
- ``compile``: ``torch.compile`` of each transformer block, embedding and head module, in
  place (``nn.Module.compile``, so parameter names and checkpoints are unchanged).
  Compiling blocks ("regional compilation") rather than the whole model keeps the
  data-dependent parts (gathers, sampling) eager and compiles one graph that every layer
  reuses: a fraction of the whole-model compile time, and no graph breaks to chase.
"""

from __future__ import annotations

import importlib.util
import math
import shutil

import torch
from torch import nn

from pretrain.config import PerfConfig
from pretrain.models import deberta_layers, electra, layers, roberta

__all__ = [
    "PerfConfig",
    "apply_perf",
    "compile_modules",
    "maybe_compile",
    "predict_capacity",
    "set_predict_capacity",
]


def predict_capacity(masking, seq_len: int) -> int | None:
    """Labels per row a ``data_pipeline.masking.MaskingConfig`` can produce at most, or None
    when the masking guarantees no fixed bound (whole-word and span masking)."""
    if masking.kind != "mlm":
        return None
    # floor(p * n + u) with u < 1 and n <= seq_len maskable tokens (see the module docstring).
    return min(seq_len, math.floor(masking.mask_prob * seq_len) + 1)


def set_predict_capacity(model: nn.Module, capacity: int | None) -> None:
    """Switch ``model``'s MLM head to fixed capacity ``capacity`` (None: the exact path)."""
    if not hasattr(type(model), "predict_capacity"):
        raise ValueError(f"{type(model).__qualname__} has no predict_capacity setting")
    if capacity is not None and capacity < 1:
        raise ValueError(f"predict_capacity must be >= 1, got {capacity}")
    model.predict_capacity = capacity


def _compile_targets() -> tuple[type, ...]:
    """Module classes compiled by ``compile_modules``: blocks, embeddings and heads."""

    return (
        layers.Layer,
        layers.Embeddings,
        roberta.RobertaLMHead,
        electra.GeneratorPredictions,
        electra.DiscriminatorPredictions,
        deberta_layers.Layer,
        deberta_layers.LMHead,
        deberta_layers.RTDHead,
    )


def compile_modules(model: nn.Module, mode: str = "default") -> int:
    """``torch.compile`` every block/embedding/head module of ``model`` in place; returns
    how many. Compilation itself happens lazily, on each module's first call."""
    targets = _compile_targets()
    n = 0
    for module in model.modules():
        if isinstance(module, targets) and getattr(module, "_compiled_call_impl", None) is None:
            module.compile(mode=None if mode == "default" else mode)
            n += 1
    return n


def maybe_compile(model: nn.Module, enabled: bool, mode: str = "default") -> nn.Module:
    """``model`` with its blocks compiled when ``enabled`` (see ``compile_modules``)."""
    if enabled:
        compile_modules(model, mode)
    return model


def apply_perf(model: nn.Module, perf: PerfConfig, masking, seq_len: int) -> dict:
    """Apply ``perf`` to a freshly built model; returns what was done (for the run's log)."""
    capacity = None
    if perf.predict_capacity == "auto" and hasattr(type(model), "predict_capacity"):
        capacity = predict_capacity(masking, seq_len)
    if hasattr(type(model), "predict_capacity"):
        set_predict_capacity(model, capacity)
    compiled = compile_modules(model, perf.compile_mode) if perf.compile else 0
    return {"predict_capacity": capacity, "compiled_modules": compiled}


def compile_available() -> tuple[bool, str]:
    """(whether torch.compile can run here, why not): inductor needs Triton on CUDA and a
    C++ compiler on CPU."""

    if torch.cuda.is_available():
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
        return True, ""
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return False, "no C++ compiler for inductor's CPU backend"
    return True, ""
