"""Plumbing shared by ``data_pipeline`` and ``pretrain``: the user-facing error type, the
command-line dispatch, and file helpers (atomic writes, sha256, code-free torch loading).
Nothing here knows about corpora, shards or models."""

from data_pipeline.common.cli import dispatch
from data_pipeline.common.errors import CommandError
from data_pipeline.common.files import (
    UnsafeFileError,
    atomic_write_text,
    load_torch_file,
    sha256_file,
)

__all__ = [
    "CommandError",
    "UnsafeFileError",
    "atomic_write_text",
    "dispatch",
    "load_torch_file",
    "sha256_file",
]
