"""The ``[distill]`` section: recipe defaults, explicit overrides, validation errors, and the
shipped distillation configs through ``load_config`` and back through TOML."""

from __future__ import annotations

import pytest

from pretrain.config import DistillConfig, config_from_dict, load_config, to_toml, tomllib
from pretrain.config.distill import RECIPES, TERMS
from pretrain.config.toml_io import ConfigError
from pretrain.testing import CONFIGS

BASE = ["data.shard_dir=/tmp/shards", "run_dir=/tmp/run"]


def test_recipe_defaults():
    d = DistillConfig(teacher="runs/t")
    assert d.enabled and d.recipe == "distilbert"
    assert d.weights() == dict(ce=5.0, mlm=2.0, cos=1.0, embedding=0.0, hidden=0.0, attention=0.0)
    assert d.resolved_temperature() == 2.0 and d.resolved_student_init() == "every_other_layer"
    t = DistillConfig(teacher="runs/t", recipe="tinybert")
    assert t.weights() == dict(ce=0.0, mlm=0.0, cos=0.0, embedding=1.0, hidden=1.0, attention=1.0)
    assert t.resolved_temperature() == 1.0 and t.resolved_student_init() == "random"
    assert set(RECIPES) == {"distilbert", "tinybert"}
    assert not DistillConfig().enabled


def test_explicit_fields_override_the_recipe():
    d = DistillConfig(
        teacher="runs/t",
        recipe="tinybert",
        ce_weight=0.5,
        attention_weight=0,
        temperature=4,
        student_init="every_other_layer",
        layer_map=[2, 4],
    )
    assert d.weights() == dict(ce=0.5, mlm=0.0, cos=0.0, embedding=1.0, hidden=1.0, attention=0.0)
    assert all(isinstance(w, float) for w in d.weights().values())
    assert d.resolved_temperature() == 4.0 and d.resolved_student_init() == "every_other_layer"
    assert d.layer_map == [2, 4]


def test_all_zero_weights_are_an_error_only_with_a_teacher():
    zeros = dict(embedding_weight=0, hidden_weight=0, attention_weight=0, recipe="tinybert")
    with pytest.raises(ConfigError, match="every term's weight is 0"):
        DistillConfig(teacher="runs/t", **zeros)
    assert not any(DistillConfig(**zeros).weights().values())  # no teacher: no distillation
    every = {f"{t}_weight": 0.0 for t in TERMS}
    with pytest.raises(ConfigError, match="every term's weight is 0"):
        DistillConfig(teacher="runs/t", **every)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(recipe="tinybrt"), "distill.recipe: unknown value 'tinybrt'; did you mean tinybert?"),
        (dict(recipe="distill_bert"), "did you mean distilbert?"),
        (
            dict(student_init="every_other_layers"),
            "distill.student_init: unknown value 'every_other_layers'; "
            "did you mean every_other_layer?",
        ),
        (dict(student_init="randm"), "did you mean random?"),
        (dict(temperature=0.0), "distill.temperature must be > 0, got 0.0"),
        (dict(temperature=-1.0), "distill.temperature must be > 0"),
        (dict(layer_map=[0, 2]), "distill.layer_map: teacher blocks are 1-based"),
        *[(({f"{t}_weight": -0.5}), f"distill.{t}_weight must be >= 0, got -0.5") for t in TERMS],
    ],
)
def test_invalid_values_name_the_field(kw, message):
    with pytest.raises(ConfigError) as e:
        DistillConfig(teacher="runs/t", **kw)
    assert message in str(e.value)


def test_errors_surface_through_load_config():
    with pytest.raises(ConfigError, match="did you mean tinybert"):
        load_config(None, [*BASE, "distill.teacher=t", "distill.recipe=tinybrt"])
    with pytest.raises(ConfigError, match="distill.ce_weight must be >= 0"):
        load_config(None, [*BASE, "distill.ce_weight=-1"])
    with pytest.raises(ConfigError, match="distill.ce_weigth"):
        load_config(None, [*BASE, "distill.ce_weigth=1"])
    assert not load_config(None, BASE).distill.enabled


def roundtrip(cfg):
    text = to_toml(cfg)
    assert "[distill]" in text
    again = config_from_dict(tomllib.loads(text))
    assert again == cfg
    return text


def test_shipped_distilroberta_config_with_overrides_round_trips():
    c = load_config(
        CONFIGS / "debug-distilroberta.toml", ["distill.ce_weight=1.5", "distill.layer_map=[2]"]
    )
    d = c.distill
    assert d.enabled and d.teacher == "runs/debug-roberta" and d.recipe == "distilbert"
    assert d.weights() == dict(ce=1.5, mlm=2.0, cos=1.0, embedding=0.0, hidden=0.0, attention=0.0)
    assert d.resolved_temperature() == 2.0 and d.layer_map == [2]
    assert c.model.arch == "roberta" and c.model.overrides == {"num_hidden_layers": 1}
    text = roundtrip(c)
    assert "ce_weight = 1.5" in text and "temperature" not in text.split("[distill]")[1]


def test_shipped_tinybert_config_with_overrides_round_trips():
    c = load_config(
        CONFIGS / "debug-tinybert.toml",
        ["distill.temperature=3", "distill.hidden_weight=0.5", "distill.student_init=random"],
    )
    d = c.distill
    assert d.teacher == "runs/debug-bert" and d.recipe == "tinybert"
    assert d.weights() == dict(ce=0.0, mlm=0.0, cos=0.0, embedding=1.0, hidden=0.5, attention=1.0)
    assert d.resolved_temperature() == 3.0 and d.resolved_student_init() == "random"
    assert c.model.overrides["hidden_size"] == 32
    roundtrip(c)
    plain = load_config(CONFIGS / "debug-tinybert.toml")
    assert plain.distill.temperature is None and plain.distill.hidden_weight is None
    roundtrip(plain)
