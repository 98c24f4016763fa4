"""Distillation: a student trained from a frozen teacher (DistilBERT, TinyBERT).

The model side, below checkpoints and training: ``distiller`` is the module DeepSpeed trains
(student + W_e / W_h, the teacher held outside it), the run's ``Plan`` and the student's
every-other-layer initialisation; ``losses`` holds the terms as sums with counts.
``pretrain.checkpoint`` rebuilds a distillation checkpoint's module from it
(``distiller.shell``). Above it: the run config's ``[distill]`` section
(``pretrain.config.distill``), loading and checking the teacher (``pretrain.train.teacher``)
and the objective that weights and normalises the terms (``pretrain.train.distill``).
"""
