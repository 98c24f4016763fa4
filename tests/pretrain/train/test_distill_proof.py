"""Distillation works: on the sample corpus, a 4-block teacher trained here teaches a 1-block
student better than the labels alone.

Three students of the same size train for the same steps: DistilBERT's recipe (every other
teacher block, then soft targets + hard MLM + cosine), the same initialisation with the hard
MLM loss only (the teacher then contributes nothing but the initial weights), and a randomly
initialised student on MLM. The distilled student must have the lowest validation MLM loss.
Measured here (torch 2.13 CPU, seed 0): distilled 6.376; same init, MLM only 6.536; random
init, MLM only 6.742; the teacher 6.358 (docs/distillation.md).
"""

import pytest

from pretrain.testing import debug_config, losses
from pretrain.train import train

pytestmark = pytest.mark.slow
FAST = [
    "eval.every_steps=0",
    "checkpoint.every_steps=0",
    "checkpoint.export_hf=false",
    "logging.every_steps=1000",
    "logging.progress=false",
]
TEACHER = ["max_steps=500", "optimizer.lr=2e-3", "model.overrides.num_hidden_layers=4"]
STUDENT = ["max_steps=200", "model.overrides.num_hidden_layers=1"]
WIDTH = ["model.overrides.intermediate_size=256"]


def _eval_mlm_loss(run_dir) -> float:
    return losses(run_dir, "eval_mlm_loss")[int(STUDENT[0].split("=")[1])]


def test_a_distilled_student_beats_the_same_student_trained_on_labels(corpus, tmp_path):
    teacher = tmp_path / "teacher"
    train(debug_config("roberta", corpus, teacher, *FAST, *TEACHER, *WIDTH))
    distil = [f"distill.teacher={teacher}", *FAST, *STUDENT, *WIDTH]
    train(debug_config("distilroberta", corpus, tmp_path / "distilled", *distil))
    labels_only = ["distill.ce_weight=0", "distill.cos_weight=0", "distill.mlm_weight=1"]
    train(debug_config("distilroberta", corpus, tmp_path / "same-init", *distil, *labels_only))
    train(debug_config("roberta", corpus, tmp_path / "random", *FAST, *STUDENT, *WIDTH))
    got = {run: _eval_mlm_loss(tmp_path / run) for run in ("distilled", "same-init", "random")}
    print("validation MLM loss:", got)
    assert got["distilled"] < got["same-init"] - 0.05, got
    assert got["distilled"] < got["random"] - 0.2, got
