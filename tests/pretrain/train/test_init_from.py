"""``init_from``: a run starts from a local HF directory (a random-init ``transformers`` model
saved with ``save_pretrained``): the session's weights before the first step are the HF
weights, and a directory that does not fit the shards' tokenizer is refused in one line."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.common import CommandError
from data_pipeline.shards import Manifest
from pretrain.testing import debug_config
from pretrain.train import Session, build_model

transformers = pytest.importorskip("transformers")

VOCAB, PAD = 500, 1  # the synthetic shards' tokenizer
SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TINY = [
    "data.seq_len=32",
    "batch.global_batch_size=4",
    "batch.micro_batch_size=4",
    "eval.every_steps=0",
    "eval.at_end=false",
]


def hf_model(arch: str, vocab_size: int = VOCAB, pad: int = PAD):
    """A random-init HF MLM model (non-zero biases, so that every tensor is observable)."""
    torch.manual_seed(0)
    if arch == "roberta":
        cfg = transformers.RobertaConfig(
            vocab_size=vocab_size, pad_token_id=pad, max_position_embeddings=66, **SIZE
        )
        model = transformers.RobertaForMaskedLM(cfg)
    elif arch == "bert":  # BERT's pretraining model: MLM + NSP heads and the pooler
        cfg = transformers.BertConfig(
            vocab_size=vocab_size, pad_token_id=pad, max_position_embeddings=64, **SIZE
        )
        model = transformers.BertForPreTraining(cfg)
    elif arch == "albert":  # factorised embeddings, 2 layers sharing one group
        cfg = transformers.AlbertConfig(
            vocab_size=vocab_size, pad_token_id=pad, max_position_embeddings=64,
            embedding_size=16, **SIZE,
        )  # fmt: skip
        model = transformers.AlbertForPreTraining(cfg)
    else:  # DeBERTa-v3's architecture (what microsoft/deberta-v3-* configs say)
        cfg = transformers.DebertaV2Config(
            vocab_size=vocab_size,
            pad_token_id=pad,
            max_position_embeddings=64,
            relative_attention=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            position_biased_input=False,
            type_vocab_size=0,
            legacy=False,
            **SIZE,
        )
        model = transformers.DebertaV2ForMaskedLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("arch", ["roberta", "deberta", "bert", "albert"])
def test_the_session_starts_from_the_hf_weights(arch, shards, tmp_path):
    hf = hf_model(arch)
    hf.save_pretrained(tmp_path / "hf")
    cfg = debug_config(arch, shards, tmp_path / "run", f"init_from={tmp_path / 'hf'}", *TINY)
    session = Session(cfg)
    try:
        live = session.engine.module  # what the first step will update
        mine, theirs = live.state_dict(), hf.state_dict()
        shared = [k for k in theirs if k in mine]
        assert len(shared) == len(dict(live.named_parameters()))  # every parameter is HF's
        assert all(torch.equal(mine[k], theirs[k]) for k in shared)
        if arch == "deberta":  # no generator in the directory: MLM
            assert live.config.objective == "mlm"
        ids = torch.randint(5, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = live.eval().mlm_logits(ids, torch.ones_like(ids))
            out = hf(input_ids=ids)
            logits = out.logits if hasattr(out, "logits") else out.prediction_logits
            assert (ours - logits).abs().max() <= 1e-5
    finally:
        session.close()


@pytest.mark.parametrize("arch", ["roberta", "deberta"])
def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(arch, shards, tmp_path):
    hf_model(arch, vocab_size=VOCAB - 100).save_pretrained(tmp_path / "hf")
    cfg = debug_config(arch, shards, tmp_path / "run", f"init_from={tmp_path / 'hf'}", *TINY)
    with pytest.raises(
        CommandError, match=r"400 embedding rows, but the shards' tokenizer has 500"
    ):
        build_model(cfg, Manifest.load(shards).tokenizer)


def test_a_padding_id_other_than_the_tokenizers_is_refused(shards, tmp_path):
    hf_model("roberta", pad=0).save_pretrained(tmp_path / "hf")
    cfg = debug_config("roberta", shards, tmp_path / "run", f"init_from={tmp_path / 'hf'}", *TINY)
    with pytest.raises(CommandError, match="pad"):
        build_model(cfg, Manifest.load(shards).tokenizer)
