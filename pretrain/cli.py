"""``python -m pretrain COMMAND ...``: training, export and inspection of models.

Each command lives in its own module with ``add_arguments(parser)`` and ``main(args)``;
see ``data_pipeline.cli.dispatch``.
"""

from __future__ import annotations

from data_pipeline.cli import dispatch

COMMANDS = {
    "train": (
        "pretrain.train_cli",
        "train (one rank; launched by deepspeed/torchrun/mpirun for many)",
    ),
    "export": ("pretrain.export", "write a run's model as a Hugging Face transformers directory"),
    "fill-mask": ("pretrain.fill_mask", "top-k predictions for <mask> from a run or HF directory"),
    "params": ("pretrain.params", "parameter counts of a preset (embedding / backbone / total)"),
    "plot": ("pretrain.plot", "PNG of loss, accuracy and learning-rate curves of a run"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("python -m pretrain", "Pretrain encoders; export to HF.", COMMANDS, argv)
