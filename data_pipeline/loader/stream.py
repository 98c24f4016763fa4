"""The deterministic, resumable, elastic streaming loader of packed, dynamically masked rows.

Guarantees (see docs/loader.md):

* the global row sequence of an epoch depends only on (seed, epoch, shard set, seq_len,
  packing), never on the number of ranks or workers;
* global batch ``b`` is rows ``[b*G, (b+1)*G)``; rank ``r``'s accumulation step ``a`` gets rows
  ``b*G + (a*W + r)*M + [0, M)``. Every rank yields the same number of micro-batches; the last
  global batch of an epoch is completed with empty rows (id -1, nothing to predict);
* ``state_dict()`` is ``(epoch, rows consumed)``; after ``load_state_dict()`` the next batches
  are bit-identical to an uninterrupted run, for any number of workers, and the rows of every
  later global batch are the same set for any world size (elastic resume);
* corrupt or missing data is named at start-up (error, or skip with ``on_corrupt="skip"``) and
  counted when it appears mid-run (the document's tokens are dropped from its rows).

The plumbing (layout, reading, assembling, masking) lives in ``ordering``, ``packing``,
``documents`` and ``worker``, the configuration and start-up checks in ``config``; this
module is the main-process wrapper that tracks the position and the statistics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from data_pipeline.loader.config import DataError, LoaderConfig, check_split
from data_pipeline.loader.documents import ShardPool
from data_pipeline.loader.ordering import ShardTable, fingerprint
from data_pipeline.loader.stats import StreamStats
from data_pipeline.loader.worker import RankStream, StreamPlan, identity
from data_pipeline.masking import MaskingConfig
from data_pipeline.shards import Manifest, ShardFormatError

log = logging.getLogger(__name__)
STATE_VERSION = 1
_SPECIALS = ("cls", "sep", "pad", "unk", "mask")


class PretrainLoader:
    """One rank's infinite stream of masked micro-batches (see the module docstring)."""

    def __init__(
        self,
        cfg: LoaderConfig,
        masking: MaskingConfig,
        global_batch_size: int,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        finite: bool = False,
        fixed_masks: bool = False,
        max_batches: int | None = None,
        manifest: Manifest | None = None,
    ):
        """``finite``/``fixed_masks``/``max_batches`` are for ``validation_loader``: one pass
        over epoch 0 with epoch-0 masks, at most ``max_batches`` global batches. ``manifest``:
        ``cfg.shard_dir``'s, when the caller has read it already."""
        g, m, w = global_batch_size, micro_batch_size, world_size
        if min(g, m, w) < 1 or not 0 <= rank < w:
            raise ValueError(
                f"need batch sizes >= 1 and 0 <= rank < world_size, got {g=} {m=} {rank=} {w=}"
            )
        if g % (w * m):
            raise ValueError(
                f"global batch {g} is not a multiple of world_size x micro_batch = {w} x {m}"
            )
        self.cfg, self.masking = cfg, masking
        self.global_batch_size, self.micro_batch_size = g, m
        self.rank, self.world_size = rank, w
        self.grad_accum = g // (w * m)
        self.manifest = manifest if manifest is not None else Manifest.load(cfg.shard_dir)
        tok = self.manifest.tokenizer
        missing = [k for k in _SPECIALS if k not in tok.get("special_ids", {})]
        if missing or "vocab_size" not in tok:
            raise ShardFormatError(
                f"{cfg.shard_dir}/manifest.json: tokenizer entry lacks vocab_size or special ids {missing}"
            )
        if cfg.packing == "pairs" and self.manifest.version < 3:
            raise ShardFormatError(
                f"{cfg.shard_dir}: shard format {self.manifest.version} has no sentence starts, "
                'which data.packing = "pairs" needs (re-run preprocess: format 3 records them)'
            )
        self.fingerprint = fingerprint(self.manifest, cfg.split)
        self.table = ShardTable.build(self.manifest, cfg.split, check_split(self.manifest, cfg))
        self._finite, self._fixed, self._max_batches = finite, fixed_masks, max_batches
        self._epoch = self._batch = self._step = 0  # next micro-batch to hand out
        self._source = None
        self._bpe: dict[int, int] = {}
        self._stats = StreamStats(cfg.seq_len, self.table, log)

    # -- iteration ----------------------------------------------------------------------------
    def _plan(self) -> StreamPlan:
        tok = self.manifest.tokenizer
        c = self.cfg
        return StreamPlan(
            shard_dir=str(c.shard_dir),
            table=self.table,
            dtype=self.manifest.dtype,
            special_ids={k: int(tok["special_ids"][k]) for k in _SPECIALS},
            vocab_size=int(tok["vocab_size"]),
            seq_len=c.seq_len,
            packing=c.packing,
            pad_doc_rows=c.pad_doc_rows,
            pair_task=c.pair_task,
            short_seq_prob=c.short_seq_prob,
            shuffle=c.shuffle,
            shuffle_block=c.shuffle_block,
            seed=c.seed,
            masking=self.masking,
            global_batch=self.global_batch_size,
            micro_batch=self.micro_batch_size,
            rank=self.rank,
            world_size=self.world_size,
            start_epoch=self._epoch,
            start_batch=self._batch,
            start_micro=self._step,
            finite=self._finite,
            fixed_masks=self._fixed,
            max_batches=self._max_batches,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of this rank from the current position (after ``load_state_dict``:
        the restored one)."""
        self._shutdown()
        if self._finite:  # validation: every pass starts over, with fresh statistics
            self._epoch = self._batch = self._step = 0
            self._stats = StreamStats(self.cfg.seq_len, self.table, log)
        return self._generate(RankStream(self._plan()))

    def _generate(self, dataset: RankStream):
        c = self.cfg
        if c.num_workers > 0:
            source = iter(
                DataLoader(
                    dataset,
                    batch_size=None,
                    num_workers=c.num_workers,
                    collate_fn=identity,
                    prefetch_factor=c.prefetch_factor,
                    pin_memory=c.pin_memory and torch.cuda.is_available(),
                    # Its own generator: starting workers draws a seed from it, and drawing
                    # from the global one would shift dropout after a resume (or with another
                    # num_workers). Nothing in a worker uses torch's RNG (masks are hashed).
                    generator=torch.Generator().manual_seed(c.seed),
                )
            )
        else:
            source = iter(dataset)
        self._source = source
        try:
            while True:
                try:
                    batch = next(source)
                except StopIteration:
                    return
                except RuntimeError as e:  # a worker killed (e.g. out of memory)
                    if not str(e).startswith("DataLoader worker"):
                        raise
                    raise DataError(f"data: {str(e).splitlines()[0]}") from None
                if "_error" in batch:  # raised while building it (in a worker or here)
                    raise DataError(batch["_error"])
                self._account(batch.pop("_info"))
                yield batch
        finally:
            if self._source is source:
                self._shutdown()

    def _account(self, info: dict) -> None:
        for problem in self._stats.add(info):
            if self.cfg.on_corrupt == "error":
                raise DataError(
                    f"data: {problem} (re-run preprocess to repair the shards, or set "
                    "data.on_corrupt=skip to train without what is damaged)"
                )
            log.warning("data: skipped %s (counted in the run's summary.json)", problem)
        epoch, b, a = info["epoch"], info["batch"], info["step"]
        if a + 1 < self.grad_accum:
            self._epoch, self._batch, self._step = epoch, b, a + 1
        elif info["last"]:
            self._epoch, self._batch, self._step = epoch + 1, 0, 0
        else:
            self._epoch, self._batch, self._step = epoch, b + 1, 0

    def _shutdown(self) -> None:
        source, self._source = self._source, None
        if source is not None and hasattr(source, "_shutdown_workers"):
            source._shutdown_workers()  # stop workers now rather than at garbage collection
        elif source is not None and hasattr(source, "close"):
            source.close()

    def close(self) -> None:
        """Stop the workers; the loader can be iterated again afterwards."""
        self._shutdown()

    # -- position -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position at a global-batch boundary: ``(epoch, samples_consumed)`` plus what must match."""
        if self._step:
            raise RuntimeError(
                f"state_dict() in the middle of a global batch (after micro-batch {self._step} "
                f"of {self.grad_accum}); take it after a whole global batch"
            )
        c = self.cfg
        return {
            **self._pair_settings(),
            "version": STATE_VERSION,
            "seed": c.seed,
            "epoch": self._epoch,
            "samples_consumed": self._batch * self.global_batch_size,
            "global_batch_size": self.global_batch_size,
            "seq_len": c.seq_len,
            "packing": c.packing,
            "pad_doc_rows": c.pad_doc_rows,
            "shuffle": c.shuffle,
            "shuffle_block": c.shuffle_block,
            "split": c.split,
            "manifest_fingerprint": self.fingerprint,
            "skipped_shards": sorted(self.table.skipped),
        }

    def _pair_settings(self) -> dict:
        """What else decides the rows of sentence pairs (absent otherwise, so that states
        written before pairs existed still load)."""
        c = self.cfg
        if c.packing != "pairs":
            return {}
        return {"pair_task": c.pair_task, "short_seq_prob": c.short_seq_prob}

    def load_state_dict(self, sd: dict) -> None:
        """Continue from ``sd``'s position; refuses a state of a different data setup."""
        if sd.get("version") != STATE_VERSION:
            raise ValueError(
                f"loader state version {sd.get('version')!r}, this code reads {STATE_VERSION}"
            )
        c = self.cfg
        expect = {
            "global_batch_size": self.global_batch_size,
            "seq_len": c.seq_len,
            "packing": c.packing,
            "pad_doc_rows": c.pad_doc_rows,
            "seed": c.seed,
            "shuffle": c.shuffle,
            "shuffle_block": c.shuffle_block,
            "split": c.split,
            "manifest_fingerprint": self.fingerprint,
            **self._pair_settings(),
        }
        for key, value in expect.items():
            if sd.get(key) != value:
                what = "shard set" if key == "manifest_fingerprint" else key
                raise ValueError(
                    f"cannot resume the data stream: {what} was {sd.get(key)!r} in the checkpoint, "
                    f"is {value!r} now (the sample order would differ)"
                )
        done, epoch = sd.get("samples_consumed"), sd.get("epoch")
        if (
            not isinstance(epoch, int)
            or not isinstance(done, int)
            or epoch < 0
            or done < 0
            or done % self.global_batch_size
        ):
            raise ValueError(
                f"loader state position (epoch {epoch!r}, samples_consumed {done!r}) "
                f"is not a whole number of global batches of {self.global_batch_size}"
            )
        if sorted(sd.get("skipped_shards", [])) != sorted(self.table.skipped):
            log.warning(
                "data: resuming with skipped shards %s (checkpoint: %s): rows after this point "
                "differ from the original run's",
                sorted(self.table.skipped),
                sd.get("skipped_shards"),
            )
        self._shutdown()
        self._epoch, self._batch, self._step = epoch, done // self.global_batch_size, 0

    # -- information --------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        """Global batches of the current epoch (``ceil(rows / G)``; with ``packing="doc"`` this
        reads the index of every shard of the split once per epoch)."""
        e = 0 if self._finite else self._epoch
        if e not in self._bpe:
            plan = self._plan()
            pool = ShardPool(plan.shard_dir, plan.table, plan.dtype)
            try:
                rows = plan.layout(e, pool).total_rows()
            finally:
                pool.close()
            self._bpe = {e: -(-rows // self.global_batch_size)}
        n = self._bpe[e]
        return n if self._max_batches is None else min(n, self._max_batches)

    def stats(self) -> dict:
        """Counters of the batches handed out so far (see ``StreamStats``) and the position."""
        out = self._stats.as_dict()
        out.update(
            epoch=self._epoch,
            global_batches_done=self._batch,
            samples_consumed=self._batch * self.global_batch_size,
        )
        return out


class ValidationLoader:
    """One finite, identical pass over the "valid" split per iteration (see ``validation_loader``)."""

    def __init__(self, loader: PretrainLoader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        """Micro-batches per pass on every rank."""
        return self.loader.batches_per_epoch()

    def stats(self) -> dict:
        return self.loader.stats()

    def close(self) -> None:
        self.loader.close()


def validation_loader(
    cfg: LoaderConfig,
    masking: MaskingConfig,
    micro_batch_size: int,
    rank: int,
    world_size: int,
    max_batches: int | None = None,
    manifest: Manifest | None = None,
) -> ValidationLoader:
    """The "valid" split in manifest order with fixed (epoch-0) masks; every iteration is the
    same finite pass, and every rank yields the same number of micro-batches (the global batch
    is ``micro_batch_size * world_size``; the last one is completed with empty rows)."""
    vcfg = dataclasses.replace(cfg, split="valid", shuffle=False)
    loader = PretrainLoader(
        vcfg,
        masking,
        micro_batch_size * world_size,
        micro_batch_size,
        rank,
        world_size,
        finite=True,
        fixed_masks=True,
        max_batches=max_batches,
        manifest=manifest,
    )
    return ValidationLoader(loader)
