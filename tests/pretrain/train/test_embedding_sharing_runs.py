"""DeBERTa-v3's embedding-sharing modes in training: validation reports the average cosine
similarity of the generator's and discriminator's token embeddings (the DeBERTa-v3 paper's
diagnostic): ES shares one table (exactly 1), GDES starts from it and drifts by its delta,
NES trains two tables that start unrelated."""

import pytest

from pretrain.testing import debug_config, losses
from pretrain.train import train

pytestmark = pytest.mark.slow
RUN = ["max_steps=4", "eval.every_steps=2", "checkpoint.every_steps=0", "data.seq_len=32"]


@pytest.mark.parametrize("mode", ["es", "nes", "gdes"])
def test_validation_reports_the_embedding_cosine_of_each_mode(shards, tmp_path, mode):
    cfg = debug_config(
        "deberta", shards, tmp_path, *RUN, f"model.overrides.embedding_sharing={mode}"
    )
    train(cfg)
    cosine = losses(tmp_path, "eval_embedding_cosine")
    assert sorted(cosine) == [2, 4]
    for table in ("generator", "discriminator"):
        similarity = losses(tmp_path, f"eval_{table}_embedding_similarity")
        assert sorted(similarity) == [2, 4] and all(-1 < v < 1 for v in similarity.values())
    if mode == "es":
        assert all(v == pytest.approx(1.0, abs=1e-6) for v in cosine.values())
    elif mode == "gdes":  # the delta starts at zero and learns: a little below 1
        assert 0.9 < cosine[4] < 1.0 - 1e-6
    else:  # two independently initialised tables
        assert abs(cosine[4]) < 0.2
