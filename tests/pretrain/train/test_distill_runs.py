"""Distillation runs end to end on CPU: a teacher trained here, then students.

- ``deepspeed --num_gpus 2 launch/pretrain.sh --config configs/debug-distilroberta.toml``
  (DistilBERT's recipe, ZeRO 0) and a torchrun launch (TinyBERT's terms through W_e / W_h at
  ZeRO 1; DistilBERT's at ZeRO 3) match the same runs on one rank;
- a stopped and resumed run is bit-identical to the unbroken one (projections and their
  optimizer state included); a resume with another teacher is refused;
- the teacher from its HF export trains exactly as from its run directory;
- checkpoints hold ``student.*`` and ``proj.*`` only; the export is the student, a normal HF
  model with the student's logits.
"""

import json
import subprocess

import pytest
import torch

from data_pipeline.common import CommandError
from pretrain.checkpoint import load_run_model
from pretrain.engine import consolidated_state_dict
from pretrain.export import export_model
from pretrain.testing import (
    REPO,
    clean_env,
    debug_config,
    deepspeed_command,
    losses,
    short_run,
    torchrun_specs,
)
from pretrain.train import train

pytestmark = pytest.mark.slow
STEPS = 8
COMMON = short_run(STEPS, checkpoint_every=4)
# TinyBERT's terms with a student of half the teacher's width (projections W_e / W_h).
TINY = [
    "distill.recipe=tinybert",
    "model.overrides.hidden_size=32",
    "model.overrides.intermediate_size=64",
]
DISTIL_KEYS = ("loss", "mlm_loss", "distill_ce", "distill_cos", "grad_norm", "eval_loss")
TINY_KEYS = ("loss", "distill_embedding", "distill_hidden", "distill_attention", "grad_norm")


def _overrides(shards, run_dir, teacher, *extra):
    return [
        f"data.shard_dir={shards}",
        f"run_dir={run_dir}",
        f"distill.teacher={teacher}",
        *COMMON,
        *extra,
    ]


def _student(shards, run_dir, teacher, *extra):
    return debug_config(
        "distilroberta", shards, run_dir, f"distill.teacher={teacher}", *COMMON, *extra
    )


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    shards = corpus  # the sample corpus: a tokenizer, so the teacher has an HF export
    base = tmp_path_factory.mktemp("distill")
    teacher, other = base / "teacher", base / "other-teacher"
    teacher_cfg = ["data.seq_len=32", "max_steps=6", "checkpoint.export_hf=true"]
    train(debug_config("roberta", shards, teacher, *teacher_cfg, "eval.every_steps=0"))
    train(
        debug_config(
            "roberta",
            shards,
            other,
            "seed=1",
            "max_steps=1",
            "schedule.warmup_steps=0",
            "data.seq_len=32",
        )
    )
    # Two ranks: as users launch it, then the other runs in one torchrun launch.
    cmd = deepspeed_command(
        shards,
        base / "kd-z0",
        *_overrides(shards, base / "kd-z0", teacher)[2:],
        arch="distilroberta",
    )
    res = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    cfg = str(REPO / "configs/debug-distilroberta.toml")
    spec = [
        {
            "config": cfg,
            "overrides": _overrides(shards, base / "tiny-z1", teacher, "zero.stage=1", *TINY),
        },
        {"config": cfg, "overrides": _overrides(shards, base / "kd-z3", teacher, "zero.stage=3")},
    ]
    res = torchrun_specs(spec, base / "spec.json")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    # One rank, in this process: the references, a stopped + resumed run, the HF teacher.
    train(_student(shards, base / "kd-one", teacher))
    train(_student(shards, base / "tiny-one", teacher, *TINY))
    train(_student(shards, base / "tiny-stop", teacher, *TINY, "max_steps=3", "eval.at_end=false"))
    train(_student(shards, base / "tiny-stop", teacher, *TINY, "checkpoint.export_hf=true"))
    train(_student(shards, base / "kd-hf", teacher / "hf"))
    return {"base": base, "shards": shards, "teacher": teacher, "other": other}


def _assert_close(a: dict, b: dict, tol: float) -> None:
    assert list(a) == list(b) and a
    for step in a:
        assert abs(a[step] - b[step]) <= tol * max(1.0, abs(b[step])), (step, a[step], b[step])


@pytest.mark.parametrize(
    "two,one,keys",
    [
        ("kd-z0", "kd-one", DISTIL_KEYS),
        ("kd-z3", "kd-one", DISTIL_KEYS),
        ("tiny-z1", "tiny-one", TINY_KEYS),
    ],
)
def test_two_ranks_match_one_rank(runs, two, one, keys):
    base = runs["base"]
    assert sorted(losses(base / two)) == list(range(1, STEPS + 1))
    for key in keys:
        _assert_close(losses(base / two, key), losses(base / one, key), 1e-5)


def test_a_stopped_and_resumed_run_is_bit_identical(runs):
    base = runs["base"]
    for key in (*TINY_KEYS, "mlm_loss", "eval_loss", "eval_distill_attention"):
        assert losses(base / "tiny-stop", key) == losses(base / "tiny-one", key), key


def test_the_hf_export_of_the_teacher_teaches_exactly_as_its_run_directory(runs):
    base = runs["base"]
    for key in DISTIL_KEYS:
        assert losses(base / "kd-hf", key) == losses(base / "kd-one", key), key
    plans = [
        json.loads((base / run / "checkpoints/step_00000008/model.json").read_text())["distill"]
        for run in ("kd-one", "kd-hf")
    ]
    assert plans[0]["teacher_fingerprint"] == plans[1]["teacher_fingerprint"]
    assert plans[0]["weights"] == {
        "ce": 5.0,
        "mlm": 2.0,
        "cos": 1.0,
        "embedding": 0.0,
        "hidden": 0.0,
        "attention": 0.0,
    }


def test_resuming_with_another_teacher_is_refused(runs):
    base = runs["base"]
    cfg = _student(runs["shards"], base / "kd-one", runs["other"], f"max_steps={STEPS + 2}")
    with pytest.raises(CommandError, match="resume needs the same teacher"):
        train(cfg)


def test_checkpoints_hold_the_student_and_projections_and_export_the_student(runs, tmp_path):
    base = runs["base"]
    tag = base / "tiny-one/checkpoints/step_00000008"
    student, tokenizer_dir = load_run_model(base / "tiny-one")
    state = consolidated_state_dict(tag, student)
    assert {k.split(".")[0] for k in state} == {"student", "proj"}
    assert state["proj.hidden.weight"].shape == (64, 32)  # W_h: student 32 -> teacher 64
    assert student.config.hidden_size == 32 and student.config.num_hidden_layers == 1
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, state[f"student.{name}"]), name

    transformers = pytest.importorskip("transformers")
    out = export_model(student, tokenizer_dir, tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    ids = torch.randint(5, student.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        ours = student.mlm_logits(ids, mask)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert (base / "tiny-stop/hf/model.safetensors").is_file()  # the run's own export
    assert json.loads((base / "tiny-stop/hf/config.json").read_text())["hidden_size"] == 32


def test_a_deberta_student_learns_from_a_roberta_teacher_and_exports(runs, tmp_path):
    """Another architecture than the teacher's (one tokenizer): DeBERTa (MLM) with every term
    on, attention scores from its disentangled attention; the export is a DeBERTa model."""
    deberta = [
        "model.arch=deberta",
        "model.preset=deberta-debug",
        "model.overrides.objective=mlm",
        "model.overrides.num_hidden_layers=1",
        "data.tokenizer_mismatch=warn",  # RoBERTa's <s> </s> for DeBERTa: on purpose here
        "distill.student_init=random",
        "distill.attention_weight=1",
        "distill.hidden_weight=1",
        "distill.embedding_weight=1",
        "max_steps=3",
        "checkpoint.export_hf=true",
    ]
    run = tmp_path / "deberta"
    train(_student(runs["shards"], run, runs["teacher"], *deberta))
    rec = losses(run, "distill_attention")
    assert sorted(rec) == [1, 2, 3] and all(v > 0 for v in rec.values())
    assert json.loads((run / "hf/config.json").read_text())["model_type"] == "deberta-v2"
