"""The run directory's checkpoints: names, ``COMPLETE`` markers, the ``latest`` pointer and
where to resume from (see the package docstring for the layout)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.common import CommandError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
TAG_PREFIX = "step_"


class RunDirError(CommandError, ValueError):
    """A directory that is not (or not yet) what the caller needs: one-line message."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int | None:
    rest = tag[len(TAG_PREFIX) :] if tag.startswith(TAG_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


def read_marker(tag_dir: Path) -> dict | None:
    """The COMPLETE marker's contents, or None when the checkpoint is not complete."""
    try:
        return json.loads((tag_dir / COMPLETE).read_text())
    except (OSError, ValueError):
        return None


def complete_tags(root: Path) -> list[str]:
    """Complete checkpoint tags under ``root``, oldest first."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and step_of(p.name) is not None]
    return sorted((t for t in tags if read_marker(root / t) is not None), key=step_of)


def latest_tag(root: Path) -> str | None:
    """``latest`` if it names a complete checkpoint, else the newest complete one."""
    try:
        named = (root / LATEST).read_text().strip()
    except OSError:
        named = ""
    if named and read_marker(root / named) is not None:
        return named
    tags = complete_tags(root)
    return tags[-1] if tags else None


@dataclass
class ResumePoint:
    root: Path  # the checkpoints directory
    tag: str
    marker: dict  # step, world_size, zero_stage, ...

    @property
    def step(self) -> int:
        return int(self.marker["step"])

    @property
    def tag_dir(self) -> Path:
        return self.root / self.tag

    @property
    def world_size(self) -> int:
        """Ranks that wrote the checkpoint (-1 if the marker does not say)."""
        return int(self.marker.get("world_size", -1))


def find_resume(run_dir: str | os.PathLike, resume: str) -> ResumePoint | None:
    """What to resume from: ``auto`` (newest complete checkpoint of RUN_DIR, if any),
    ``never`` (None), or a path (a checkpoint directory, or a run/checkpoints directory)."""
    if resume == "never":
        return None
    if resume == "auto":
        root = Path(run_dir) / CHECKPOINTS
        tag = latest_tag(root)
        return None if tag is None else ResumePoint(root, tag, read_marker(root / tag))
    path = Path(resume)
    if read_marker(path) is not None:
        return ResumePoint(path.parent, path.name, read_marker(path))
    for root in (path / CHECKPOINTS, path):
        tag = latest_tag(root)
        if tag is not None:
            return ResumePoint(root, tag, read_marker(root / tag))
    raise RunDirError(
        f"{resume}: no complete checkpoint there (expected a checkpoint directory "
        f"with a {COMPLETE} marker, or a run directory)"
    )


def check_zero_stage(point: ResumePoint, stage: int) -> None:
    """Refuse a ZeRO stage that cannot read the checkpoint's layout (one line).

    Stages 1 and 2 share a layout; stage 0 (whole optimizer state in the model file) and
    stage 3 (partitioned parameters) each have their own, and DeepSpeed would otherwise
    fail with an assertion or, worse, start with an empty optimizer state.
    """
    saved = int(point.marker.get("zero_stage", stage))
    family = {0: "0", 1: "1-2", 2: "1-2", 3: "3"}
    if family.get(saved) != family.get(stage):
        raise RunDirError(
            f"{point.tag_dir}: written with zero.stage={saved}, cannot be resumed with "
            f"zero.stage={stage} (stages 1 and 2 are interchangeable; 0 and 3 are not); "
            "keep the stage, or start a new run with init_from an HF export"
        )
