"""What a resumed run says about its model settings (``build.model_changes``)."""

import json

import pytest

from data_pipeline.common import CommandError
from pretrain.checkpoint import ResumePoint
from pretrain.checkpoint.run_model import model_json
from pretrain.models.deberta import PRESETS, Config
from pretrain.train.build import model_changes


def _point(tmp_path, saved: dict) -> ResumePoint:
    (tmp_path / "step_00000003").mkdir()
    (tmp_path / "step_00000003" / "model.json").write_text(json.dumps(saved))
    return ResumePoint(tmp_path, "step_00000003", {"step": 3})


def test_a_field_added_since_the_checkpoint_at_its_default_is_no_change(tmp_path):
    now = json.loads(model_json("deberta", Config(**PRESETS["deberta-debug"])))
    old = {"arch": "deberta", "config": dict(now["config"])}
    del old["config"]["share_att_key"]  # a checkpoint written before the field existed
    point = _point(tmp_path, old)
    assert model_changes(point, json.dumps(now)) is None
    other = json.loads(
        model_json("deberta", Config(**PRESETS["deberta-debug"], share_att_key=False))
    )
    assert model_changes(point, json.dumps(other)) == "share_att_key: None -> False"
    drop = json.loads(
        model_json("deberta", Config(**PRESETS["deberta-debug"], hidden_dropout_prob=0.0))
    )
    assert "hidden_dropout_prob: 0.1 -> 0.0" in model_changes(point, json.dumps(drop))
    with pytest.raises(CommandError, match="a deberta checkpoint; this config trains roberta"):
        model_changes(point, json.dumps({"arch": "roberta", "config": {}}))
