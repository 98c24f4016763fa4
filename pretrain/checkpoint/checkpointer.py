"""Saving and restoring the full training state: the DeepSpeed engine's files, every rank's
RNG states and loader position, the run config and tokenizer, then ``COMPLETE`` and
``latest`` (written last, so a kill mid-save leaves the previous checkpoint in use)."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from data_pipeline.common import atomic_write_text, load_torch_file
from pretrain.checkpoint.layout import (
    CHECKPOINTS,
    COMPLETE,
    LATEST,
    ResumePoint,
    RunDirError,
    complete_tags,
    read_marker,
    step_of,
    tag_for,
)
from pretrain.engine import UNIVERSAL, agree

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
