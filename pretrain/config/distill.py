"""The ``[distill]`` section: train a student from a frozen teacher (``pretrain.distill``).

A recipe gives every weight, the temperature and the student's initialisation; each may be
set explicitly instead (a field left unset takes the recipe's value):

- "distilbert" (Sanh et al., 2019): soft-target cross-entropy 5.0 at T = 2, hard MLM 2.0,
  cosine of the last hidden states 1.0; the student starts from every other teacher layer;
- "tinybert" (Jiao et al., 2020, general distillation): MSE on the embeddings, on the
  mapped hidden states and on the mapped attention scores, 1.0 each; no prediction-layer or
  MLM term; the student starts random (its width may differ: learned W_e / W_h project it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.config.toml_io import ConfigError, unknown_value_error

TERMS = ("ce", "mlm", "cos", "embedding", "hidden", "attention")
RECIPES: dict[str, dict] = {
    "distilbert": dict(
        temperature=2.0,
        weights=dict(ce=5.0, mlm=2.0, cos=1.0, embedding=0.0, hidden=0.0, attention=0.0),
        student_init="every_other_layer",
    ),
    "tinybert": dict(
        temperature=1.0,
        weights=dict(ce=0.0, mlm=0.0, cos=0.0, embedding=1.0, hidden=1.0, attention=1.0),
        student_init="random",
    ),
}
STUDENT_INITS = ("every_other_layer", "random")


@dataclass
class DistillConfig:
    teacher: str = ""
    """The teacher: a run directory of ours (its newest checkpoint, else RUN_DIR/hf) or an HF
    model directory (config.json). Empty: no distillation."""
    recipe: str = "distilbert"
    """"distilbert" or "tinybert": the defaults of every field below left unset."""
    temperature: float | None = None
    """Softmax temperature T of the soft targets (the term is multiplied by T**2)."""
    ce_weight: float | None = None
    """Soft-target cross-entropy (as KL divergence: zero when the student matches) at the
    masked positions, normalised by the global count of masked tokens."""
    mlm_weight: float | None = None
    """The hard MLM loss (the labels), normalised as usual."""
    cos_weight: float | None = None
    """DistilBERT's 1 - cosine between the student's and teacher's last hidden states, per
    real token, normalised by the global count of real tokens."""
    embedding_weight: float | None = None
    """TinyBERT's MSE between the embedding outputs (through W_e when the widths differ),
    mean over the width, per real token."""
    hidden_weight: float | None = None
    """TinyBERT's MSE between each student block's output and its mapped teacher block's
    (through W_h when the widths differ), summed over the mapped layers."""
    attention_weight: float | None = None
    """TinyBERT's MSE between the mapped blocks' attention scores (pre-softmax, mean over
    heads) at the query-key pairs that may attend, summed over the mapped layers; needs
    equal head counts and switches attention to its explicit path."""
    student_init: str | None = None
    """"every_other_layer": copy the teacher's embeddings, heads and evenly spaced layers
    (12 -> 6: 0, 2, 4, 7, 9, 11 as DistilBERT's script; needs the teacher's architecture and
    width); "random": the architecture's initialisation."""
    layer_map: list[int] = field(default_factory=list)
    """The teacher block (1-based) each student block is aligned with, one per student
    block; empty: TinyBERT's uniform map, student block m -> teacher block m * N / M."""

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise unknown_value_error("distill.recipe", self.recipe, RECIPES)
        if self.student_init is not None and self.student_init not in STUDENT_INITS:
            raise unknown_value_error("distill.student_init", self.student_init, STUDENT_INITS)
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")
        for term in TERMS:
            w = getattr(self, f"{term}_weight")
            if w is not None and w < 0:
                raise ConfigError(f"distill.{term}_weight must be >= 0, got {w}")
        if self.enabled and not any(self.weights().values()):
            raise ConfigError("distill: every term's weight is 0; nothing would be trained")
        if any(m < 1 for m in self.layer_map):
            raise ConfigError(
                f"distill.layer_map: teacher blocks are 1-based, got {self.layer_map}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.teacher)

    def weights(self) -> dict[str, float]:
        """Every term's weight: the explicit ones, else the recipe's."""
        recipe = RECIPES[self.recipe]["weights"]
        return {
            t: float(
                recipe[t] if getattr(self, f"{t}_weight") is None else getattr(self, f"{t}_weight")
            )
            for t in TERMS
        }

    def resolved_temperature(self) -> float:
        t = self.temperature
        return float(RECIPES[self.recipe]["temperature"] if t is None else t)

    def resolved_student_init(self) -> str:
        return self.student_init or RECIPES[self.recipe]["student_init"]
