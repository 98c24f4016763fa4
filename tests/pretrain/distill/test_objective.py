"""``pretrain.train.distill``: each distillation term divided by its own global count across
micro-batches and ranks, logged as ``distill_<term>`` / ``eval_distill_<term>``; model.json
carries the plan, and a resume refuses another teacher."""

from __future__ import annotations

import json
import types

import pytest
import torch

from data_pipeline.common import CommandError
from pretrain.distill.distiller import Distiller, Plan
from pretrain.distill.losses import visible_pairs
from pretrain.models import bert
from pretrain.testing import TINY_ENCODER
from pretrain.train.distill import KD_TERMS, DistillObjective, check_teacher_unchanged, distill_json

V, T = 97, 12
TINY = dict(TINY_ENCODER, vocab_size=V)
WEIGHTS = dict(ce=5.0, mlm=2.0, cos=1.0, embedding=0.5, hidden=0.25, attention=0.125)


def plan(**kw) -> Plan:
    base = dict(
        weights=dict(WEIGHTS),
        temperature=2.0,
        layer_map=[2],
        student_hidden=16,
        teacher_hidden=32,
        teacher="runs/teacher",
        teacher_arch="bert",
        teacher_fingerprint="ab" * 32,
    )
    return Plan(**{**base, **kw})


def distiller(weights=WEIGHTS) -> Distiller:
    torch.manual_seed(0)
    teacher = bert.Model(bert.Config(**TINY)).eval()
    student = bert.Model(bert.Config(**{**TINY, "hidden_size": 16, "num_hidden_layers": 1}))
    d = Distiller(student.eval(), plan(weights=dict(weights)))
    d.attach_teacher(teacher, "cpu", torch.float32)
    return d


def micro_batch(i: int) -> dict:
    """Rows padded by a different amount in each micro-batch; two documents per row."""
    g = torch.Generator().manual_seed(10 + i)
    ids = torch.randint(3, V, (2, T), generator=g)
    attn = torch.ones_like(ids)
    attn[1, T - 2 - i :] = 0
    ids[~attn.bool()] = 0
    labels = torch.where(
        (torch.rand(ids.shape, generator=g) < 0.2 + 0.1 * i) & attn.bool(), ids, -100
    )
    labels[:, 1] = ids[:, 1]
    cut = 3 + i
    seg = torch.tensor([[1] * cut + [2] * (T - cut)] * 2) * attn
    return dict(input_ids=ids, attention_mask=attn, labels=labels, segment_ids=seg)


def visible(b: dict, segments: bool) -> int:
    real = b["attention_mask"].bool()
    ok = real[:, :, None] & real[:, None, :]
    if segments:
        ok &= b["segment_ids"][:, :, None] == b["segment_ids"][:, None, :]
    return int(ok.sum())


def direct(batches: list[dict], outs: list[dict]) -> dict[str, float]:
    n_mlm = sum(int((b["labels"] != -100).sum()) for b in batches)
    n_tok = sum(int(b["attention_mask"].sum()) for b in batches)
    n_vis = sum(visible(b, True) for b in batches)
    count = dict(mlm=n_mlm, ce=n_mlm, cos=n_tok, embedding=n_tok, hidden=n_tok, attention=n_vis)
    key = {t: f"kd_{t}_sum" for t in KD_TERMS} | {"mlm": "mlm_loss_sum"}
    return {t: sum(float(o[key[t]]) for o in outs) / count[t] for t in count}


def test_loss_metrics_and_eval_metrics_normalise_each_term_by_its_global_count():
    d = distiller()
    batches = [micro_batch(i) for i in range(4)]
    ranks = [batches[:2], batches[2:]]  # 2 ranks x 2 micro-batches
    objs = [DistillObjective(WEIGHTS) for _ in ranks]
    counts = sum(o.local_counts(r, segments=True) for o, r in zip(objs, ranks, strict=True))
    with torch.no_grad():
        outs = [[d(**b) for b in r] for r in ranks]
    total = 0.0
    for o, rank_outs in zip(objs, outs, strict=True):
        o.set_step(counts, grad_accum=2, world_size=2)
        total += sum(float(o.loss(out)) for out in rank_outs)
    flat = [o for r in outs for o in r]
    want = direct(batches, flat)
    assert len(set(want.values())) == len(want)  # the terms really differ
    loss = sum(WEIGHTS[t] * v for t, v in want.items())
    assert total / (2 * 2) == pytest.approx(loss, rel=1e-6)
    assert counts[3] == sum(visible(b, True) for b in batches)
    assert counts[3] == sum(int(o["kd_attention_count"]) for o in flat)
    assert counts[1] == sum(int(o["kd_tokens"]) for o in flat)
    sums = sum(o.take_sums()[0] for o in objs)  # the all-reduce
    m = objs[0].metrics(sums, steps=1)
    assert m["mlm_loss"] == pytest.approx(want["mlm"], rel=1e-6)
    for t in KD_TERMS:
        assert m[f"distill_{t}"] == pytest.approx(want[t], rel=1e-6), t
    assert m["loss"] == pytest.approx(loss, rel=1e-6)
    ev = objs[0].eval_metrics(sum(objs[0].raw_sums(o) for o in flat))
    assert ev["eval_mlm_loss"] == pytest.approx(want["mlm"], rel=1e-6)
    for t in KD_TERMS:
        assert ev[f"eval_distill_{t}"] == pytest.approx(want[t], rel=1e-6), t
    assert ev["eval_loss"] == pytest.approx(loss, rel=1e-6)


def test_terms_with_weight_zero_are_neither_computed_nor_logged():
    w = dict(ce=0.0, mlm=0.0, cos=0.0, embedding=1.0, hidden=2.0, attention=0.0)
    d, b = distiller(w), micro_batch(0)
    obj = DistillObjective(w)
    counts = obj.local_counts([b], segments=True)
    assert counts[3] == 0  # no attention term: nothing counted
    with torch.no_grad():
        out = d(**b)
    assert "kd_ce_sum" not in out and "kd_attention_sum" not in out
    obj.set_step(counts, grad_accum=1, world_size=1)
    n_tok = int(b["attention_mask"].sum())
    want = (float(out["kd_embedding_sum"]) + 2 * float(out["kd_hidden_sum"])) / n_tok
    assert float(obj.loss(out)) == pytest.approx(want, rel=1e-6)
    m = obj.metrics(*obj.take_sums())
    assert {k for k in m if k.startswith("distill_")} == {"distill_embedding", "distill_hidden"}
    assert m["loss"] == pytest.approx(want, rel=1e-6)
    ev = obj.eval_metrics(obj.raw_sums(out))
    assert ev["eval_loss"] == pytest.approx(want, rel=1e-6) and "eval_distill_ce" not in ev


def test_local_counts_count_visible_pairs():
    obj = DistillObjective(WEIGHTS)
    batches = [micro_batch(i) for i in range(2)]
    for segments in (False, True):
        c = obj.local_counts(batches, segments)
        pairs = sum(
            int(visible_pairs(b["attention_mask"], b["segment_ids"] if segments else None).sum())
            for b in batches
        )
        assert c.dtype == torch.float64 and c.shape == (4,)
        assert c[3] == pairs == sum(visible(b, segments) for b in batches)
        assert c[0] == sum(int((b["labels"] != -100).sum()) for b in batches)
    assert obj.local_counts(batches, True)[3] < obj.local_counts(batches, False)[3]
    assert torch.equal(obj.local_counts([], True), torch.zeros(4, dtype=torch.float64))


def test_model_json_carries_the_plan_and_resume_checks_the_teacher(tmp_path):
    d = distiller()
    model_json = json.dumps({"arch": "bert", "config": {"hidden_size": 16}}) + "\n"
    assert distill_json(model_json, d.student) == model_json  # not distilling: unchanged
    saved = json.loads(distill_json(model_json, d))
    assert saved["arch"] == "bert" and saved["distill"] == d.plan.to_dict()
    point = types.SimpleNamespace(tag_dir=tmp_path)
    assert check_teacher_unchanged(point, d.student) is None  # no model.json, no plan
    (tmp_path / "model.json").write_text(distill_json(model_json, d))
    assert check_teacher_unchanged(point, d) is None
    other = types.SimpleNamespace(plan=plan(teacher="hf/other", teacher_fingerprint="cd" * 32))
    with pytest.raises(CommandError) as e:
        check_teacher_unchanged(point, other)
    for part in ("runs/teacher", "abababababab", "hf/other", "cdcdcdcdcdcd"):
        assert part in str(e.value)
    changed = types.SimpleNamespace(plan=plan(weights={**WEIGHTS, "ce": 3.0}, temperature=4.0))
    note = check_teacher_unchanged(point, changed)
    assert note.startswith("note:") and "weights" in note and "temperature: 2.0 -> 4.0" in note
    assert "layer_map" not in note
    with pytest.raises(CommandError, match="with distillation"):
        check_teacher_unchanged(point, d.student)
    (tmp_path / "model.json").write_text(model_json)
    with pytest.raises(CommandError, match="without distillation"):
        check_teacher_unchanged(point, d)
    assert check_teacher_unchanged(point, d.student) is None
