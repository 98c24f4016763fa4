"""Counters of a rank's stream, kept in the rank's main process from each micro-batch's ``_info``.

Workers cannot share counters with the main process, so every micro-batch carries what was
done to build it (documents read, tokens, corruption events) and the loader adds it up here
when the batch is handed to the trainer: statistics therefore describe exactly the batches
consumed, whatever the number of workers and however far they prefetched.
"""

from __future__ import annotations

import logging

from data_pipeline.loader.ordering import ShardTable


class StreamStats:
    """Packing efficiency, reads and losses of the micro-batches handed out so far."""

    def __init__(self, seq_len: int, table: ShardTable, log: logging.Logger):
        self.seq_len, self.log = seq_len, log
        self.micro_batches = self.rows = self.empty_rows = 0
        self.tokens = self.content_tokens = self.predicted = 0
        self.docs_read = self.tokens_read = 0
        by_name = {s.name: s for s in table.shards}
        # Shards skipped at start-up: every one of their documents is lost, every epoch.
        self.skipped_shards = {
            name: {"reason": reason, "samples_lost": by_name[name].documents, "when": "start-up"}
            for name, reason in table.skipped.items()
        }
        self.lost_docs: dict[str, set[int]] = {}
        self.damage: list[str] = []  # what was found, in order (the first MAX_LISTED)

    MAX_LISTED = 100

    def add(self, info: dict) -> list[str]:
        """Count one micro-batch; returns the problems it newly found (one line each)."""
        self.micro_batches += 1
        for key in (
            "rows",
            "empty_rows",
            "tokens",
            "content_tokens",
            "predicted",
            "docs_read",
            "tokens_read",
        ):
            setattr(self, key, getattr(self, key) + info[key])
        new = [m for m in map(self._event, info["events"]) if m is not None]
        self.damage += new[: max(0, self.MAX_LISTED - len(self.damage))]
        return new

    def _event(self, event: tuple) -> str | None:
        # Several workers may hit the same damage (a document shared by two rows, a shard
        # touched by every worker): report each shard / document once.
        if event[0] == "shard":
            _, name, reason, docs = event
            if name in self.skipped_shards:
                return None
            self.skipped_shards[name] = {"reason": reason, "samples_lost": docs, "when": "mid-run"}
            return f"shard {name} unreadable mid-run: {reason} ({docs} samples)"
        _, name, doc, reason = event
        seen = self.lost_docs.setdefault(name, set())
        if doc in seen:
            return None
        seen.add(doc)
        return f"{name}: {reason}"

    def as_dict(self) -> dict:
        slots = self.rows * self.seq_len
        lost_docs = {name: len(docs) for name, docs in sorted(self.lost_docs.items())}
        # A document of a shard lost as a whole is counted with the shard, not again here.
        lost_docs = {k: v for k, v in lost_docs.items() if k not in self.skipped_shards}
        return {
            "micro_batches": self.micro_batches,
            "rows": self.rows,
            "empty_rows": self.empty_rows,
            "tokens": self.tokens,
            "content_tokens": self.content_tokens,
            "predicted_tokens": self.predicted,
            "packing_efficiency": self.tokens / slots if slots else 0.0,
            "content_fraction": self.content_tokens / slots if slots else 0.0,
            "docs_read": self.docs_read,
            "tokens_read": self.tokens_read,
            "skipped_shards": dict(sorted(self.skipped_shards.items())),
            "lost_documents": lost_docs,
            "lost_document_ids": {
                name: sorted(docs)
                for name, docs in sorted(self.lost_docs.items())
                if name not in self.skipped_shards
            },
            "damage": list(self.damage),
            "samples_lost": sum(s["samples_lost"] for s in self.skipped_shards.values())
            + sum(lost_docs.values()),
        }


def distinct_samples_lost(stats: list[dict]) -> int:
    """Samples lost by a whole job, from every rank's ``as_dict()``: each lost shard and each
    lost document counted once, however many ranks (or epochs) met it."""
    shards: dict[str, int] = {}
    for st in stats:
        for name, info in st.get("skipped_shards", {}).items():
            shards[name] = info["samples_lost"]
    docs = {
        (name, doc)
        for st in stats
        for name, ids in st.get("lost_document_ids", {}).items()
        if name not in shards
        for doc in ids
    }
    return sum(shards.values()) + len(docs)
