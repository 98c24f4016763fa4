"""ELECTRA: parity with transformers' ElectraForPreTraining / ElectraForMaskedLM, the RTD
training step (sampling, replaced semantics, gradient isolation), conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pretrain.models import electra, electra_hf
from pretrain.models.common import sample_replacements

transformers = pytest.importorskip("transformers")

VOCAB, PAD = 53, 0
SHARED = dict(
    vocab_size=VOCAB,
    embedding_size=16,
    num_hidden_layers=2,
    max_position_embeddings=32,
    pad_token_id=PAD,
)
DISC = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)
GEN = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32)
TINY = dict(
    SHARED,
    **DISC,
    generator_hidden_size=16,
    generator_num_attention_heads=2,
    generator_intermediate_size=32,
)


def hf_pair(seed: int = 0):
    torch.manual_seed(seed)
    disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(**SHARED, **DISC)).eval()
    gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(**SHARED, **GEN)).eval()
    gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())  # tied, as trained
    with torch.no_grad():
        gen.generator_lm_head.bias.normal_(0, 0.5)
    return disc, gen


@pytest.fixture
def hf_dir(tmp_path):
    disc, gen = hf_pair()
    disc.save_pretrained(tmp_path / "hf", safe_serialization=True)
    gen.save_pretrained(tmp_path / "hf" / "generator", safe_serialization=True)
    return disc, gen, tmp_path / "hf"


def batch(seed: int = 1, p: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 14), generator=g)
    attn = torch.ones_like(ids)
    ids[1, 10:], attn[1, 10:] = PAD, 0
    labels = torch.where((torch.rand(ids.shape, generator=g) < p) & attn.bool(), ids, -100)
    return ids, attn, labels


def test_logits_match_hf_with_padding(hf_dir):
    disc, gen, path = hf_dir
    ours = electra_hf.import_hf(path).eval()
    ids, attn, _ = batch()
    with torch.no_grad():
        assert (
            ours.rtd_logits(ids, attn) - disc(input_ids=ids, attention_mask=attn).logits
        ).abs().max() <= 1e-5
        assert (
            ours.mlm_logits(ids, attn) - gen(input_ids=ids, attention_mask=attn).logits
        ).abs().max() <= 1e-5


def test_training_step_and_gradients_match_hf(hf_dir):
    """The whole RTD step recomputed with the HF networks: same sums, same gradients (the
    shared embeddings' gradient is the sum of the two HF copies')."""
    disc, gen, path = hf_dir
    ours = electra_hf.import_hf(path).eval()
    ids, attn, labels = batch(2)
    torch.manual_seed(7)
    out = ours(ids, attn, labels)
    (out["mlm_loss_sum"] + out["rtd_loss_sum"]).backward()

    torch.manual_seed(7)  # same RNG stream for the Gumbel sampling
    sel = labels != -100
    gen_logits = gen(input_ids=ids, attention_mask=attn).logits[sel]
    mlm = F.cross_entropy(gen_logits, labels[sel], reduction="sum")
    corrupted = ids.clone()
    corrupted[sel] = sample_replacements(gen_logits)
    replaced = (corrupted != ids).float()
    logits = disc(input_ids=corrupted, attention_mask=attn).logits
    rtd = (F.binary_cross_entropy_with_logits(logits, replaced, reduction="none") * attn).sum()
    (mlm + rtd).backward()

    assert torch.allclose(out["mlm_loss_sum"], mlm, atol=1e-4)
    assert torch.allclose(out["rtd_loss_sum"], rtd, atol=1e-4)
    assert out["replaced_count"].item() == int(replaced.sum())
    for name, p in ours.named_parameters():
        net, _, hf_name = name.partition(".")
        ref = (disc if net == "discriminator" else gen).get_parameter(hf_name).grad
        if hf_name.startswith("electra.embeddings."):
            ref = disc.get_parameter(hf_name).grad + gen.get_parameter(hf_name).grad
        scale = max(1.0, ref.abs().max().item())
        assert (p.grad - ref).abs().max().item() <= 1e-5 * scale, name


def test_replacements_are_drawn_from_the_generator_softmax():
    torch.manual_seed(0)
    model = electra.Model(
        electra.Config(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    with torch.no_grad():  # a skewed distribution, so a uniform sampler would fail
        model.generator.generator_lm_head.bias.copy_(torch.linspace(4, -4, VOCAB))
    captured = []
    model.discriminator.register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (16, 24), generator=g)
    attn = torch.ones_like(ids)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.5, ids, -100)
    masked = ids.masked_fill(labels != -100, 2)  # what the collator feeds: [MASK] at targets
    with torch.no_grad():
        probs = model.mlm_logits(masked, attn).softmax(-1)[labels != -100]  # (N, V)
        draws = 40
        for _ in range(draws):
            model(masked, attn, labels)
    sel = labels != -100
    samples = torch.stack([c[sel] for c in captured])  # (draws, N)
    for c in captured:  # unmasked positions keep their original token
        assert torch.equal(c[~sel], ids[~sel])
    observed = torch.bincount(samples.flatten(), minlength=VOCAB).double()
    expected = draws * probs.double().sum(0)
    std = (draws * (probs * (1 - probs)).double().sum(0)).sqrt()
    assert ((observed - expected).abs() <= 5 * std + 1).all()
    assert observed[:5].sum() > 0.5 * observed.sum()  # the skew is visible


def test_replaced_count_treats_correct_samples_as_original():
    torch.manual_seed(0)
    model = electra.Model(electra.Config(**TINY)).eval()
    ids = torch.full((2, 10), 7)
    attn = torch.ones_like(ids)
    attn[1, 8:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 2:6] = 7
    head = model.generator.generator_lm_head.bias
    with torch.no_grad():
        head.zero_()
        head[7] = 1e4  # the generator always proposes the original token
        out = model(ids, attn, labels)
        assert out["replaced_count"].item() == 0
        head[7], head[9] = 0, 1e4  # always a different token
        out = model(ids, attn, labels)
    assert out["replaced_count"].item() == 8
    assert out["rtd_count"].item() == 18 and out["mlm_count"].item() == 8
    assert model.config.rtd_weight == 50.0
    assert electra.Model(electra.Config(**TINY, rtd_weight=20.0)).config.rtd_weight == 20.0


def test_discriminator_loss_sends_no_gradient_into_the_generator():
    torch.manual_seed(0)
    model = electra.Model(electra.Config(**TINY))
    ids, attn, labels = batch(3, p=0.5)
    model(ids, attn, labels)["rtd_loss_sum"].backward()
    shared = {id(p) for p in model.discriminator.electra.embeddings.parameters()}
    for name, p in model.generator.named_parameters():
        if id(p) not in shared:
            assert p.grad is None or not p.grad.any(), name
    assert model.discriminator.electra.embeddings.word_embeddings.weight.grad.any()
    assert model.discriminator.electra.encoder.layer[0].attention.self.query.weight.grad.any()


def test_sparse_head_and_segments():
    torch.manual_seed(0)
    model = electra.Model(electra.Config(**TINY)).eval()
    ids, attn, labels = batch(4)
    with torch.no_grad():
        out = model(ids, attn, labels)
        full = model.mlm_logits(ids, attn)
    sel = labels != -100
    assert torch.allclose(
        out["mlm_loss_sum"], F.cross_entropy(full[sel], labels[sel], reduction="sum"), atol=1e-5
    )
    seg = torch.tensor([[1] * 6 + [2] * 8])
    one = torch.randint(3, VOCAB, (1, 14))
    two = one.clone()
    two[0, 6:] = torch.randint(3, VOCAB, (8,))
    ones = torch.ones_like(one)
    with torch.no_grad():
        for fn in (model.mlm_logits, model.rtd_logits):
            assert torch.equal(fn(one, ones, seg)[0, :6], fn(two, ones, seg)[0, :6])
            assert not torch.allclose(fn(one, ones)[0, :6], fn(two, ones)[0, :6])


def test_export_loads_in_transformers(tmp_path):
    torch.manual_seed(1)
    model = electra.Model(electra.Config(**TINY)).eval()
    electra_hf.export_hf(model, tmp_path / "out")
    disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "out").eval()
    gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "out" / "generator").eval()
    ids, attn, _ = batch(5)
    with torch.no_grad():
        assert (
            disc(input_ids=ids, attention_mask=attn).logits - model.rtd_logits(ids, attn)
        ).abs().max() <= 1e-5
        assert (
            gen(input_ids=ids, attention_mask=attn).logits - model.mlm_logits(ids, attn)
        ).abs().max() <= 1e-5


def test_import_export_round_trip_is_identical(hf_dir, tmp_path):
    _, _, path = hf_dir
    electra_hf.export_hf(electra_hf.import_hf(path), tmp_path / "again")
    for sub in ("", "generator"):
        before = load_file(path / sub / "model.safetensors")
        after = load_file(tmp_path / "again" / sub / "model.safetensors")
        assert sorted(before) == sorted(after)
        for key in before:
            assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), (
                key
            )


def test_import_without_generator_and_wrong_direction(hf_dir, tmp_path):
    disc, gen, path = hf_dir
    disc.save_pretrained(tmp_path / "disc_only")
    model = electra_hf.import_hf(tmp_path / "disc_only", generator_size=0.5).eval()
    assert model.config.generator_hidden_size == 16
    ids, attn, _ = batch(6)
    with torch.no_grad():
        assert (
            model.rtd_logits(ids, attn) - disc(input_ids=ids, attention_mask=attn).logits
        ).abs().max() <= 1e-5
    # The separately given generator directory is used as well.
    model = electra_hf.import_hf(tmp_path / "disc_only", generator_dir=path / "generator")
    assert torch.equal(model.generator.generator_lm_head.bias, gen.generator_lm_head.bias)
    with pytest.raises(ValueError, match="ElectraForMaskedLM generator"):
        electra_hf.import_hf(path / "generator")


def test_config_derives_generator_from_the_paper_fractions():
    c = electra.Config(**electra.PRESETS["electra-base"])
    assert (
        c.generator_hidden_size,
        c.generator_num_attention_heads,
        c.generator_intermediate_size,
        c.generator_num_hidden_layers,
    ) == (256, 4, 1024, 12)
    c = electra.Config(generator_hidden_size=128)  # explicit values win over the fraction
    assert c.generator_hidden_size == 128 and c.generator_num_attention_heads == 2
    with pytest.raises(ValueError, match="not divisible"):
        electra.Config(generator_hidden_size=96, generator_num_attention_heads=5)
    with pytest.raises(ValueError, match="rtd_weight"):
        electra.Config(rtd_weight=-1.0)


@pytest.mark.parametrize("fixed", [False, True])
def test_vocabulary_projection_sees_only_predicted_rows(fixed):
    """The generator's tied projection gets (N, E) rows, never (B*T, E); the discriminator
    head scores every token. A fixed capacity changes the replacement draws (more rows)."""
    torch.manual_seed(0)
    model = electra.Model(electra.Config(**TINY))
    ids, attn, labels = batch()
    per_row = (labels != -100).sum(1)
    if fixed:
        model.predict_capacity = int(per_row.max())
    rows = ids.shape[0] * model.predict_capacity if fixed else int(per_row.sum())
    seen = []
    hook = lambda m, a, out: seen.append((m, a[0].shape, out.shape))  # noqa: E731
    model.generator.generator_lm_head.register_forward_hook(hook)
    model.discriminator.discriminator_predictions.register_forward_hook(hook)
    torch.manual_seed(5)
    out = model(ids, attn, labels)
    gen_head = model.generator.generator_lm_head
    disc_head = model.discriminator.discriminator_predictions
    assert seen[0] == (gen_head, (rows, SHARED["embedding_size"]), (rows, VOCAB))
    assert seen[1] == (disc_head, (*ids.shape, DISC["hidden_size"]), ids.shape)
    assert len(seen) == 2 and rows < ids.numel()
    if fixed:
        model.predict_capacity = None
        torch.manual_seed(5)
        exact = model(ids, attn, labels)
        torch.testing.assert_close(out["mlm_loss_sum"], exact["mlm_loss_sum"])
        assert not torch.equal(out["rtd_loss_sum"], exact["rtd_loss_sum"])
