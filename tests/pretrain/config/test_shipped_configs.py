"""Every shipped config parses, derives its DeepSpeed config and builds its model."""

import pytest

from pretrain.commands.train import dry_run
from pretrain.config import load_config
from pretrain.testing import CONFIGS

SHIPPED = sorted(p.name for p in CONFIGS.glob("*.toml"))


def test_the_expected_configs_ship():
    for name in (
        "debug-bert.toml",
        "debug-albert.toml",
        "bert-base.toml",
        "albert-base.toml",
        "debug-roberta.toml",
        "debug-electra.toml",
        "debug-deberta.toml",
        "quickstart.toml",
        "roberta-base.toml",
        "electra-small.toml",
        "electra-base.toml",
        "deberta-v3-base.toml",
        "distilroberta.toml",
        "tinybert.toml",
        "debug-distilroberta.toml",
        "debug-tinybert.toml",
        "spanbert-base.toml",
        "debug-spanbert.toml",
    ):
        assert name in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_config_parses_and_builds(name, capsys):
    cfg = load_config(CONFIGS / name)
    assert dry_run(cfg, world_size=None) == 0  # builds the model on the meta device
    out = capsys.readouterr().out
    assert "# resolved config" in out and "gradient accumulation = " in out
    assert "'total': " in out and '"train_batch_size": ' in out
    if cfg.distill.enabled:
        assert f"distillation = recipe {cfg.distill.recipe}" in out


def test_paper_recipes_keep_their_global_batch_on_any_dividing_world_size():
    rob = load_config(CONFIGS / "roberta-base.toml")
    assert (rob.batch.global_batch_size, rob.data.seq_len, rob.max_steps) == (8192, 512, 500_000)
    assert (rob.optimizer.lr, rob.optimizer.betas, rob.optimizer.eps) == (6e-4, [0.9, 0.98], 1e-6)
    assert (rob.schedule.warmup_steps, rob.optimizer.weight_decay) == (24_000, 0.01)
    for world in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        accum = rob.batch.grad_accum(world)
        assert world * rob.batch.micro_batch_size * accum == 8192
    small = load_config(CONFIGS / "electra-small.toml")
    assert (small.masking.mask_token_prob, small.masking.random_token_prob) == (0.85, 0.0)
    assert small.model.overrides["rtd_weight"] == 50.0 and small.optimizer.lr == 5e-4


def test_bert_and_albert_recipes_are_the_papers():
    bert = load_config(CONFIGS / "bert-base.toml")
    assert (bert.model.arch, bert.model.preset) == ("bert", "bert-base")
    assert (bert.data.packing, bert.data.pair_task, bert.data.short_seq_prob) == (
        "pairs",
        "nsp",
        0.1,
    )
    assert (bert.batch.global_batch_size, bert.data.seq_len, bert.max_steps) == (
        256,
        512,
        1_000_000,
    )
    assert (bert.optimizer.lr, bert.optimizer.betas, bert.schedule.warmup_steps) == (
        1e-4, [0.9, 0.999], 10_000,
    )  # fmt: skip
    albert = load_config(CONFIGS / "albert-base.toml")
    assert (albert.model.arch, albert.data.pair_task) == ("albert", "sop")
    assert (albert.optimizer.name, albert.optimizer.lr, albert.zero.stage) == ("lamb", 0.00176, 0)
    assert (albert.batch.global_batch_size, albert.max_steps) == (4096, 125_000)
    assert (albert.masking.kind, albert.masking.span_max) == ("span", 3)
