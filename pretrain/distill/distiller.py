"""``Distiller``: the module DeepSpeed trains when distilling, and what a run decides once.

The ``Distiller`` holds the student (``student.*``) and, when the widths differ, TinyBERT's
learned projections W_e / W_h (``proj.embedding``, ``proj.hidden``): these are its
parameters, in the optimizer, in checkpoints. The teacher is held outside the module tree:
no parameters of the engine, no state dict entries, no optimizer state, no gradients, and
``train()`` never reaches it (it stays in eval mode). Its forward sees exactly the
student's batch (same ids, masks, labels, segments) under ``torch.no_grad``.

``Plan`` is everything fixed at the start of a run (weights, temperature, layer map,
widths, the teacher's identity); it is saved in ``model.json`` so that a checkpoint can be
rebuilt (``shell``) and a resume can check it continues with the same teacher.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pretrain.distill.losses import attention_sum, cosine_sum, mse_sum, soft_ce_sum, visible_pairs
from pretrain.models import PAIR_ARCHITECTURES
from pretrain.models.common import init_weights
from pretrain.models.taps import Taps

DISTILLABLE = ("bert", "roberta", "deberta")  # MLM encoders that record Taps
_LAYER = re.compile(r"((?:^|\.)layer\.)(\d+)(\.)")


@dataclass
class Plan:
    weights: dict[str, float]
    """Weight of each term (``pretrain.config.distill.TERMS``)."""
    temperature: float
    """Temperature of the soft targets."""
    layer_map: list[int]
    """Teacher block (1-based) aligned with each student block."""
    student_hidden: int
    """The student's width."""
    teacher_hidden: int
    """The teacher's width (W_e / W_h map the student's onto it)."""
    teacher: str = ""
    """Where the teacher was loaded from."""
    teacher_arch: str = ""
    """The teacher's architecture."""
    teacher_fingerprint: str = ""
    """sha256 of the teacher's architecture, config and weights (resume checks it)."""

    @property
    def projections(self) -> bool:
        """Whether W_e / W_h exist: the widths differ and a hidden-state term is on."""
        hidden_terms = any(self.weights[t] for t in ("cos", "embedding", "hidden"))
        return hidden_terms and self.student_hidden != self.teacher_hidden

    @property
    def scores(self) -> bool:
        """Whether the attention-score term is on (the explicit attention path)."""
        return bool(self.weights["attention"])

    def to_dict(self) -> dict:
        return asdict(self)


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """TinyBERT's uniform map: student block m -> teacher block floor(m * N / M), 1-based
    (4 from 12: 3, 6, 9, 12; the last block always maps to the last)."""
    return [m * n_teacher // n_student for m in range(1, n_student + 1)]


def every_other_layer(n_student: int, n_teacher: int) -> list[int]:
    """0-based teacher blocks a student of M blocks starts from: evenly spaced from the first
    to the last (12 -> 6: 0, 2, 4, 7, 9, 11, DistilBERT's extract_distilbert.py; M = 1: 0)."""
    if n_student == 1:
        return [0]
    step = (n_teacher - 1) / (n_student - 1)
    return [math.floor(i * step + 0.5) for i in range(n_student)]


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> list[int]:
    """Copy the teacher's embeddings, heads and every other block into ``student`` (same
    architecture and sizes but depth); returns the teacher blocks copied (0-based)."""
    a, b = asdict(student.config), asdict(teacher.config)
    # Not sizes: depth, initialisation, dropout rates; nor an MLM model's unused generator
    # fields (DeBERTa derives their defaults from its depth).
    free = {"num_hidden_layers", "initializer_range", "rtd_weight"}
    differ = sorted(
        k
        for k in a
        if k not in free
        and not k.endswith("_prob")
        and not k.startswith("generator_")
        and a[k] != b.get(k)
    )
    if type(student) is not type(teacher) or differ:
        what = ", ".join(f"{k} {a[k]} vs {b.get(k)}" for k in differ) or "another architecture"
        raise ValueError(
            "distill.student_init = every_other_layer needs a student of the teacher's "
            f'architecture and sizes but depth ({what}); use student_init = "random"'
        )
    blocks = every_other_layer(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    source = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        src = _LAYER.sub(lambda m: f"{m.group(1)}{blocks[int(m.group(2))]}{m.group(3)}", name)
        tensor.copy_(source[src])
    return blocks


class Distiller(nn.Module):
    """Student + projections; ``attach_teacher`` before the first forward."""

    def __init__(self, student: nn.Module, plan: Plan):
        super().__init__()
        self.student = student
        self.plan = plan
        self.proj = nn.ModuleDict()
        if plan.projections:  # TinyBERT's W_e and W_h (BERT initialisation)
            for name in ("embedding", "hidden"):
                self.proj[name] = nn.Linear(plan.student_hidden, plan.teacher_hidden)
            self.proj.apply(lambda m: init_weights(m, student.config.initializer_range))
        self._teacher: tuple[nn.Module, ...] = ()  # a tuple: not registered as a submodule

    @property
    def config(self):
        """The student's config (what the run trains and exports)."""
        return self.student.config

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            raise RuntimeError("Distiller: attach_teacher() first")
        return self._teacher[0]

    def attach_teacher(self, teacher: nn.Module, device, dtype: torch.dtype) -> None:
        """Hold ``teacher`` frozen, in eval mode, on ``device`` in the training ``dtype``,
        decoding the same rows as the student (its MLM head's capacity)."""
        teacher = teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)
        teacher.predict_capacity = getattr(self.student, "predict_capacity", None)
        self._teacher = (teacher,)

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        segment_ids=None,
        token_type_ids=None,
        sentence_labels=None,
        span_left=None,
        span_right=None,
    ) -> dict[str, torch.Tensor]:
        """The student's sums and counts plus ``kd_<term>_sum`` for each enabled term,
        ``kd_tokens`` (real tokens) and ``kd_attention_count`` (visible query-key pairs)."""
        plan = self.plan
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        t = Taps(scores=plan.scores)
        teacher_types = types if plan.teacher_arch in PAIR_ARCHITECTURES else {}
        with torch.no_grad():
            self.teacher(input_ids, attention_mask, labels, segment_ids, taps=t, **teacher_types)
        s = Taps(scores=plan.scores)
        if sentence_labels is not None:
            types["sentence_labels"] = sentence_labels
        if span_left is not None:  # a student with SpanBERT's SBO head
            types.update(span_left=span_left, span_right=span_right)
        out = self.student(input_ids, attention_mask, labels, segment_ids, taps=s, **types)
        return {**out, **self._terms(s, t, attention_mask, segment_ids)}

    def _project(self, index: int, h: torch.Tensor) -> torch.Tensor:
        if not self.plan.projections:
            return h
        return self.proj["embedding" if index == 0 else "hidden"](h)

    def _terms(self, s: Taps, t: Taps, attention_mask, segment_ids) -> dict[str, torch.Tensor]:
        w, real = self.plan.weights, attention_mask.bool()
        pairs = list(enumerate(self.plan.layer_map, start=1))  # (student block, teacher block)
        out = {"kd_tokens": real.sum()}
        if w["ce"]:
            out["kd_ce_sum"] = soft_ce_sum(s.logits, t.logits, s.targets, self.plan.temperature)
        if w["cos"]:
            last = len(s.hidden) - 1
            out["kd_cos_sum"] = cosine_sum(self._project(last, s.hidden[last]), t.hidden[-1], real)
        if w["embedding"]:
            out["kd_embedding_sum"] = mse_sum(self._project(0, s.hidden[0]), t.hidden[0], real)
        if w["hidden"]:
            out["kd_hidden_sum"] = sum(
                mse_sum(self._project(m, s.hidden[m]), t.hidden[n], real) for m, n in pairs
            )
        if w["attention"]:
            visible = visible_pairs(attention_mask, segment_ids)
            out["kd_attention_sum"] = sum(
                attention_sum(s.attention[m - 1], t.attention[n - 1], visible) for m, n in pairs
            )
            out["kd_attention_count"] = visible.sum()
        return out


def shell(student: nn.Module, plan_dict: dict) -> Distiller:
    """A ``Distiller`` of the saved plan without a teacher: the module a distillation
    checkpoint was written from (to read its weights)."""
    return Distiller(student, Plan(**plan_dict))
