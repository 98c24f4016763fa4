"""The readers' vocabulary: documents, input files, segments, options and statistics (see
the package docstring for formats and document ids)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
