"""Corpus readers: files, directories and globs of txt / jsonl[.gz] / parquet -> ``Document``s.

``iter_documents(paths)`` is the whole-corpus entry point (used by ``train-tokenizer``);
preprocessing reads the same files in byte-range work units through ``read_segment``
(see ``data_pipeline.partition``), and both yield exactly the same documents.

Formats, chosen by file name (case-insensitive):

- ``.txt`` / ``.txt.gz``: one document per file (``doc_sep="file"``), per block of
  non-blank lines (``"blank-line"``) or per non-blank line (``"line"``). A document's
  final line terminator is not part of it; whitespace-only lines are separators.
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, text in ``text_field``.
- ``.parquet``: the ``text_field`` column, read a record batch at a time.

Document ids are ``<name>:<line>`` (1-based first line; txt blocks/lines and jsonl),
``<name>:row<N>`` (parquet, 0-based row) or ``<name>`` (txt, one document per file), where
``<name>`` is the file's path relative to the *parent* of the directory named on the
command line (so it starts with that directory's name, and does not depend on the cwd),
its base name when the file itself was named, and for a glob its path relative to the
parent of the glob's leading fixed directory. Two files with the same name are an error.

Very long documents (over ``ReadOptions.max_piece_chars``) come as consecutive pieces with
the same id, all but the last with ``final=False``; plain ``.txt`` input streams them with
bounded memory (jsonl, gzip and parquet hold one document in memory, never a whole file).
"""

from __future__ import annotations

import glob
import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DOC_SEPS = ("file", "blank-line", "line")
ENCODING_ERRORS = ("replace", "skip", "error")
SUFFIXES = {
    ".txt": ("txt", False),
    ".txt.gz": ("txt", True),
    ".jsonl": ("jsonl", False),
    ".jsonl.gz": ("jsonl", True),
    ".parquet": ("parquet", False),
}
BINARY_PROBE_BYTES = 1024
MAX_EXAMPLES = 5  # locations kept per skip reason, so a summary can name them


class ReaderError(ValueError):
    """Unusable input (one-line message naming the file and position)."""


@dataclass(frozen=True)
class Document:
    """One document (or one piece of a very long one)."""

    id: str  # stable id: "<name>:<line>", "<name>:row<N>" or "<name>"
    text: str
    final: bool = True  # False on all but the last piece of a document split into pieces


@dataclass
class ReadOptions:
    """How files are turned into documents."""

    text_field: str = "text"
    """jsonl key / parquet column holding the text."""
    doc_sep: str = "file"
    """txt documents: one per ``file``, per ``blank-line``-separated block, or per ``line``."""
    encoding_errors: str = "replace"
    """Invalid UTF-8: ``replace`` (U+FFFD, counted), ``skip`` the document (counted), ``error``."""
    max_piece_chars: int = 1 << 18
    """Documents longer than this are delivered in pieces (bounded tokenizer memory)."""
    chunk_bytes: int = 1 << 20
    """Read size for long lines; txt documents longer than this are streamed, not held."""

    def __post_init__(self):
        if self.doc_sep not in DOC_SEPS:
            raise ReaderError(f"doc_sep must be one of {', '.join(DOC_SEPS)}, got {self.doc_sep!r}")
        if self.encoding_errors not in ENCODING_ERRORS:
            raise ReaderError(
                f"encoding_errors must be one of {', '.join(ENCODING_ERRORS)}, "
                f"got {self.encoding_errors!r}"
            )
        if not self.text_field:
            raise ReaderError("text_field must not be empty")
        if self.max_piece_chars < 16 or self.chunk_bytes < 16:
            raise ReaderError("max_piece_chars and chunk_bytes must be at least 16")


@dataclass
class ReadStats:
    """Counts of what was read and of everything skipped, by reason (nothing goes uncounted)."""

    documents: int = 0  # complete documents yielded
    files: int = 0  # input files read
    replaced_utf8: int = 0  # documents whose invalid UTF-8 was replaced by U+FFFD
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> some locations

    def note(self, reason: str, where: str, n: int = 1) -> None:
        """Count ``n`` skipped items for ``reason`` and remember where (first few)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(where)

    def replaced(self, where: str) -> None:
        self.replaced_utf8 += 1
        ex = self.examples.setdefault("replaced_utf8", [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(where)

    def merge(self, other: ReadStats) -> None:
        self.documents += other.documents
        self.files += other.files
        self.replaced_utf8 += other.replaced_utf8
        for k, v in other.skipped.items():
            self.skipped[k] = self.skipped.get(k, 0) + v
        for k, v in other.examples.items():
            ex = self.examples.setdefault(k, [])
            ex.extend(v[: MAX_EXAMPLES - len(ex)])

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "files": self.files,
            "replaced_utf8": self.replaced_utf8,
            "skipped": dict(sorted(self.skipped.items())),
            "examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ReadStats:
        return cls(
            documents=d["documents"],
            files=d["files"],
            replaced_utf8=d["replaced_utf8"],
            skipped=dict(d["skipped"]),
            examples={k: list(v) for k, v in d["examples"].items()},
        )

    def summary_lines(self) -> list[str]:
        lines = [f"documents: {self.documents} from {self.files} files"]
        if self.replaced_utf8:
            ex = ", ".join(self.examples.get("replaced_utf8", []))
            lines.append(f"invalid UTF-8 replaced in {self.replaced_utf8} documents (e.g. {ex})")
        for reason, n in sorted(self.skipped.items()):
            lines.append(
                f"skipped {n} x {reason} (e.g. {', '.join(self.examples.get(reason, []))})"
            )
        return lines


@dataclass(frozen=True)
class InputFile:
    """One input file, as found by ``list_inputs``."""

    path: str  # absolute path used for reading
    name: str  # id prefix (see module docstring)
    fmt: str  # "txt" | "jsonl" | "parquet"
    gz: bool
    size: int  # bytes on disk
    mtime_ns: int


@dataclass(frozen=True)
class Segment:
    """A part of one input file that a work unit reads.

    txt/jsonl: documents whose first line starts in bytes ``[start, end)``; ``first`` is the
    1-based number of the line containing byte ``start``. parquet: row groups
    ``[start, end)``, ``first`` is the file's row index of the first row read.
    """

    file: int  # index into the input file list
    start: int
    end: int
    first: int = 1


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
        from data_pipeline.parquet_reader import num_row_groups

        return Segment(index, 0, num_row_groups(f.path), 0)
    return Segment(index, 0, f.size if not f.gz else 1 << 62, 1)


def read_segment(
    f: InputFile, seg: Segment, opts: ReadOptions, stats: ReadStats
) -> Iterator[Document]:
    """The documents that start in ``seg`` of file ``f``, in file order."""
    if f.fmt == "parquet":
        from data_pipeline.parquet_reader import read_parquet

        yield from read_parquet(f, seg, opts, stats)
    else:
        from data_pipeline.linescan import read_text_segment

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
