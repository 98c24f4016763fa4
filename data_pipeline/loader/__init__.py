"""The streaming loader: shards -> one rank's packed, dynamically masked micro-batches, in a
global order that does not depend on the number of ranks or workers, resumable exactly
and elastically (see ``stream`` for the guarantees, docs/loader.md for the user's view).

Modules, in the order a batch is made: ``config`` (settings, start-up checks, errors),
``ordering`` (the epoch's document order), ``packing`` (rows from documents), ``pairs``
(BERT/ALBERT sentence-pair rows),
``documents`` (reading documents on demand, checked), ``worker`` (building micro-batches,
in DataLoader workers: assembling and masking), ``stats`` (what was read and lost),
``stream`` (``PretrainLoader``: the rank's iterator, its position and state).
"""

from data_pipeline.loader.config import DataError, LoaderConfig, ShardCheckError
from data_pipeline.loader.stats import distinct_samples_lost
from data_pipeline.loader.stream import PretrainLoader, ValidationLoader, validation_loader

__all__ = [
    "DataError",
    "LoaderConfig",
    "PretrainLoader",
    "ShardCheckError",
    "ValidationLoader",
    "distinct_samples_lost",
    "validation_loader",
]
