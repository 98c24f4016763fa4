"""``python -m data_pipeline inspect SHARD_DIR [--verify] [--samples K] [--all]``.

Prints the manifest's totals per split, the read statistics (every skip by reason), a line
per shard, and a few decoded documents with their first sentences (sentence counts come
from the manifest; format 1 and 2 shards have none). Always checks that every shard and index exists
with the manifest's size (cheap); ``--verify`` also checks sha256 of every tar and index
and that each index lists the manifest's number of documents. Any problem is named by
shard and makes the command exit with status 1.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from data_pipeline.common import CommandError, sha256_file
from data_pipeline.readers import ReadStats
from data_pipeline.shards import (
    CorruptShardError,
    Manifest,
    ShardFormatError,
    ShardInfo,
    ShardReader,
    check_shard,
    load_index,
)
from data_pipeline.tokenizer import Tokenizer, TokenizerError

SHOWN_SHARDS = 20  # shard lines printed without --all
SHOWN_SENTENCES = 3  # of each decoded document


def shard_problem(shard_dir: Path, info: ShardInfo, full: bool) -> str | None:
    """None if the shard is fine, else a one-line reason."""
    reason = check_shard(shard_dir, info, full=full)
    if reason is not None or not full:
        return reason
    if sha256_file(shard_dir / info.index) != info.index_sha256:
        return f"index {info.index}: sha256 mismatch against the manifest"
    try:
        load_index(shard_dir, info)
    except CorruptShardError as e:
        return e.reason
    return None


def _first_meta(path: Path) -> dict:
    """The meta.json of the first document of a shard (read with plain tarfile)."""
    with tarfile.open(path) as tar:
        for m in tar:
            if m.name.endswith(".meta.json"):
                return json.loads(tar.extractfile(m).read())
    return {}


def _samples(shard_dir: Path, man: Manifest, k: int, bad: set[str]) -> list[str]:
    """Decoded first documents of ``k`` shards spread over the train split (then valid)."""
    shards = [
        s for s in man.split("train") + man.split("valid") if s.name not in bad and s.documents
    ]
    if not shards or k <= 0:
        return []
    picks = [shards[i * len(shards) // min(k, len(shards))] for i in range(min(k, len(shards)))]
    tok = None
    try:
        try:
            tok = Tokenizer.load(shard_dir / "tokenizer")
        except TokenizerError:
            tok = None
    except ImportError:
        tok = None
    out = []
    for s in picks:
        reader = ShardReader(shard_dir, s, man.dtype)
        try:
            ids, ws = reader.read(0)
            starts = reader.read_sentences(0) if reader.has_sentences else None
        except CorruptShardError as e:
            out.append(f"  {s.name}: {e}")
            continue
        finally:
            reader.close()
        meta = _first_meta(shard_dir / s.name)
        text = _decode(tok, ids)
        shown = _short(text, 300)
        counts = f"{len(ids)} tokens, {int(ws.sum())} words"
        if starts is not None:
            counts += f", {len(starts)} sentences"
        out.append(f"  [{s.name}] {meta.get('id', '?')}: {counts}")
        out.append(f"    {shown}")
        if starts is not None and len(starts) > 1:
            k = min(SHOWN_SENTENCES, len(starts))
            spans = zip(starts[:k].tolist(), [*starts[1:].tolist(), len(ids)][:k], strict=True)
            first = [_short(_decode(tok, ids[a:b]).strip(), 80) for a, b in spans]
            more = f" (+{len(starts) - k} more)" if len(starts) > k else ""
            out.append(f"    sentences: {' | '.join(first)}{more}")
    if tok is None:
        out.append("  (no loadable tokenizer in SHARD_DIR/tokenizer: showing token ids)")
    return out


def _decode(tok, ids) -> str:
    return tok.decode(ids.tolist()) if tok is not None else " ".join(map(str, ids[:64]))


def _short(text: str, limit: int) -> str:
    """``text`` on one line, cut at ``limit`` characters."""
    return text[:limit].replace("\n", "\\n") + (" ..." if len(text) > limit else "")


def add_arguments(parser) -> None:
    parser.add_argument("shard_dir", metavar="SHARD_DIR", help="directory made by preprocess")
    parser.add_argument(
        "--verify", action="store_true", help="check sha256 of every shard and index"
    )
    parser.add_argument(
        "--samples", type=int, default=3, metavar="K", help="decoded documents to show"
    )
    parser.add_argument(
        "--all", action="store_true", help=f"list every shard (default: first {SHOWN_SHARDS})"
    )


def main(args) -> int:
    shard_dir = Path(args.shard_dir)
    try:
        man = Manifest.load(shard_dir)
    except ShardFormatError as e:
        raise CommandError(str(e)) from e
    t = man.tokenizer
    print(f"{shard_dir}: {man.format} v{man.version}, token dtype {man.dtype}")
    print(
        f"tokenizer: {t.get('kind', '?')}, vocab {t.get('vocab_size', '?')}, "
        f"fingerprint {t.get('fingerprint', '?')}"
    )
    for split in ("train", "valid"):
        sh = man.split(split)
        sentences = f"{sum(s.sentences or 0 for s in sh)} sentences, " if man.version >= 3 else ""
        print(
            f"{split}: {len(sh)} shards, {sum(s.documents for s in sh)} documents, "
            f"{sum(s.tokens for s in sh)} tokens, {sentences}"
            f"{sum(s.bytes for s in sh) / 1e6:.2f} MB"
        )
    if "read" in man.stats:
        for line in ReadStats.from_dict(man.stats["read"]).summary_lines():
            print(f"read: {line}")
    problems = {}
    for s in man.shards:
        reason = shard_problem(shard_dir, s, full=args.verify)
        if reason is not None:
            problems[s.name] = reason
    print(
        f"{'shard':<28} {'split':<6} {'documents':>10} {'tokens':>12} {'sentences':>10} "
        f"{'bytes':>12}  status"
    )
    shown = man.shards if args.all else man.shards[:SHOWN_SHARDS]
    for s in shown:
        status = "BAD: " + problems[s.name] if s.name in problems else ("ok" if args.verify else "")
        sentences = "-" if s.sentences is None else s.sentences
        print(
            f"{s.name:<28} {s.split:<6} {s.documents:>10} {s.tokens:>12} {sentences:>10} "
            f"{s.bytes:>12}  {status}"
        )
    if len(shown) < len(man.shards):
        print(f"... {len(man.shards) - len(shown)} more shards (--all lists them)")
    for name, reason in problems.items():
        if all(name != s.name for s in shown):
            print(f"{name}: BAD: {reason}")
    if args.samples > 0:
        print("samples:")
        print("\n".join(_samples(shard_dir, man, args.samples, set(problems))))
    if problems:
        print(f"verification FAILED: {len(problems)} of {len(man.shards)} shards bad")
        return 1
    if args.verify:
        print(f"verification ok: {len(man.shards)} shards match the manifest (sha256)")
    return 0
