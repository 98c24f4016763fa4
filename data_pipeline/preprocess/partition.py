"""Work units: the input cut into pieces of about ``unit_bytes`` that preprocess independently.

Units depend on the input files and ``unit_bytes`` only, never on the number of ranks or
workers, and each unit writes its own shards (named after the unit), so the shards are the
same bytes however many processes make them. Files are taken in input order and packed into
units: splittable files (plain ``.txt`` with ``--doc-sep line|blank-line`` and plain
``.jsonl``) are cut at arbitrary byte offsets (the readers align to line starts and never
lose or repeat a document at a cut); gzip files and one-document-per-file ``.txt`` are atomic;
parquet files are cut between row groups. Small files share a unit.

A unit's weight estimates its tokenization work: bytes on disk, uncompressed bytes for
parquet row groups, and three times the size of gzip files (typical text compression).
Ranks take units greedily, largest first onto the least loaded rank.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from data_pipeline.readers import InputFile, ReadOptions, Segment
from data_pipeline.readers.parquet import row_groups

GZIP_RATIO = 3  # assumed compression ratio of gzip text, for balancing only


@dataclass
class WorkUnit:
    """A run of segments written to the shards ``<split>-u<index>-<k>.tar``."""

    index: int
    source: str  # "train" (documents may go to valid by --valid-fraction) or "valid"
    segments: list[Segment] = field(default_factory=list)
    weight: int = 0


def splittable(f: InputFile, opts: ReadOptions) -> bool:
    if f.gz or f.fmt == "parquet":
        return False
    return f.fmt == "jsonl" or opts.doc_sep != "file"


def plan_units(
    files: list[InputFile], sources: list[str], opts: ReadOptions, unit_bytes: int
) -> list[WorkUnit]:
    """Pack ``files`` (``sources[i]`` is file i's "train"/"valid") into work units.

    Segments that start inside a file have ``first=-1`` until ``apply_line_counts`` fills them in.
    """
    if unit_bytes < 1:
        raise ValueError("unit_bytes must be positive")
    units: list[WorkUnit] = []
    cur = WorkUnit(0, sources[0] if sources else "train")

    def close() -> None:
        nonlocal cur
        if cur.segments:
            units.append(cur)
        cur = WorkUnit(len(units), cur.source)

    for i, f in enumerate(files):
        if sources[i] != cur.source:  # a unit never mixes train and valid inputs
            close()
            cur.source = sources[i]
        if splittable(f, opts):
            pos = 0
            while pos < f.size:
                take = min(f.size - pos, unit_bytes - cur.weight)
                cur.segments.append(Segment(i, pos, pos + take, 1 if pos == 0 else -1))
                cur.weight += take
                pos += take
                if cur.weight >= unit_bytes:
                    close()
        elif f.fmt == "parquet":
            groups = row_groups(f.path)
            seg_start, seg_row, row = 0, 0, 0
            for g, (rows, nbytes) in enumerate(groups):
                if cur.weight > 0 and cur.weight + nbytes > unit_bytes:  # would overflow
                    if g > seg_start:
                        cur.segments.append(Segment(i, seg_start, g, seg_row))
                    close()
                    seg_start, seg_row = g, row
                cur.weight += nbytes
                row += rows
                if cur.weight >= unit_bytes:
                    cur.segments.append(Segment(i, seg_start, g + 1, seg_row))
                    close()
                    seg_start, seg_row = g + 1, row
            if len(groups) > seg_start:
                cur.segments.append(Segment(i, seg_start, len(groups), seg_row))
        else:
            weight = f.size * (GZIP_RATIO if f.gz else 1)
            if cur.segments and cur.weight + weight > unit_bytes:
                close()
            cur.segments.append(Segment(i, 0, f.size if not f.gz else 1 << 62, 1))
            cur.weight += weight
            if cur.weight >= unit_bytes:
                close()
    close()
    return units


def count_tasks(units: list[WorkUnit]) -> list[tuple[int, int, int]]:
    """(file, start, end) byte ranges whose newlines must be counted to number the lines of
    segments that start inside a file: one range per such segment, from the previous cut."""
    starts: dict[int, list[int]] = {}
    for u in units:
        for s in u.segments:
            if s.first < 0:
                starts.setdefault(s.file, [0]).append(s.start)
    return [
        (f, a, b)
        for f, cuts in sorted(starts.items())
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]


def count_newlines(path: str, start: int, end: int, block: int = 1 << 23) -> int:
    with open(path, "rb") as fh:
        fh.seek(start)
        left, n = end - start, 0
        while left > 0 and (buf := fh.read(min(block, left))):
            n += buf.count(b"\n")
            left -= len(buf)
        return n


def apply_line_counts(units: list[WorkUnit], tasks: list[tuple[int, int, int]], counts: list[int]):
    """Fill in ``first`` (1 + newlines before ``start``) of segments that start inside a file."""
    first_at: dict[tuple[int, int], int] = {}
    line = {}
    for (f, _a, b), n in zip(tasks, counts, strict=True):
        line[f] = line.get(f, 1) + n
        first_at[(f, b)] = line[f]
    for u in units:
        u.segments = [
            Segment(s.file, s.start, s.end, first_at[(s.file, s.start)]) if s.first < 0 else s
            for s in u.segments
        ]


def assign(weights: list[int], n: int) -> list[list[int]]:
    """Greedy balance: items largest first, each onto the least loaded of ``n`` bins.

    Returns the item indices of each bin in ascending order; deterministic (ties by index).
    """
    bins: list[list[int]] = [[] for _ in range(n)]
    heap = [(0, r) for r in range(n)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, r = heapq.heappop(heap)
        bins[r].append(i)
        heapq.heappush(heap, (load + max(1, weights[i]), r))
    return [sorted(b) for b in bins]
