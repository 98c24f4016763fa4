"""Typed run config: TOML + dotted overrides, strict keys and types, batch-size arithmetic."""

import numpy as np
import pytest

from data_pipeline.common import CommandError
from pretrain.config import RunConfig, config_from_dict, load_config, to_toml
from pretrain.config.toml_io import ConfigError, apply_override, parse_value, tomllib

BASE = ["data.shard_dir=/tmp/shards", "run_dir=/tmp/run"]


def cfg_with(*overrides: str) -> RunConfig:
    return load_config(None, [*BASE, *overrides])


def test_overrides_are_toml_literals_and_reach_every_section():
    c = cfg_with(
        "optimizer.lr=6e-4",
        "optimizer.betas=[0.9, 0.98]",
        "zero.stage=2",
        "model.preset=roberta-debug",
        "model.overrides.hidden_dropout_prob=0.0",
        "data.seq_len=128",
        "masking.kind=wwm",
        "eval.max_sequences=32",
        "deepspeed.zero_optimization.overlap_comm=true",
        "logging.tensorboard=false",
    )
    assert c.optimizer.lr == 6e-4 and c.optimizer.betas == [0.9, 0.98]
    assert c.zero.stage == 2 and c.data.seq_len == 128 and c.masking.kind == "wwm"
    assert c.model.overrides == {"hidden_dropout_prob": 0.0}
    assert c.deepspeed == {"zero_optimization": {"overlap_comm": True}}
    assert c.logging.tensorboard is False and c.eval.max_sequences == 32
    # ints are accepted for floats, and bare words are strings
    assert cfg_with("optimizer.lr=1").optimizer.lr == 1.0
    assert parse_value("roberta-base") == "roberta-base" and parse_value("1_000") == 1000


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'run_dir = "r"\nmax_steps = 7\n[data]\nshard_dir = "s"\n[optimizer]\nlr = 0.5\n'
    )
    c = load_config(path, ["optimizer.lr=0.25"])
    assert (c.max_steps, c.optimizer.lr, c.data.shard_dir) == (7, 0.25, "s")


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lrr=1", "optimizer.lrr: unknown key; did you mean lr?"),
        (
            "model.overrides.hiden_size=8",
            "model.overrides.hiden_size: unknown key; did you mean hidden_size?",
        ),
        ("batch.global_batch_size=1.5", "batch.global_batch_size: expected int, got 1.5"),
        ("logging.tensorboard=1", "logging.tensorboard: expected bool"),
        ("model.arch=robert", "model.arch: unknown value 'robert'; did you mean roberta?"),
        ("zero.stage=4", "zero.stage"),
        ("data.packing=rows", "data.packing"),
        ("schedule.kind=cosin", "did you mean cosine?"),
        ("model.preset=electra-debug", "is a electra preset, not roberta"),
        ("zero.offload_param=cpu", "zero.offload_param needs zero.stage = 3"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        cfg_with(override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_required_keys_are_named():
    with pytest.raises(ConfigError, match=r"^data\.shard_dir: required key missing$"):
        load_config(None, ["run_dir=r"])
    with pytest.raises(ConfigError, match="run_dir: required"):
        load_config(None, ["data.shard_dir=s"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_override({}, "optimizer.lr")


def test_lamb_refuses_zero_because_of_the_per_layer_trust_ratio():
    with pytest.raises(ConfigError, match="lamb needs zero.stage=0"):
        cfg_with("optimizer.name=lamb", "zero.stage=1")
    assert cfg_with("optimizer.name=lamb").optimizer.name == "lamb"


def test_resolved_config_round_trips_through_toml():
    c = cfg_with(
        "model.preset=electra-debug",
        "model.arch=electra",
        "debug.poison_loss_steps=[3]",
        "model.overrides.rtd_weight=40.0",
        "deepspeed.zero_optimization.stage=1",
        'run_dir="with \\"quotes\\" and ünïcode"',
        "init_from=/x/y",
    )
    text = to_toml(c)
    again = config_from_dict(tomllib.loads(text))
    assert again == c
    assert to_toml(again) == text


@pytest.mark.parametrize(
    "world, micro, accum", [(1, 32, 256), (8, 32, 32), (64, 16, 8), (256, 32, 1), (2, 512, 8)]
)
def test_accumulation_is_derived_from_the_one_global_batch(world, micro, accum):
    c = cfg_with("batch.global_batch_size=8192", f"batch.micro_batch_size={micro}")
    assert c.batch.grad_accum(world) == accum
    assert world * micro * accum == 8192


def test_world_size_that_cannot_divide_the_batch_suggests_alternatives():
    c = cfg_with("batch.global_batch_size=8192", "batch.micro_batch_size=32")
    with pytest.raises(ConfigError) as e:
        c.batch.grad_accum(3)
    msg = str(e.value)
    assert "not divisible by world_size 3 x micro_batch_size 32" in msg
    assert "world sizes that work with micro_batch_size=32: 1, 2, 4, 8, 16, 32, 64, 128, 256" in msg
    assert "no micro-batch size works on 3 ranks" in msg
    c = cfg_with("batch.global_batch_size=96", "batch.micro_batch_size=32")
    with pytest.raises(
        ConfigError,
        match="micro-batch sizes that work on 2 ranks: 1, 2, 3, 4, 6, 8, 12, 16, 24, 48",
    ):
        c.batch.grad_accum(2)


def test_the_train_command_reports_an_indivisible_world_size_before_any_work(capsys):
    from data_pipeline.common import CommandError
    from pretrain.commands.train import dry_run

    c = cfg_with("batch.global_batch_size=8192", "batch.micro_batch_size=32")
    with pytest.raises(CommandError, match="world sizes that work with micro_batch_size=32"):
        dry_run(c, world_size=3)
    assert dry_run(c, world_size=64) == 0
    assert "gradient accumulation = 4  (8192 = 64 x 32 x 4)" in capsys.readouterr().out


def test_a_tokenizer_of_another_family_than_the_architectures_is_refused(tmp_path, capsys):
    from data_pipeline.synthetic import random_documents, tokenizer_info, write_shards
    from pretrain.commands.train import dry_run
    from pretrain.models import tokenizer_mismatch

    bert, roberta = ({**tokenizer_info(100), "family": f} for f in ("bert", "roberta"))
    assert tokenizer_mismatch("electra", bert) == (None, None)
    assert tokenizer_mismatch("roberta", roberta) == (None, None)
    error, _ = tokenizer_mismatch("deberta", roberta)
    assert error.startswith("model.arch = deberta expects a bert-family tokenizer ([CLS]")
    assert "the shards' tokenizer is of the roberta family (<s>" in error
    assert "train-tokenizer --family deberta" in error
    # Same special tokens, another kind of vocabulary than the paper's: a note only.
    _, note = tokenizer_mismatch("bert", {**bert, "kind": "spm-bpe"})
    assert note.startswith("note: bert is usually trained with a wordpiece tokenizer")
    assert tokenizer_mismatch("albert", {**bert, "kind": "spm-unigram"}) == (None, None)
    docs = random_documents(np.random.default_rng(0), 20, 100)
    write_shards(tmp_path, {"train": [docs]}, 100, tokenizer=roberta)
    args = [f"data.shard_dir={tmp_path}", "run_dir=/tmp/run", "model.arch=electra"]
    with pytest.raises(CommandError, match="model.arch = electra expects a bert-family"):
        dry_run(load_config(None, args), world_size=1)
    c = load_config(None, [*args, "data.tokenizer_mismatch=warn"])
    assert dry_run(c, world_size=1) == 0
    assert "warning: model.arch = electra expects a bert-family" in capsys.readouterr().out
