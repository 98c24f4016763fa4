"""File plumbing both packages use: atomic text writes, sha256 of a file, and reading a
torch file without ever running code from it.

``load_torch_file`` is how every weights file and checkpoint is read (run directories and
model directories can come from anywhere): ``torch.load(weights_only=True)``, which builds
only tensors, containers, plain values and explicitly allowed data classes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class UnsafeFileError(ValueError):
    """A weights file that holds more than tensors and containers (or allow-listed classes):
    refused without running any of it. One-line message."""


def load_torch_file(path: str | os.PathLike, allowed: tuple = (), mmap: bool = False):
    """``torch.load`` that never runs code from the file: ``weights_only=True``, which builds
    tensors, containers and plain values only, plus the classes in ``allowed`` (data-only
    classes, e.g. DeepSpeed's checkpoint metadata). Anything else raises ``UnsafeFileError``
    before it is constructed; an unreadable file raises ``ValueError``. Tensors on the CPU;
    ``mmap``: storages are mapped, not read, until used (zip-format files; torch's legacy
    format is read whole)."""
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        what = (
            f"it references {found.group(1)}"
            if found
            else f"unsupported pickle content ({detail.group(1).strip() if detail else 'unknown'})"
        )
        raise UnsafeFileError(
            f"{path}: refused to load: {what}, not a tensor (loading it could run code "
            "from the file; only tensors and containers are read)"
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: unreadable as a torch file ({first[:200]})") from e
