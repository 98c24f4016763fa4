"""``python -m pretrain COMMAND ...``: training, export and inspection of models.

Each command is a module of ``pretrain.commands`` with ``add_arguments(parser)`` and
``main(args)``; see ``data_pipeline.common.cli.dispatch``.
"""

from __future__ import annotations

from data_pipeline.common import dispatch

COMMANDS = {
    "train": (
        "pretrain.commands.train",
        "train (one rank; launched by deepspeed/torchrun/mpirun for many)",
    ),
    "export": (
        "pretrain.commands.export",
        "write a run's model as a Hugging Face transformers directory",
    ),
    "fill-mask": (
        "pretrain.commands.fill_mask",
        "top-k predictions for <mask> from a run or HF directory",
    ),
    "params": (
        "pretrain.commands.params",
        "parameter counts of a preset (embedding / backbone / total)",
    ),
    "plot": ("pretrain.commands.plot", "PNG of loss, accuracy and learning-rate curves of a run"),
    "audit": (
        "pretrain.commands.audit",
        "check a run's per-step sample audit: every row once per epoch, in order",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("python -m pretrain", "Pretrain encoders; export to HF.", COMMANDS, argv)
