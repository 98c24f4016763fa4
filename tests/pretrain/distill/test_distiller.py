"""``pretrain.distill.distiller``: the terms vanish (with their gradients) for a student equal
to its teacher, match a direct re-implementation (projections, layer map, visible pairs), the
teacher stays outside the module, and the student's every-other-layer initialisation copies
exactly."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from pretrain.distill.distiller import (
    Distiller,
    Plan,
    every_other_layer,
    init_from_teacher,
    shell,
    uniform_layer_map,
)
from pretrain.distill.losses import attention_sum, visible_pairs
from pretrain.models import bert, deberta, roberta
from pretrain.models.taps import Taps
from pretrain.testing import TINY_ENCODER
from pretrain.train.distill import KD_TERMS

V, T = 97, 16
TINY = dict(TINY_ENCODER, vocab_size=V)
ARCH = {
    "bert": (bert, dict(type_vocab_size=2, pad_token_id=0)),
    "roberta": (roberta, dict(type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)),
    "deberta": (deberta, dict(objective="mlm", emd=False, position_buckets=8, pad_token_id=0)),
}
ALL_ON = dict(ce=1.0, mlm=1.0, cos=1.0, embedding=1.0, hidden=1.0, attention=1.0)
KD = [f"kd_{t}_sum" for t in KD_TERMS]


def model(arch: str, seed: int = 0, **kw):
    mod, own = ARCH[arch]
    torch.manual_seed(seed)
    m = mod.Model(mod.Config(**{**TINY, **own, **kw})).eval()
    with torch.no_grad():  # biases and LayerNorms away from their initial values
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def batch(m, packed: bool = False):
    """Row 1 padded from 10; ~30 % labelled; ``packed``: two documents per row."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, T), generator=g)
    attn = torch.ones_like(ids)
    ids[1, 10:], attn[1, 10:] = m.config.pad_token_id, 0
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & attn.bool(), ids, -100)
    labels[:, 2] = ids[:, 2]
    seg = None
    if packed:
        seg = torch.tensor([[1] * 6 + [2] * 10, [1] * 4 + [2] * 6 + [0] * 6, [1] * 9 + [2] * 7])
    return ids, attn, labels, seg


def distiller(student, teacher, arch="bert", weights=ALL_ON, temperature=2.0, layer_map=None):
    s, t = student.config, teacher.config
    plan = Plan(
        weights=dict(weights),
        temperature=temperature,
        layer_map=layer_map or uniform_layer_map(s.num_hidden_layers, t.num_hidden_layers),
        student_hidden=s.hidden_size,
        teacher_hidden=t.hidden_size,
        teacher="runs/teacher",
        teacher_arch=arch,
        teacher_fingerprint="ab" * 32,
    )
    d = Distiller(student, plan)
    d.attach_teacher(teacher, "cpu", torch.float32)
    return d


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("arch", list(ARCH))
def test_student_equal_to_teacher_has_zero_terms_and_zero_gradients(arch, packed):
    teacher = model(arch)
    student = copy.deepcopy(teacher)
    d = distiller(student, teacher, arch).eval()
    out = d(*batch(teacher, packed))
    assert set(KD) <= out.keys()
    n_tok = out["kd_tokens"].item()
    for k in KD:  # 1 - cos(x, x) rounds to ~1e-7 per token in fp32: 1e-6 per real token
        tol = 1e-6 * (n_tok if k == "kd_cos_sum" else 1)
        assert out[k].requires_grad and abs(out[k].item()) <= tol, (k, out[k].item())
    names, params = zip(*d.named_parameters(), strict=True)
    kd_sum = sum(out[k] for k in KD)
    kd_grads = torch.autograd.grad(kd_sum, params, allow_unused=True, retain_graph=True)
    assert sum(g is not None for g in kd_grads) > len(params) // 2  # the terms reach the student
    for name, g in zip(names, kd_grads, strict=True):
        assert g is None or g.abs().max() <= 1e-5, name
    mlm_grads = torch.autograd.grad(out["mlm_loss_sum"], params, allow_unused=True)
    assert any(g is not None and g.abs().max() > 1e-4 for g in mlm_grads)


@pytest.mark.parametrize("arch", list(ARCH))
def test_a_perturbed_student_gives_positive_terms(arch):
    teacher = model(arch)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        out = distiller(student, teacher, arch)(*batch(teacher, packed=True))
    for k in KD:
        assert out[k].item() > 1e-4, k


def test_layer_maps():
    assert every_other_layer(6, 12) == [0, 2, 4, 7, 9, 11]
    assert every_other_layer(1, 4) == [0]
    assert every_other_layer(2, 4) == [0, 3]
    assert every_other_layer(3, 6) == [0, 3, 5]  # halves round up (floor(x + 0.5))
    assert uniform_layer_map(4, 12) == [3, 6, 9, 12]
    assert uniform_layer_map(1, 2) == [2]


@pytest.mark.parametrize("arch", list(ARCH))
def test_init_from_teacher_copies_the_mapped_blocks_exactly(arch):
    teacher = model(arch, num_hidden_layers=4)
    student = model(arch, seed=1, num_hidden_layers=2, hidden_dropout_prob=0.1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert init_from_teacher(student, teacher) == [0, 3]
    src = teacher.state_dict()
    layered = 0
    for name, tensor in student.state_dict().items():
        want = name
        for i, b in enumerate([0, 3]):
            want = want.replace(f"layer.{i}.", f"layer.{b}.")
        layered += want != name
        assert torch.equal(tensor, src[want]), name
        assert not torch.equal(tensor, before[name]) or tensor.unique().numel() == 1, name
    assert layered > 0 and len(student.state_dict()) < len(src)
    wider = model(arch, seed=1, num_hidden_layers=2, hidden_size=48)
    with pytest.raises(ValueError, match="hidden_size 48 vs 32"):
        init_from_teacher(wider, teacher)
    if arch == "bert":  # a RoBERTa of exactly the BERT's config fields: the type differs
        same_fields = dict(type_vocab_size=2, pad_token_id=0, layer_norm_eps=1e-12)
        with pytest.raises(ValueError, match="another architecture"):
            init_from_teacher(model("roberta", num_hidden_layers=2, **same_fields), teacher)


def test_init_from_teacher_accepts_a_shallower_mlm_deberta_with_default_generator_fields():
    teacher = model("deberta", num_hidden_layers=4)
    assert init_from_teacher(model("deberta", seed=1, num_hidden_layers=2), teacher) == [0, 3]


def test_only_the_student_and_projections_are_the_module():
    teacher = model("bert", num_hidden_layers=4)
    student = model("bert", seed=1, hidden_size=16)
    d = distiller(student, teacher)
    prefixes = ("student.", "proj.embedding.", "proj.hidden.")
    for keys in ([n for n, _ in d.named_parameters()], list(d.state_dict())):
        assert all(k.startswith(prefixes) for k in keys), keys
        assert {k.split(".")[1] for k in keys if k.startswith("proj.")} == {"embedding", "hidden"}
    teacher_ptrs = {v.data_ptr() for v in teacher.state_dict().values()}
    assert not teacher_ptrs & {v.data_ptr() for v in d.state_dict().values()}
    assert len(d.state_dict()) == len(student.state_dict()) + 4
    seen = []
    teacher.register_forward_hook(lambda m, a, o: seen.append((torch.is_grad_enabled(), a[0])))
    d.train()
    assert d.student.training and not any(m.training for m in teacher.modules())
    ids, attn, labels, seg = batch(teacher, packed=True)
    out = d(ids, attn, labels, seg)
    (out["mlm_loss_sum"] + sum(out[k] for k in KD)).backward()
    assert len(seen) == 1 and seen[0][0] is False and torch.equal(seen[0][1], ids)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in d.proj.parameters())
    same = distiller(model("bert", seed=1), teacher)  # equal widths: no W_e / W_h
    assert len(same.proj) == 0 and not any(k.startswith("proj.") for k in same.state_dict())
    no_hidden = distiller(
        student, teacher, weights={**ALL_ON, "cos": 0, "embedding": 0, "hidden": 0}
    )
    assert len(no_hidden.proj) == 0


def test_terms_match_a_direct_computation():
    teacher = model("bert", num_hidden_layers=4)
    student = model("bert", seed=1, hidden_size=16)
    d = distiller(student, teacher, temperature=2.0, layer_map=[1, 4])
    ids, attn, labels, seg = batch(teacher, packed=True)
    with torch.no_grad():
        out = d(ids, attn, labels, seg)
        s, t = Taps(scores=True), Taps(scores=True)
        student(ids, attn, labels, seg, taps=s)
        teacher(ids, attn, labels, seg, taps=t)
        w_e, w_h = d.proj["embedding"], d.proj["hidden"]
    real = attn.bool()
    temp = 2.0
    ce = sum(
        F.kl_div(
            F.log_softmax(s.logits[i] / temp, -1),
            F.softmax(t.logits[i] / temp, -1),
            reduction="sum",
        )
        for i in range(len(s.targets))
        if s.targets[i] != -100
    )
    a, b = w_h(s.hidden[-1])[real], t.hidden[-1][real]
    cos = (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).sum()
    emb = ((w_e(s.hidden[0]) - t.hidden[0])[real] ** 2).mean(-1).sum()
    pairs = [(1, 1), (2, 4)]
    hid = sum(((w_h(s.hidden[m]) - t.hidden[n])[real] ** 2).mean(-1).sum() for m, n in pairs)
    allowed = (seg[:, :, None] == seg[:, None, :]) & real[:, None, :] & real[:, :, None]
    att = sum(
        ((s.attention[m - 1] - t.attention[n - 1]) ** 2).mean(1)[allowed].sum() for m, n in pairs
    )
    want = dict(ce=temp**2 * ce, cos=cos, embedding=emb, hidden=hid, attention=att)
    for term, value in want.items():
        torch.testing.assert_close(out[f"kd_{term}_sum"], value, rtol=1e-5, atol=1e-6, msg=term)
    assert out["kd_attention_count"] == allowed.sum() and out["kd_tokens"] == real.sum()
    # the padding queries' own (finite) scores differ: counting them would change the term
    pad_q = ~real[:, :, None] & torch.eye(T, dtype=torch.bool)
    extra = sum(
        ((s.attention[m - 1] - t.attention[n - 1]) ** 2).mean(1)[pad_q].sum() for m, n in pairs
    )
    assert extra > 1e-3


@pytest.mark.parametrize("packed", [False, True])
def test_attention_sum_reads_only_visible_pairs(packed):
    ids, attn, _, seg = batch(model("bert"), packed)
    real = attn.bool()
    allowed = real[:, None, :] & real[:, :, None]
    if packed:
        allowed &= seg[:, :, None] == seg[:, None, :]
    vis = visible_pairs(attn, seg)
    assert torch.equal(vis.expand(-1, -1, T, T)[:, 0], allowed)
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 4, T, T, generator=g), torch.randn(3, 4, T, T, generator=g) * 1e3
    t[~allowed[:, None].expand_as(t)] = 1e30  # what is not visible never enters
    want = ((s - t) ** 2).mean(1)[allowed].sum()
    torch.testing.assert_close(attention_sum(s, t, vis), want, rtol=1e-6, atol=0)


def test_shell_rebuilds_the_checkpointed_module():
    teacher = model("bert", num_hidden_layers=4)
    d = distiller(model("bert", seed=1, hidden_size=16), teacher)
    plan = json.loads(json.dumps(d.plan.to_dict()))  # as model.json stores it
    rebuilt = shell(model("bert", seed=2, hidden_size=16), plan)
    assert rebuilt.plan == d.plan
    want, got = d.state_dict(), rebuilt.state_dict()
    assert list(got) == list(want) and any(k.startswith("proj.") for k in got)
    assert all(got[k].shape == want[k].shape for k in want)
    rebuilt.load_state_dict(want)
    with pytest.raises(RuntimeError, match="attach_teacher"):
        rebuilt.teacher  # noqa: B018
