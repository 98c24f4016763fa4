"""Training curves of a run (``python -m pretrain plot``, ``pretrain.commands.plot``).

``plot_metrics`` takes the records of ``RUN_DIR/metrics.jsonl`` (``logger``) and draws, against the step:
losses (training solid, evaluation dashed with markers), accuracies (MLM/RTD, training
and evaluation), the learning rate, and throughput (tokens/s and, when logged, MFU).
A panel whose metrics were never logged says so instead of being left blank.
"""

from __future__ import annotations

import math
from pathlib import Path

DEFAULT_OUT = "curves.png"


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) where ``key`` holds a finite number; later duplicates of a step win."""
    by_step: dict[int, float] = {}
    for rec in records:
        value = rec.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            by_step[rec["step"]] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _keys(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        for k in rec:
            seen.setdefault(k, None)
    return list(seen)


def _panels(keys: list[str]) -> dict[str, list[str]]:
    """Which logged keys go in which panel, by name (``loss``, ``mlm_acc``, ``eval_loss``...)."""
    return {
        "loss": [k for k in keys if k.endswith("loss")],
        "accuracy": [k for k in keys if k.endswith("acc") or k.endswith("accuracy")],
        "learning rate": [k for k in keys if k == "lr" or k.startswith("lr_")],
        "tokens/s": [k for k in keys if k == "tokens_per_s"],
    }


def plot_metrics(records: list[dict], out: Path, title: str = "", dpi: int = 120) -> Path:
    """Write the curves of ``records`` (parsed metrics.jsonl) to the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training nodes or CI
    import matplotlib.pyplot as plt

    keys = _keys(records)
    panels = _panels(keys)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for ax, (name, names) in zip(axes.flat, panels.items(), strict=True):
        drawn, colors = 0, {}
        for key in names:
            steps, values = _series(records, key)
            if not steps:
                continue
            # An evaluation curve takes its training twin's colour (eval_mlm_acc ~ mlm_acc).
            base = key.removeprefix("eval_")
            color = colors.setdefault(base, f"C{len(colors) % 10}")
            if key.startswith("eval"):
                ax.plot(steps, values, "--o", color=color, markersize=3, label=key)
            else:
                ax.plot(steps, values, color=color, label=key)
            drawn += 1
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
            if name == "learning rate":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        if name == "tokens/s":
            _add_mfu(ax, records)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return out


def _add_mfu(ax, records: list[dict]) -> None:
    steps, values = _series(records, "mfu")
    if not steps:
        return
    twin = ax.twinx()
    twin.plot(steps, [100 * v for v in values], color="tab:red", alpha=0.7, label="MFU %")
    twin.set_ylabel("MFU %")
    twin.legend(loc="lower right", fontsize="small")
