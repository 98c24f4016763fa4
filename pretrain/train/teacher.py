"""The teacher of a distillation run (``pretrain.distill``): loaded from a run directory or
an HF directory, identified (``fingerprint``), checked against the student and the shards'
tokenizer, and turned into the run's ``Plan`` and ``Distiller`` (``build``).

Everything here reads and raises one-line errors (``CommandError``), so the session runs
it on every rank before any collective (the same error everywhere, printed once).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_pipeline.common import CommandError
from data_pipeline.tokenizer import Tokenizer
from pretrain.config import RunConfig
from pretrain.distill.distiller import (
    DISTILLABLE,
    Distiller,
    Plan,
    init_from_teacher,
    uniform_layer_map,
)
from pretrain.export import arch_of, load_model_dir

# Compared when two tokenizer directories differ in fingerprint (e.g. an HF export's
# tokenizer.json beside our own files): the same ids for this text, and the same size.
_PROBE = (
    "The quick brown fox jumps over the lazy dog. Distillation, 1958; naïve café, Zürich!\n"
    "蒸馏模型很小。 Ωμέγα — ¿qué? 12345 (x+y)**2 https://example.org/a_b"
)


def fingerprint(arch: str, model: nn.Module) -> str:
    """sha256 of the architecture, the exact config and every tensor (names, dtypes, values)."""
    h = hashlib.sha256(json.dumps({"arch": arch, "config": asdict(model.config)}).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_teacher(path: str) -> tuple[nn.Module, str, Path]:
    """(teacher model in eval mode, its architecture, its tokenizer directory)."""
    if not Path(path).is_dir():
        raise CommandError(f"distill.teacher: {path}: not a directory")
    model, tokenizer_dir = load_model_dir(path)
    arch = arch_of(model)
    if arch not in DISTILLABLE or getattr(model.config, "objective", "mlm") != "mlm":
        raise CommandError(
            f"distill.teacher: {path} is a {arch} model trained by replaced-token detection "
            f"or without an MLM head; teachers and students are MLM models "
            f"({', '.join(DISTILLABLE)})"
        )
    return model.eval().requires_grad_(False), arch, Path(tokenizer_dir)


def check_teacher_tokenizer(teacher_tokenizer: Path, shards_tokenizer: dict, shard_dir) -> None:
    """Refuse a teacher whose tokenizer gives other ids than the shards'."""
    mine = Path(shard_dir) / "tokenizer"
    try:
        theirs = Tokenizer.load(teacher_tokenizer)
    except (OSError, ValueError, CommandError):
        return  # no tokenizer files beside the teacher: the vocabulary checks must do
    if theirs.fingerprint == shards_tokenizer.get("fingerprint"):
        return
    ours = Tokenizer.load(mine)
    same = theirs.vocab_size == ours.vocab_size and np.array_equal(
        theirs.encode(_PROBE), ours.encode(_PROBE)
    )
    if not same:
        raise CommandError(
            f"distill.teacher: its tokenizer ({teacher_tokenizer}) gives other ids than the "
            f"shards' ({mine}); the teacher's targets would name other tokens"
        )


def build(cfg: RunConfig, student: nn.Module, tokenizer_info: dict) -> tuple[Distiller, nn.Module]:
    """(the ``Distiller`` around ``student``, the teacher): loads and checks the teacher,
    resolves the plan and initialises the student as ``distill.student_init`` says."""
    d = cfg.distill
    teacher, t_arch, t_tokenizer = load_teacher(d.teacher)
    s_arch, s, t = cfg.model.arch, student.config, teacher.config
    where = f"distill.teacher {d.teacher}"
    if s_arch not in DISTILLABLE or getattr(s, "objective", "mlm") != "mlm":
        raise CommandError(
            f"distill: the student must be an MLM model ({', '.join(DISTILLABLE)}), "
            f"not model.arch = {s_arch!r} with objective {getattr(s, 'objective', 'mlm')!r}"
        )
    if (t.vocab_size, t.pad_token_id) != (s.vocab_size, s.pad_token_id):
        raise CommandError(
            f"{where}: vocabulary {t.vocab_size} (pad {t.pad_token_id}), but the student's is "
            f"{s.vocab_size} (pad {s.pad_token_id}); teacher and student need one tokenizer"
        )
    check_teacher_tokenizer(t_tokenizer, tokenizer_info, cfg.data.shard_dir)
    if cfg.data.seq_len > getattr(t, "max_position_embeddings", cfg.data.seq_len):
        raise CommandError(
            f"{where}: max_position_embeddings {t.max_position_embeddings} < data.seq_len "
            f"{cfg.data.seq_len}"
        )
    weights = d.weights()
    layer_map = list(d.layer_map) or uniform_layer_map(s.num_hidden_layers, t.num_hidden_layers)
    if len(layer_map) != s.num_hidden_layers or max(layer_map) > t.num_hidden_layers:
        raise CommandError(
            f"distill.layer_map {layer_map}: one teacher block (1..{t.num_hidden_layers}) "
            f"per student block ({s.num_hidden_layers})"
        )
    if weights["attention"] and s.num_attention_heads != t.num_attention_heads:
        raise CommandError(
            f"distill.attention_weight: the student has {s.num_attention_heads} heads, the "
            f"teacher {t.num_attention_heads}; attention scores compare head by head"
        )
    hidden_terms = [k for k in ("cos", "embedding", "hidden", "attention") if weights[k]]
    if hidden_terms and (getattr(s, "emd", False) or getattr(t, "emd", False)):
        raise CommandError(
            f"distill: {', '.join(hidden_terms)} terms need DeBERTa without the enhanced mask "
            "decoder (model.overrides.emd = false for the student; a teacher without EMD)"
        )
    plan = Plan(
        weights=weights,
        temperature=d.resolved_temperature(),
        layer_map=layer_map,
        student_hidden=s.hidden_size,
        teacher_hidden=t.hidden_size,
        teacher=str(d.teacher),
        teacher_arch=t_arch,
        teacher_fingerprint=fingerprint(t_arch, teacher),
    )
    if d.resolved_student_init() == "every_other_layer":
        if cfg.init_from:
            raise CommandError(
                "distill.student_init = every_other_layer and init_from both initialise the "
                'student: set distill.student_init = "random" to keep init_from'
            )
        try:
            init_from_teacher(student, teacher)
        except ValueError as e:
            raise CommandError(str(e)) from e
    return Distiller(student, plan), teacher
