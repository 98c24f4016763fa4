"""Preprocessing: a corpus into shards, on one process, local workers or MPI ranks.

``run(PreprocessConfig)`` is the entry point (``pipeline``). The input is cut into work
units by size alone (``partition``), each unit is tokenised and written to its own shards
by whoever takes it (``units``), ranks are MPI processes or one local stand-in (``mpi``),
and the output directory is claimed, resumed and finished with the manifest by
``out_dir``. The shard files are byte-identical for any number of ranks or workers. They
are written in the current shard format (``data_pipeline.shards``, version 3: token ids,
word starts and sentence starts per document); the format is part of a run's key, so a
re-run never mixes shards of two formats.
"""

from data_pipeline.preprocess.pipeline import PreprocessConfig, run

__all__ = ["PreprocessConfig", "run"]
