"""DeBERTa's FlexAttention path against the plain path (CPU forward; GPU forward + backward)."""

import pytest
import torch

from pretrain.models.deberta import Config, Model

V = 120
TINY = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
    position_buckets=8,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def pair(device="cpu", **kw) -> tuple[Model, Model]:
    """(plain, flex) models with identical random weights (LayerNorms and biases perturbed)."""
    torch.manual_seed(0)
    plain = Model(Config(**{**TINY, **kw})).to(device)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    flex = Model(Config(**{**TINY, **kw, "attention_impl": "flex"})).to(device)
    flex.load_state_dict(plain.state_dict())
    return plain, flex


def packed_batch(device="cpu", length=40):
    """Row 0 one document, row 1 padded, row 2 three packed documents and padding."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (3, length), generator=g)
    seg = torch.ones_like(ids)
    seg[1, 29:] = 0
    seg[2] = torch.tensor([1] * 9 + [2] * 14 + [3] * 10 + [0] * (length - 33))
    mask = (seg > 0).long()
    labels = torch.full_like(ids, -100)
    pick = (torch.rand(ids.shape, generator=g) < 0.3) & mask.bool()
    labels[pick] = ids[pick]
    return [t.to(device) for t in (ids, mask, labels, seg)]


@torch.no_grad()
@pytest.mark.parametrize("emd,share", [(False, True), (True, True), (False, False)])
def test_flex_forward_equals_plain_on_cpu(emd, share):
    plain, flex = (m.eval() for m in pair(objective="mlm", emd=emd, share_att_key=share))
    ids, mask, labels, seg = packed_batch()
    real = mask.bool()
    for segments in (None, seg):
        a = plain.mlm_logits(ids, mask, segments)
        b = flex.mlm_logits(ids, mask, segments)
        # Padding rows differ by design (uniform average vs zeros); real tokens must not.
        assert (a - b)[real].abs().max() <= 1e-5
        x, y = plain(ids, mask, labels, segments), flex(ids, mask, labels, segments)
        torch.testing.assert_close(x["mlm_loss_sum"], y["mlm_loss_sum"], atol=1e-4, rtol=1e-6)
        assert torch.equal(x["mlm_correct"], y["mlm_correct"])


@torch.no_grad()
def test_flex_rtd_forward_equals_plain_on_cpu():
    plain, flex = (m.eval() for m in pair(objective="rtd", generator_num_hidden_layers=1))
    ids, mask, labels, seg = packed_batch()
    torch.manual_seed(4)
    x = plain(ids, mask, labels, seg)
    torch.manual_seed(4)
    y = flex(ids, mask, labels, seg)
    for k in x:
        torch.testing.assert_close(x[k].float(), y[k].float(), atol=1e-4, rtol=1e-6, msg=k)
    diff = plain.encode(ids, mask, seg) - flex.encode(ids, mask, seg)
    assert diff[mask.bool()].abs().max() <= 1e-5


def test_flex_refuses_cpu_training_and_auto_picks_plain_on_cpu():
    _, flex = pair(objective="mlm")
    ids, mask, labels, _ = packed_batch()
    with pytest.raises(RuntimeError, match="no CPU backward"):
        flex.train()(ids, mask, labels)
    auto = Model(Config(**TINY, attention_impl="auto"))
    assert not auto._context(ids, mask, None).use_flex


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs CUDA")
@pytest.mark.parametrize("emd", [False, True])
def test_flex_forward_and_backward_equal_plain_on_gpu(emd):
    torch.backends.cuda.matmul.allow_tf32 = False
    plain, flex = pair("cuda", objective="mlm", emd=emd)
    ids, mask, labels, seg = packed_batch("cuda", length=80)
    assert flex._context(ids, mask, seg).use_flex
    auto = Model(Config(**{**TINY, "attention_impl": "auto"})).cuda().train()
    assert auto._context(ids, mask, seg).use_flex  # no attention dropout: flex on CUDA
    for segments in (None, seg):
        plain.zero_grad(set_to_none=True)
        flex.zero_grad(set_to_none=True)
        x, y = plain(ids, mask, labels, segments), flex(ids, mask, labels, segments)
        torch.testing.assert_close(x["mlm_loss_sum"], y["mlm_loss_sum"], atol=1e-4, rtol=1e-5)
        x["mlm_loss_sum"].backward()
        y["mlm_loss_sum"].backward()
        grads = dict(flex.named_parameters())
        for name, p in plain.named_parameters():
            # Gradients reach the relative embeddings only through the captured c2p/p2c tables.
            assert grads[name].grad is not None, name
            torch.testing.assert_close(grads[name].grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)
    rel = flex.deberta.encoder.rel_embeddings.weight.grad
    assert rel is not None and rel.abs().sum() > 0
