"""Size presets: exact parameter counts against transformers' models built from the official
hyper-parameters (on the meta device: no memory, no download), the published figures, the
`params` command, and that the debug presets train."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.cli import main as cli
from pretrain.commands.params import preset_counts
from pretrain.models import arch_module, find_preset

transformers = pytest.importorskip("transformers")

ROBERTA = dict(
    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5
)
ROBERTA_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)
# (embedding, hidden, layers, heads, ffn) of the ELECTRA discriminators (paper, Table 6);
# the generator: hidden * {1/4, 1/3, 1/4}, heads hidden // 64, ffn 4 * hidden.
ELECTRA = {
    "small": (128, 256, 12, 4, 1024, 64),
    "base": (768, 768, 12, 12, 3072, 256),
    "large": (1024, 1024, 24, 16, 4096, 256),
}


def hf_count(cls, config) -> int:
    with torch.device("meta"):
        return cls(config).num_parameters()


@pytest.mark.parametrize(
    "preset,extra,published", [("roberta-base", {}, 125e6), ("roberta-large", ROBERTA_LARGE, 355e6)]
)
def test_roberta_counts_equal_transformers_and_the_paper(preset, extra, published):
    ours = preset_counts("roberta", find_preset(preset)[1])
    ref = hf_count(transformers.RobertaForMaskedLM, transformers.RobertaConfig(**ROBERTA, **extra))
    assert ours["total"] == ref
    assert ours["embedding"] + ours["backbone"] == ours["total"]
    assert abs(ours["total"] - published) / published <= 0.005


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_electra_counts_equal_transformers(size):
    emb, hidden, layers, heads, ffn, gen_hidden = ELECTRA[size]
    ours = preset_counts("electra", find_preset(f"electra-{size}")[1])
    common = dict(vocab_size=30522, embedding_size=emb, num_hidden_layers=layers)
    disc = hf_count(
        transformers.ElectraForPreTraining,
        transformers.ElectraConfig(
            **common, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn
        ),
    )
    gen = hf_count(
        transformers.ElectraForMaskedLM,
        transformers.ElectraConfig(
            **common,
            hidden_size=gen_hidden,
            num_attention_heads=max(1, gen_hidden // 64),
            intermediate_size=4 * gen_hidden,
        ),
    )
    assert ours["discriminator"] == disc
    assert ours["generator"] == gen
    assert ours["total"] == disc + gen - ours["embedding"]  # embeddings shared, counted once


def test_electra_published_figures():
    """The papers count the discriminator. Base and large are within 0.5 %; small's "14 M"
    is rounded to two significant digits, which 13,549,057 rounds to (0.5 % is impossible:
    it is 3.2 % below, and with the generator, 14,196,219, 1.4 % above)."""
    counts = {s: preset_counts("electra", find_preset(f"electra-{s}")[1]) for s in ELECTRA}
    assert abs(counts["base"]["discriminator"] - 110e6) / 110e6 <= 0.005
    assert abs(counts["large"]["discriminator"] - 335e6) / 335e6 <= 0.005
    small = counts["small"]
    assert (small["discriminator"], small["total"]) == (13_549_057, 14_196_219)
    assert round(small["discriminator"] / 1e6) == 14


def test_vocab_size_follows_the_tokenizer():
    base = preset_counts("roberta", find_preset("roberta-base")[1])
    small_vocab = preset_counts("roberta", find_preset("roberta-base")[1], vocab_size=8000)
    assert base["total"] - small_vocab["total"] == (50265 - 8000) * (768 + 1)  # rows + bias
    assert small_vocab["backbone"] == base["backbone"] - (50265 - 8000)


def test_params_command(capsys):
    assert cli(["params", "--preset", "electra-small", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["arch"] == "electra" and row["discriminator"] == 13_549_057
    assert cli(["params", "--preset", "roberta-base", "--vocab-size", "8000"]) == 0
    out = capsys.readouterr().out
    assert "roberta-base  (roberta, vocab 8,000)" in out and "total" in out
    assert cli(["params"]) == 0  # every preset of every registered architecture
    out = capsys.readouterr().out
    for name in ("roberta-debug", "roberta-large", "electra-debug", "electra-large"):
        assert f"{name}  (" in out
    assert cli(["params", "--preset", "roberta-huge"]) == 2
    assert "unknown preset 'roberta-huge'" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["roberta-debug", "electra-debug"])
def test_debug_presets_train(preset):
    arch, kwargs = find_preset(preset)
    mod = arch_module(arch)
    torch.manual_seed(0)
    model = mod.Model(mod.Config(**kwargs, vocab_size=120, pad_token_id=1))
    ids = torch.randint(3, 120, (4, 32))
    labels = torch.where(torch.rand(ids.shape) < 0.15, ids, -100)
    labels[0, 0] = ids[0, 0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = model(ids, torch.ones_like(ids), labels)
        loss = out["mlm_loss_sum"] / out["mlm_count"]
        if "rtd_loss_sum" in out:
            loss = loss + model.config.rtd_weight * out["rtd_loss_sum"] / out["rtd_count"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_config_rejects_unknown_keys():
    for arch in ("roberta", "electra"):
        with pytest.raises(TypeError, match="hiden_size"):
            arch_module(arch).Config(hiden_size=3)


@pytest.mark.parametrize(
    "preset,hf_cls,hf_kwargs,published",
    [
        ("distilroberta", "RobertaForMaskedLM", dict(**ROBERTA, num_hidden_layers=6), 82e6),
        ("distilbert", "BertForPreTraining", dict(num_hidden_layers=6), 66e6),
        (
            "tinybert-4l-312",
            "BertForPreTraining",
            dict(
                hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200
            ),
            14.5e6,
        ),
    ],
)
def test_distillation_student_counts_equal_transformers(preset, hf_cls, hf_kwargs, published):
    """The students of issue 15 (presets only so far): exact counts of HF's model of the same
    configuration, and the papers' figures within 3 % (DistilBERT's 66 M is its own
    architecture without token types, pooler and NSP head; ours keeps BERT's: 67.6 M, +2.4 %;
    distilroberta 82.1 M, tinybert-4l-312 14.48 M)."""
    arch, kwargs = find_preset(preset)
    ours = preset_counts(arch, kwargs)
    cfg_cls = transformers.RobertaConfig if arch == "roberta" else transformers.BertConfig
    assert ours["total"] == hf_count(getattr(transformers, hf_cls), cfg_cls(**hf_kwargs))
    assert abs(ours["total"] - published) / published <= 0.03, ours["total"]
