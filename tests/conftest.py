"""Fixtures shared across the suite (pytest finds them here for every test module).

- ``shards``: random-token shards (train 2 x 300 documents, valid 60), built once per
  session and read-only; ``shards_copy``: a private, writable copy for tests that damage it.
- ``corpus``: the built-in sample corpus through the real tokenizer and preprocessing
  commands (``corpus/shards``), built once per session; ``bert_corpus``: the same with a
  BERT-family WordPiece tokenizer.
"""

from __future__ import annotations

import shutil

import pytest

from pretrain.testing import corpus_shards, synthetic_shards


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return synthetic_shards(tmp_path_factory.getbasetemp() / "synthetic-shards")


@pytest.fixture
def shards_copy(shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return corpus_shards(tmp_path_factory.getbasetemp() / "sample-corpus")


@pytest.fixture(scope="session")
def bert_corpus(tmp_path_factory):
    """The sample corpus with BERT's tokenizer (WordPiece, [CLS] [SEP] ...)."""
    return corpus_shards(tmp_path_factory.getbasetemp() / "sample-corpus-bert", family="bert")
