"""Finding the input files (``list_inputs``) and reading them: a byte-range segment of one
file (``read_segment``, what preprocessing's work units read) or the whole corpus
(``iter_documents``, what ``train-tokenizer`` reads); both yield the same documents."""

from __future__ import annotations

import glob
import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.readers.base import (
    BINARY_PROBE_BYTES,
    SUFFIXES,
    Document,
    InputFile,
    ReaderError,
    ReadOptions,
    ReadStats,
    Segment,
)
from data_pipeline.readers.parquet import num_row_groups, read_parquet
from data_pipeline.readers.text import read_text_segment


def _format_of(path: str) -> tuple[str, bool] | None:
    low = path.lower()
    for suffix, fmt in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if low.endswith(suffix):
            return fmt
    return None


def _root_name(root: Path) -> str:
    return root.resolve().name


def _walk(directory: Path, prefix: str, stats: ReadStats) -> Iterator[tuple[Path, str]]:
    """Files under ``directory``, recursively, sorted by relative path; dot-directories are
    skipped (and counted)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        rel = Path(dirpath).relative_to(directory).as_posix()
        for d in sorted(d for d in dirnames if d.startswith(".")):
            stats.note("hidden_directory", str(Path(dirpath) / d))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            found.append((fn if rel == "." else f"{rel}/{fn}", Path(dirpath) / fn))
    for name, path in sorted(found):
        yield path, f"{prefix}/{name}" if prefix else name


def _expand(arg: str, stats: ReadStats) -> Iterator[tuple[Path, str, bool]]:
    """(path, id name, named explicitly) for one command-line input argument."""
    if glob.has_magic(arg):
        parts = Path(arg).parts
        fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise ReaderError(f"{arg}: no files match")
        for m in matches:
            rel = Path(m).relative_to(root).as_posix() if root != Path(".") else Path(m).as_posix()
            name = f"{_root_name(root)}/{rel}"
            if Path(m).is_dir():
                yield from ((p, n, False) for p, n in _walk(Path(m), name, stats))
            else:
                yield Path(m), name, False
    elif os.path.isdir(arg):
        yield from ((p, n, False) for p, n in _walk(Path(arg), _root_name(Path(arg)), stats))
    elif os.path.exists(arg):
        yield Path(arg), Path(arg).name, True
    else:
        raise ReaderError(f"{arg}: no such file or directory")


def _probe(path: Path, gz: bool) -> bytes:
    """The first KB of the (decompressed) file; ReaderError if it cannot be read."""
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read(BINARY_PROBE_BYTES)
        with open(path, "rb") as f:
            return f.read(BINARY_PROBE_BYTES)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ReaderError(f"{path}: not a valid gzip file ({e})") from e
    except OSError as e:
        raise ReaderError(f"{path}: cannot read ({e.strerror or e})") from e


def list_inputs(paths: list[str], stats: ReadStats | None = None) -> list[InputFile]:
    """Expand files, directories and globs into the ordered list of input files.

    Unsupported file types and binary files (a NUL byte in the first KB) found inside
    directories/globs are skipped and counted; named explicitly, they are an error.
    Unreadable files are always an error (a corpus that cannot be read is a set-up mistake,
    and skipping it would silently shrink the data).
    """
    stats = stats if stats is not None else ReadStats()
    if not paths:
        raise ReaderError("no input paths given")
    files: list[InputFile] = []
    seen_real: dict[str, str] = {}
    seen_name: dict[str, str] = {}
    for arg in paths:
        for path, name, explicit in _expand(str(arg), stats):
            fmt = _format_of(path.name)
            if fmt is None:
                if explicit:
                    raise ReaderError(
                        f"{path}: unsupported file type (use .txt, .jsonl, .jsonl.gz, .txt.gz, .parquet)"
                    )
                stats.note("unsupported_file", str(path))
                continue
            real = os.path.realpath(path)
            if real in seen_real:
                stats.note("duplicate_input", str(path))
                continue
            if name in seen_name:
                raise ReaderError(
                    f"{path}: same document-id name {name!r} as {seen_name[name]}; "
                    "name their common parent directory instead"
                )
            try:
                st = os.stat(real)
            except OSError as e:  # e.g. a dangling symlink
                raise ReaderError(f"{path}: cannot read ({e.strerror or e})") from e
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
                if explicit:
                    raise ReaderError(f"{path}: not a regular file")
                stats.note("not_regular_file", str(path))
                continue
            head = _probe(path, fmt[1])
            if fmt[0] != "parquet" and b"\0" in head:
                if explicit:
                    raise ReaderError(f"{path}: binary file (NUL byte in the first KB), not text")
                stats.note("binary_file", str(path))
                continue
            seen_real[real], seen_name[name] = str(path), str(path)
            files.append(InputFile(real, name, fmt[0], fmt[1], st.st_size, st.st_mtime_ns))
    if not files:
        raise ReaderError(f"no readable .txt/.jsonl/.parquet files in {' '.join(map(str, paths))}")
    return files


def whole_file_segment(index: int, f: InputFile) -> Segment:
    """A segment covering all of file ``f`` (row groups for parquet)."""
    if f.fmt == "parquet":
        return Segment(index, 0, num_row_groups(f.path), 0)
    return Segment(index, 0, f.size if not f.gz else 1 << 62, 1)


def read_segment(
    f: InputFile, seg: Segment, opts: ReadOptions, stats: ReadStats
) -> Iterator[Document]:
    """The documents that start in ``seg`` of file ``f``, in file order."""
    if f.fmt == "parquet":
        yield from read_parquet(f, seg, opts, stats)
    else:
        yield from read_text_segment(f, seg, opts, stats)


def iter_documents(
    paths: list[str],
    text_field: str = "text",
    doc_sep: str = "file",
    encoding_errors: str = "replace",
    stats: ReadStats | None = None,
) -> Iterator[Document]:
    """All documents of the inputs, in order (files sorted within each directory/glob).

    Skips are counted into ``stats``; unusable input raises ``ReaderError``.
    """
    stats = stats if stats is not None else ReadStats()
    opts = ReadOptions(text_field=text_field, doc_sep=doc_sep, encoding_errors=encoding_errors)
    for i, f in enumerate(list_inputs(paths, stats)):
        stats.files += 1
        yield from read_segment(f, whole_file_segment(i, f), opts, stats)
