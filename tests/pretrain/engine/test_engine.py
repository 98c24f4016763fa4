"""DeepSpeed config generation, optimizer choice (fused kernels on GPU, mocked) and LAMB
reference, schedules, loss normalisation (MLM and RTD) against a one-backward reference."""

import inspect
import math

import numpy as np
import pytest
import torch

from pretrain import engine as eng
from pretrain.config import load_config
from pretrain.config.toml_io import ConfigError
from pretrain.models import build_model
from pretrain.optim import AdamW, Lamb, SkippableStep, lr_multiplier, param_groups
from pretrain.train.objectives import Objective, local_counts

BASE = ["data.shard_dir=/tmp/shards", "run_dir=/tmp/run"]


def cfg_with(*overrides):
    return load_config(None, [*BASE, *overrides])


def test_deepspeed_config_is_generated_from_the_typed_config():
    c = cfg_with(
        "batch.global_batch_size=8192",
        "batch.micro_batch_size=32",
        "zero.stage=3",
        "zero.offload_optimizer=cpu",
        "zero.offload_param=cpu",
        "optimizer.grad_clip=0.5",
        "deepspeed.zero_optimization.stage3_max_live_parameters=1000",
        "deepspeed.flops_profiler.enabled=true",
    )
    ds = eng.build_ds_config(c, world_size=8, dtype="bf16")
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (8192, 32, 32)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu"
    assert z["offload_param"]["device"] == "cpu"
    assert z["stage3_max_live_parameters"] == 1000  # raw keys deep-merged, not replacing
    assert ds["flops_profiler"] == {"enabled": True}
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5
    fp16 = eng.build_ds_config(cfg_with("precision.fp16_initial_scale_power=12"), 1, "fp16")["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0 and fp16["initial_scale_power"] == 12
    with pytest.raises(ConfigError, match="world sizes that work"):
        eng.build_ds_config(c, world_size=3, dtype="fp32")


def test_precision_auto_is_fp32_on_cpu_and_fp16_is_refused_there():
    cpu = torch.device("cpu")
    assert eng.resolve_dtype("auto", cpu) == "fp32"
    assert eng.resolve_dtype("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU"):
        eng.resolve_dtype("fp16", cpu)


def _lamb_reference(params, grads_per_step, lr, b1, b2, eps, wd, adapt, max_trust=10.0):
    """You et al. 2019, Algorithm 2, in float64 numpy."""
    x = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            r = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
            u = r + wd[i] * x[i]
            wn, un = np.linalg.norm(x[i]), np.linalg.norm(u)
            trust = min(wn / un, max_trust) if adapt[i] and wn > 0 and un > 0 else 1.0
            x[i] = x[i] - lr * trust * u
    return x


def test_lamb_matches_the_papers_algorithm():
    rng = np.random.default_rng(0)
    w, b, z = rng.normal(size=(5, 4)), rng.normal(size=4), np.zeros((3, 3))
    grads = [[rng.normal(size=a.shape) for a in (w, b, z)] for _ in range(4)]
    ps = [torch.nn.Parameter(torch.tensor(a)) for a in (w, b, z)]
    opt = Lamb(
        [
            {"params": [ps[0]], "weight_decay": 0.01},
            {"params": [ps[1]], "weight_decay": 0.0, "adapt": False},
            {"params": [ps[2]], "weight_decay": 0.01},
        ],  # zero weights: trust ratio 1
        lr=0.05,
        betas=(0.9, 0.99),
        eps=1e-6,
    )
    for step in grads:
        for p, g in zip(ps, step, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
    ref = _lamb_reference(
        [w, b, z], grads, 0.05, 0.9, 0.99, 1e-6, [0.01, 0.0, 0.01], [True, False, True]
    )
    for p, r in zip(ps, ref, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-12, atol=1e-14)
    assert not np.allclose(ps[0].detach().numpy(), w)  # it did move


def test_skipped_step_changes_neither_parameters_nor_optimizer_state():
    p = torch.nn.Parameter(torch.ones(3))
    for opt in (AdamW([p], lr=0.1), Lamb([p], lr=0.1)):
        p.grad = torch.full((3,), float("nan"))
        opt.skip_step = True
        opt.step()
        assert opt.overflow and torch.equal(p.detach(), torch.ones(3)) and not opt.state
        opt.skip_step = False
        p.grad = torch.ones(3)
        opt.step()
        assert not opt.overflow and not torch.equal(p.detach(), torch.ones(3)) and opt.state
        p.data.fill_(1.0)


def _fake_optimizer(real: type, calls: list):
    """A stand-in for DeepSpeed's optimizer ``real`` (whose constructor would JIT-compile
    or need CUDA): checks the keywords against ``real``'s signature and records them."""
    sig = inspect.signature(real.__init__)

    class Fake(torch.optim.Optimizer):
        def __init__(self, params, **kwargs):
            sig.bind(self, params, **kwargs)  # TypeError on a keyword ``real`` does not take
            calls.append((real.__name__, kwargs))
            super().__init__(params, {k: kwargs[k] for k in ("lr", "betas", "eps")})

        def step(self, closure=None):
            calls.append(("step", None))

    Fake.__name__ = real.__name__
    return Fake


OPTIMIZER_CASES = {  # id: (device type, overrides, expected optimizer)
    "cuda-auto-adamw": ("cuda", [], "FusedAdam"),
    "cuda-deepspeed-adamw": ("cuda", ["optimizer.impl=deepspeed"], "FusedAdam"),
    "cpu-deepspeed-adamw": ("cpu", ["optimizer.impl=deepspeed"], "FusedAdam"),  # explicit
    # LAMB: ours on every device unless asked (FusedLamb adapts biases and norms too).
    "cuda-auto-lamb": ("cuda", ["optimizer.name=lamb"], Lamb),
    "cuda-deepspeed-lamb": (
        "cuda",
        ["optimizer.name=lamb", "optimizer.impl=deepspeed"],
        "FusedLamb",
    ),
    "cuda-offload-cpu": (
        "cuda",
        ["zero.stage=2", "zero.offload_optimizer=cpu"],
        "DeepSpeedCPUAdam",
    ),
    "cuda-offload-nvme": (
        "cuda",
        ["zero.stage=3", "zero.offload_optimizer=nvme", "zero.nvme_path=/x"],
        "DeepSpeedCPUAdam",
    ),
    "cuda-torch-adamw": ("cuda", ["optimizer.impl=torch"], AdamW),
    "cpu-auto-adamw": ("cpu", [], AdamW),
    "cpu-auto-lamb": ("cpu", ["optimizer.name=lamb"], Lamb),
    "cpu-auto-offload": ("cpu", ["zero.stage=1", "zero.offload_optimizer=cpu"], AdamW),
}


@pytest.mark.parametrize(
    ("device", "overrides", "want"), list(OPTIMIZER_CASES.values()), ids=list(OPTIMIZER_CASES)
)
def test_build_optimizer_picks_fused_kernels_on_gpu_and_torch_on_cpu(
    monkeypatch, device, overrides, want
):
    import deepspeed.ops.adam
    import deepspeed.ops.lamb

    calls: list = []
    for module, name in (
        (deepspeed.ops.adam, "FusedAdam"),
        (deepspeed.ops.adam, "DeepSpeedCPUAdam"),
        (deepspeed.ops.lamb, "FusedLamb"),
    ):
        monkeypatch.setattr(module, name, _fake_optimizer(getattr(module, name), calls))
    cfg = cfg_with(
        "optimizer.lr=2e-4",
        "optimizer.betas=[0.8, 0.95]",
        "optimizer.eps=1e-7",
        "optimizer.weight_decay=0.03",
        *overrides,
    )
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = eng.build_optimizer(cfg, model, device)
    assert isinstance(opt, SkippableStep)
    groups = [(g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    assert groups == [(0.03, 1), (0.0, 3)]  # the Linear's weight; bias and LayerNorm
    g0 = opt.param_groups[0]
    assert (g0["lr"], tuple(g0["betas"]), g0["eps"]) == (2e-4, (0.8, 0.95), 1e-7)
    if not isinstance(want, str):  # a torch optimizer, constructed for real
        assert type(opt) is want and not calls
        return
    assert type(opt).__name__ == f"Skippable{want}"
    mode = {"FusedAdam": {"adam_w_mode": True}, "DeepSpeedCPUAdam": {"adamw_mode": True}}
    expected = {"lr": 2e-4, "betas": (0.8, 0.95), "eps": 1e-7, **mode.get(want, {})}
    assert calls == [(want, expected)]  # decoupled weight decay (AdamW), from the groups
    opt.skip_step = True  # a non-finite step never reaches the fused kernel
    opt.step()
    assert opt.overflow and calls == [(want, expected)]
    opt.skip_step = False
    opt.step()
    assert not opt.overflow and calls[-1] == ("step", None)


def test_no_weight_decay_on_biases_and_layernorm_weights():
    model = build_model("roberta", "roberta-debug", vocab_size=50)
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = [names[id(p)] for p in no_decay["params"]]
    assert skipped and all(
        n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n for n in skipped
    )
    assert all(p.ndim == 2 for p in decay["params"]) and decay["weight_decay"] == 0.01
    assert no_decay["weight_decay"] == 0.0 and no_decay["adapt"] is False


def test_schedule_shapes():
    lin = lr_multiplier("linear", warmup_steps=10, total_steps=110)
    assert [lin(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # warm-up: step s+1 of 10
    assert lin(10) == 1.0 and lin(60) == pytest.approx(0.5) and lin(110) == 0.0 == lin(500)
    assert all(lin(s) > lin(s + 1) for s in range(10, 109))
    end = lr_multiplier("linear", 0, 100, end_ratio=0.1)
    assert end(0) == 1.0 and end(100) == pytest.approx(0.1)
    cos = lr_multiplier("cosine", 10, 110)
    assert cos(60) == pytest.approx(0.5) and cos(35) == pytest.approx(
        (1 + math.cos(math.pi / 4)) / 2
    )
    poly = lr_multiplier("polynomial", 0, 100, power=2.0)
    assert poly(50) == pytest.approx(0.25)
    wsd = lr_multiplier("wsd", 10, 100, decay_fraction=0.2)
    assert [wsd(s) for s in (20, 79, 80)] == [1.0, 1.0, 1.0]
    assert wsd(90) == pytest.approx(0.5) and wsd(100) == 0.0
    const = lr_multiplier("constant", 5, 0)
    assert const(2) == 0.6 and const(1000) == 1.0
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        lr_multiplier("linear", 10, 10)


def _batch(gen, m, seq, vocab):
    ids = torch.randint(5, vocab, (m, seq), generator=gen)
    att = torch.ones(m, seq, dtype=torch.int64)
    att[:, seq - 3 :] = torch.randint(0, 2, (m, 3), generator=gen)  # some padding
    labels = torch.where(torch.rand(m, seq, generator=gen) < 0.3, ids, torch.full_like(ids, -100))
    labels[att == 0] = -100
    return {
        "input_ids": ids,
        "attention_mask": att,
        "labels": labels,
        "segment_ids": torch.ones(m, seq, dtype=torch.int32),
    }


def test_micro_batch_losses_scale_to_the_exact_global_gradient_and_skip_works():
    """A micro-batches through DeepSpeed (its 1/A included) give d(sum of sums / N)."""
    torch.manual_seed(0)
    cfg = cfg_with(
        "model.preset=roberta-debug",
        "batch.global_batch_size=12",
        "batch.micro_batch_size=3",
        "optimizer.grad_clip=0.0",
        "model.overrides.hidden_dropout_prob=0.0",
        "model.overrides.attention_probs_dropout_prob=0.0",
    )
    model = build_model(
        "roberta",
        "roberta-debug",
        vocab_size=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    reference = build_model(
        "roberta",
        "roberta-debug",
        vocab_size=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    reference.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    batches = [_batch(gen, 3, 10, 40) for _ in range(4)]
    # Reference: one backward of (sum of loss sums) / (number of predicted tokens).
    full = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    out = reference(full["input_ids"], full["attention_mask"], full["labels"], full["segment_ids"])
    (out["mlm_loss_sum"] / out["mlm_count"]).backward()

    e = eng.Engine(model, cfg, eng.init_distributed(), lambda s: 1.0)
    assert e.grad_accum == 4 and e.world_size == 1
    obj = Objective(rtd=False)
    obj.set_step(e.all_reduce(local_counts(batches)), e.grad_accum, e.world_size)
    for b in batches:
        e.backward(obj.loss(e.forward(b, segments=True)))
    ref_grads = dict(reference.named_parameters())
    for name, p in e.module.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-5, atol=1e-7)
    before = {n: p.detach().clone() for n, p in e.module.named_parameters()}
    applied, norm = e.step(skip=True)
    assert not applied and norm is None and e.ds.skipped_steps == 1
    assert all(torch.equal(p, before[n]) for n, p in e.module.named_parameters())
    assert not e.base_optimizer.state  # no moments were created
    for b in batches:  # the next window applies normally
        e.backward(obj.loss(e.forward(b, segments=True)))
    applied, norm = e.step()
    assert applied and norm > 0
    assert not all(torch.equal(p, before[n]) for n, p in e.module.named_parameters())
    # A finite loss with a non-finite gradient (ZeRO 0, fp32: DeepSpeed does not check).
    after = {n: p.detach().clone() for n, p in e.module.named_parameters()}
    for b in batches:
        e.backward(obj.loss(e.forward(b, segments=True)))
    next(e.module.parameters()).grad.view(-1)[0] = float("inf")
    assert e.step() == (False, None)
    assert all(torch.equal(p, after[n]) for n, p in e.module.named_parameters())


def test_rtd_micro_batch_losses_scale_to_the_exact_global_gradient():
    """ELECTRA: d(S_mlm / N_mlm + rtd_weight * S_rtd / N_tok) over all micro-batches, where
    S are the loss sums of every micro-batch and N the global counts (predicted tokens for
    the generator's MLM, real tokens for the discriminator), through DeepSpeed's 1/A."""
    cfg = cfg_with(
        "model.arch=electra",
        "model.preset=electra-debug",
        "batch.global_batch_size=12",
        "batch.micro_batch_size=3",
        "optimizer.grad_clip=0.0",
    )
    kw = dict(vocab_size=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = build_model("electra", "electra-debug", **kw)
    reference = build_model("electra", "electra-debug", **kw)
    reference.load_state_dict(model.state_dict())
    weight = model.config.rtd_weight
    assert weight not in (0.0, 1.0)  # a dropped or misapplied weight would show
    gen = torch.Generator().manual_seed(1)
    batches = [_batch(gen, 3, 10, 40) for _ in range(4)]
    n_mlm, n_tok, _ = (float(x) for x in local_counts(batches))
    # Per-micro-batch counts differ: averaging per micro-batch would give other gradients.
    assert len({int(b["attention_mask"].sum()) for b in batches}) > 1
    # Reference: the same micro-batches (same replacement samples: same RNG sequence), one
    # backward of the global objective.
    torch.manual_seed(2)
    outs = [reference(b["input_ids"], b["attention_mask"], b["labels"]) for b in batches]
    s_mlm = sum(o["mlm_loss_sum"] for o in outs)
    s_rtd = sum(o["rtd_loss_sum"] for o in outs)
    assert sum(float(o["rtd_count"]) for o in outs) == n_tok  # real tokens, padding excluded
    assert sum(float(o["mlm_count"]) for o in outs) == n_mlm
    ref_loss = s_mlm / n_mlm + weight * s_rtd / n_tok
    ref_loss.backward()
    ref_loss, s_mlm, s_rtd = (float(t.detach()) for t in (ref_loss, s_mlm, s_rtd))

    e = eng.Engine(model, cfg, eng.init_distributed(), lambda s: 1.0)
    assert e.grad_accum == 4
    obj = Objective(rtd=True, rtd_weight=weight)
    obj.set_step(e.all_reduce(local_counts(batches)), e.grad_accum, e.world_size)
    torch.manual_seed(2)
    for b in batches:
        e.backward(obj.loss(e.forward(b, segments=False)))
    ref_grads = dict(reference.named_parameters())
    for name, p in e.module.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-5, atol=1e-7)
    heads = (
        e.module.discriminator.discriminator_predictions,
        e.module.generator.generator_predictions,
    )
    for head in heads:  # only the RTD term reaches the first, only the MLM term the second
        assert all(p.grad.abs().sum() > 0 for p in head.parameters())
    # The logged loss is the same objective (metrics from the accumulated sums).
    m = obj.metrics(*obj.take_sums())
    assert m["loss"] == pytest.approx(ref_loss, rel=1e-6)
    assert m["mlm_loss"] == pytest.approx(s_mlm / n_mlm, rel=1e-6)
    assert m["rtd_loss"] == pytest.approx(s_rtd / n_tok, rel=1e-6)
