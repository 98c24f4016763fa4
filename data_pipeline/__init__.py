"""Corpus -> tokenizer -> shards -> batches.

Packages, in pipeline order: ``readers`` (txt/jsonl/parquet -> documents), ``tokenizer``
(train/load, word starts), ``shards`` (the on-disk format: tar + index + manifest),
``preprocess`` (corpus -> shards on workers or MPI ranks), ``loader`` (shards -> packed
micro-batches, exact and elastic resume), ``masking`` (dynamic masking). ``commands`` holds
the command-line front ends (``python -m data_pipeline``), ``common`` the plumbing shared
with ``pretrain`` (errors, CLI dispatch, file helpers).
"""
