"""Run-directory layout, atomic checkpoints with a ``latest`` pointer, RNG states, resume.

::

    RUN_DIR/config.toml                 resolved config of the (latest) invocation
    RUN_DIR/metrics.jsonl, tensorboard/ (pretrain.metrics)
    RUN_DIR/checkpoints/latest          name of the newest complete checkpoint, written LAST
    RUN_DIR/checkpoints/step_00001000/  one checkpoint:
        *.pt                              DeepSpeed engine state (model, optimizer, scheduler,
                                          ZeRO partitions), client state with the trainer state;
                                          read weights-only (pretrain.engine), never unpickled
        ranks/rank00000.pt                per rank: RNG states (python, numpy, torch, cuda)
                                          and the data-loader position
        config.toml, model.json           resolved run config; the model's exact Config
        tokenizer/                        copy of the tokenizer files
        COMPLETE                          JSON marker, written once every rank has finished
        universal/                        DeepSpeed universal conversion, made on the first
                                          resume at another world size (pretrain.universal)
    RUN_DIR/hf/                         HF export of the final model

A checkpoint counts only once ``COMPLETE`` exists: a kill during a save leaves the
previous checkpoint as the newest complete one, and resume falls back to it even if
``latest`` names an incomplete directory.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipeline.cli import CommandError
from data_pipeline.shards import atomic_write_text
from pretrain.engine import agree
from pretrain.models.common import load_torch_file
from pretrain.universal import UNIVERSAL

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


# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """Every RNG this process draws from, as plain containers and tensors (weights_only-safe)."""
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_rng(seed: np.random.SeedSequence) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one seed sequence."""
    a, b, c = (int(x) for x in seed.generate_state(3))
    random.seed(a)
    np.random.seed(b)
    torch.manual_seed(c)


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(d: Path) -> None:
    """Flush this host's writes under ``d`` (DeepSpeed's torch.save does not fsync)."""
    for p in d.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / "ranks" / f"rank{rank:05d}.pt"


# ----------------------------------------------------------------------------- save / load


class Checkpointer:
    """Saves and restores full training state through ``pretrain.engine.Engine``."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        engine,
        keep_last: int,
        files: dict[str, str],
        tokenizer_dir: Path | None,
        exit_during_save_step: int = 0,
    ):
        """``files``: name -> text written into every checkpoint (config.toml, model.json)."""
        self.root = Path(run_dir) / CHECKPOINTS
        self.engine, self.keep_last = engine, keep_last
        self.files, self.tokenizer_dir = files, tokenizer_dir
        self._exit_step = exit_during_save_step

    def save(self, step: int, trainer_state: dict, loader_state: dict) -> Path:
        eng = self.engine
        tag = tag_for(step)
        tag_dir = self.root / tag
        if eng.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # debris of an interrupted save of this very step
                shutil.rmtree(tag_dir)
        eng.barrier()
        client = {
            "trainer": trainer_state,
            # Lets DeepSpeed's ds_to_universal convert it for another world size.
            "universal_checkpoint_info": {"universal_checkpoint_version": 0.4},
        }
        eng.save(self.root, tag, client)
        if step == self._exit_step:
            os._exit(137)  # debug.exit_during_save_step: as if killed mid-save
        _rank_file(tag_dir, eng.rank).parent.mkdir(parents=True, exist_ok=True)
        _save_atomic({"rng": rng_state(), "loader": loader_state}, _rank_file(tag_dir, eng.rank))
        if eng.rank == 0:
            for name, text in self.files.items():
                (tag_dir / name).write_text(text)
            if self.tokenizer_dir is not None and self.tokenizer_dir.is_dir():
                shutil.copytree(self.tokenizer_dir, tag_dir / "tokenizer", dirs_exist_ok=True)
        _fsync_tree(tag_dir)
        eng.barrier()  # every rank's files are on disk before the checkpoint is declared
        if eng.rank == 0:
            marker = {
                "step": step,
                "world_size": eng.world_size,
                "zero_stage": eng.zero_stage,
                "time": time.time(),
                **trainer_state,
            }
            atomic_write_text(tag_dir / COMPLETE, json.dumps(marker, indent=1) + "\n")
            atomic_write_text(self.root / LATEST, tag + "\n")
            self._prune(step)
        return tag_dir

    def _prune(self, step: int) -> None:
        """Keep the newest ``keep_last`` complete checkpoints; drop older incomplete debris."""
        complete = complete_tags(self.root)
        for tag in complete[: max(0, len(complete) - self.keep_last)]:
            shutil.rmtree(self.root / tag, ignore_errors=True)
        for p in self.root.iterdir():
            s = step_of(p.name)
            if p.is_dir() and s is not None and s < step and read_marker(p) is None:
                shutil.rmtree(p, ignore_errors=True)

    def load(self, point: ResumePoint, loader, universal: bool = False, rng_seed: int = 0) -> dict:
        """Restore everything saved at ``point``; returns the trainer state.

        ``universal``: load DeepSpeed's universal conversion in ``TAG/universal`` (after a
        world-size change). RNG states are restored last, so nothing that runs during
        loading can consume them; at another world size the per-rank RNG streams of the
        checkpoint do not fit, and each rank draws from a stream seeded by
        (``rng_seed``, step, rank) instead — deterministic, but not the original run's.
        """
        eng = self.engine
        same_world = point.world_size == eng.world_size
        # Agreed (engine.agree): a problem with one rank's file stops every rank, one line.
        state = agree(lambda: self._rank_state(point, same_world))
        try:
            if universal:
                client = eng.load(point.tag_dir, UNIVERSAL)
            else:
                client = eng.load(point.root, point.tag)
        except ValueError as e:  # e.g. a file DeepSpeed's loader would fully unpickle
            raise RunDirError(str(e)) from e
        except RuntimeError as e:  # e.g. parameter shapes changed: one line, not a traceback
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
            raise RunDirError(
                f"{point.tag_dir}: cannot load it into this model: {' '.join(lines[:2])[:300]}"
            ) from e

        def restore_position() -> None:  # global (epoch, samples consumed): any rank's file
            try:
                loader.load_state_dict(state["loader"])
            except ValueError as e:  # e.g. another global batch size or shard set
                raise RunDirError(f"{point.tag_dir}: {e}") from e

        agree(restore_position)
        if same_world:
            set_rng_state(state["rng"])
        else:  # another rank layout: no saved stream fits; a fresh one per (seed, step, rank)
            seed_rng(np.random.SeedSequence([rng_seed, point.step, eng.rank]))
        return dict(client.get("trainer", {}))

    def _rank_state(self, point: ResumePoint, same_world: bool) -> dict:
        """This rank's RNG states and loader position (rank 0's at another world size)."""
        own = _rank_file(point.tag_dir, self.engine.rank)
        source = own if same_world and own.exists() else _rank_file(point.tag_dir, 0)
        try:
            state = load_torch_file(source)
        except ValueError as e:  # unreadable, or more than tensors and containers
            raise RunDirError(f"unreadable rank state: {e}") from e
        if not isinstance(state, dict) or not {"rng", "loader"} <= set(state):
            raise RunDirError(f"{source}: not a rank state (no rng/loader entries)")
        return state


# ----------------------------------------------------------------------------- inference


def load_run_model(run_dir: str | os.PathLike):
    """(model in eval mode with consolidated fp32 weights, tokenizer directory) of a run.

    The newest complete checkpoint (any ZeRO stage), else the final HF export in RUN_DIR/hf.
    Never runs code from the run directory: checkpoint files are read weights-only
    (``pretrain.engine.consolidated_state_dict``), an export through safetensors; a file
    that would need a full unpickle is refused with a one-line ``RunDirError``.
    """
    from pretrain.models import arch_module

    run = Path(run_dir)
    root = run / CHECKPOINTS
    tag = latest_tag(root)
    if tag is not None:
        from pretrain.engine import consolidated_state_dict

        info = json.loads((root / tag / "model.json").read_text())
        mod = arch_module(info["arch"])
        model = mod.Model(mod.Config(**info["config"]))
        try:  # weights-only reads: nothing pickled in the checkpoint runs
            state = consolidated_state_dict(root / tag, model)
        except ValueError as e:
            raise RunDirError(str(e)) from e
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(
            dict(model.named_parameters())
        )
        if unexpected or set(missing) - tied:
            raise RunDirError(
                f"{root / tag}: weights do not match the model "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        return model.eval(), root / tag / "tokenizer"
    hf = run / "hf"
    if (hf / "config.json").is_file() and (run / "config.toml").is_file():
        from pretrain.config_io import tomllib

        arch = tomllib.loads((run / "config.toml").read_text())["model"]["arch"]
        try:
            return arch_module(arch).import_hf(hf).eval(), hf
        except ValueError as e:
            raise RunDirError(str(e)) from e
    if not run.is_dir():
        raise RunDirError(f"{run_dir}: not a directory")
    raise RunDirError(
        f"{run_dir}: not a run directory with a model (no complete checkpoint in "
        f"{CHECKPOINTS}/ and no hf/ export)"
    )


def model_json(arch: str, config) -> str:
    """model.json: the architecture and its exact Config (vocab size etc. included)."""
    return json.dumps({"arch": arch, "config": asdict(config)}, indent=1) + "\n"
