"""Resuming a ZeRO checkpoint on another number of ranks: DeepSpeed's universal format.

A ZeRO checkpoint (stages 1-3, and any DeepSpeed optimizer that partitions its state) holds
one optimizer-state partition per rank (``*zero_pp_rank_*_optim_states.pt``) and refuses to
load at another data-parallel size. DeepSpeed's ``ds_to_universal`` rewrites it as one file
per parameter (fp32 weights, Adam moments), which loads at any world size with
``"checkpoint": {"load_universal": true}``. A stage-0 checkpoint has no partitions (the whole
optimizer state is in ``mp_rank_00_model_states.pt``) and loads anywhere as it is.

The conversion is done once per checkpoint and cached in ``TAG/universal/``:

- only global rank 0 converts (the others wait: ``distributed.on_rank0``), into
  ``TAG/.universal.tmp-HOST-PID/``, which is renamed to ``TAG/universal/`` only after a
  ``UNIVERSAL_COMPLETE`` marker was written into it: a crash mid-conversion never leaves a
  ``universal/`` that looks complete, and its debris (on the same host) is removed by the
  next attempt. DeepSpeed reads the checkpoint through ``TAG/.universal.src-HOST-PID/``
  (links to the tag's top-level files), never seeing other conversions' files;
- a later resume at yet another world size reuses ``TAG/universal/``;
- two processes converting the same checkpoint at once (two jobs resuming from it) each use
  their own temporary directory; the first rename wins and the other copy is discarded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from pretrain.engine.zero_files import ds_to_universal

UNIVERSAL = "universal"
DONE = "UNIVERSAL_COMPLETE"
_TMP_PREFIX = f".{UNIVERSAL}.tmp-"
_SRC_PREFIX = f".{UNIVERSAL}.src-"


def partitioned(tag_dir: str | os.PathLike) -> bool:
    """Whether the checkpoint's optimizer state is split by rank (ZeRO)."""
    return any(Path(tag_dir).glob("*zero_pp_rank_*_optim_states.pt"))


def needs_universal(tag_dir: str | os.PathLike, saved_world: int, world: int) -> bool:
    """A world-size change on a partitioned checkpoint: it must be loaded as universal."""
    return saved_world != world and partitioned(tag_dir)


def is_converted(tag_dir: str | os.PathLike) -> bool:
    return (Path(tag_dir) / UNIVERSAL / DONE).is_file()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_debris(tag_dir: Path) -> None:
    """Temporary directories of conversions on this host whose process is gone."""
    host = socket.gethostname()
    for prefix in (_TMP_PREFIX, _SRC_PREFIX):
        for tmp in tag_dir.glob(f"{prefix}*"):
            owner, _, pid = tmp.name[len(prefix) :].rpartition("-")
            if owner == host and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)


def ensure_universal(tag_dir: str | os.PathLike) -> Path:
    """``TAG/universal`` of a checkpoint, converting it first unless that was done already."""
    tag_dir = Path(tag_dir)
    out = tag_dir / UNIVERSAL
    if not is_converted(tag_dir):
        _remove_debris(tag_dir)
        convert_to_universal(tag_dir, out)
    return out


def convert_to_universal(tag_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Convert ``tag_dir`` with DeepSpeed's ``ds_to_universal`` into ``out_dir``, atomically."""

    tag_dir, out = Path(tag_dir), Path(out_dir)
    me = f"{socket.gethostname()}-{os.getpid()}"
    src, tmp = tag_dir / f"{_SRC_PREFIX}{me}", tag_dir / f"{_TMP_PREFIX}{me}"
    for d in (src, tmp):
        shutil.rmtree(d, ignore_errors=True)
    # ds_to_universal reads every DeepSpeed file below its input folder, recursively: a
    # finished or half-written conversion inside the tag would be read as more ranks. So it
    # reads a folder of links to the tag's own top-level files only.
    src.mkdir()
    for f in tag_dir.glob("*.pt"):
        (src / f.name).symlink_to(f.resolve())
    try:
        ds_to_universal(src, tmp)
        if not (tmp / "zero").is_dir():
            raise RuntimeError(f"no {tmp.name}/zero written")
    except (Exception, SystemExit) as e:  # its argument checks exit()
        shutil.rmtree(tmp, ignore_errors=True)
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise RuntimeError(f"{tag_dir}: conversion to a universal checkpoint failed: {msg}") from e
    finally:
        shutil.rmtree(src, ignore_errors=True)
        # ds_to_universal also points a `latest_universal` file beside its output at it; we
        # load by explicit tag, and a name pointing at a temporary directory would mislead.
        (tag_dir / "latest_universal").unlink(missing_ok=True)
    marker = {"source": tag_dir.name, "partitions": len(list(tag_dir.glob("*optim_states.pt")))}
    (tmp / DONE).write_text(json.dumps(marker) + "\n")
    if (out / DONE).is_file():  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(out, ignore_errors=True)  # incomplete leftovers of an older layout
    try:
        os.replace(tmp, out)
    except OSError:  # lost a race to a rename in between: theirs is complete too
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / DONE).is_file():
            raise
