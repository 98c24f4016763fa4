"""The Hugging Face side of ``bench/quality.py``: ``transformers`` models of our model's size,
initialised by ``transformers`` itself, trained in a plain torch loop.

The loop is what a user of ``transformers`` writes: ``torch.optim.AdamW`` with the HF
Trainer's weight-decay exclusions (biases and LayerNorm weights), HF's
``get_linear_schedule_with_warmup``, ``clip_grad_norm_``, one optimizer step per global
batch with the loss averaged over the batch's predicted tokens. Only the speed is ours: the
MLM head projects the predicted positions only (the loss and its gradient are those of
HF's full-logits cross-entropy with ``ignore_index``), so the CPU bench is not dominated by
(B, T, V) logits.

``HFSide.forward`` returns the sums and counts of ``pretrain.models``, so both sides are
scored by the same code. HF models know nothing of packed documents: attention spans the
whole row.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from pretrain.models import hf_module
from pretrain.models.common import IGNORE_INDEX, mlm_sums, rtd_sums, sample_replacements


def _labelled(h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sel = labels != IGNORE_INDEX
    return h[sel], labels[sel]  # (N, C), (N,)


class HFSide(nn.Module):
    """RoBERTa / DeBERTa MLM (``*ForMaskedLM``) or the ELECTRA pair (``ElectraForMaskedLM``
    generator + ``ElectraForPreTraining`` discriminator sharing embeddings, the generator's
    output layer tied to them, as in ELECTRA), with ``pretrain.models``' forward."""

    def __init__(self, arch: str, mlm: nn.Module, discriminator: nn.Module | None = None):
        super().__init__()
        self.arch, self.mlm, self.discriminator = arch, mlm, discriminator
        if discriminator is not None:
            self.mlm.electra.embeddings = discriminator.electra.embeddings
            self.mlm.generator_lm_head.weight = (
                discriminator.electra.embeddings.word_embeddings.weight
            )

    def _mlm_logits(self, input_ids, attention_mask, labels):
        m = self.mlm
        if self.arch == "roberta":
            h = m.roberta(input_ids=input_ids, attention_mask=attention_mask)[0]
            h, targets = _labelled(h, labels)
            return m.lm_head(h), targets
        if self.arch == "deberta":
            h = m.deberta(input_ids=input_ids, attention_mask=attention_mask)[0]
            h, targets = _labelled(h, labels)
            return m.lm_predictions(h, m.deberta.embeddings.word_embeddings), targets
        h = m.electra(input_ids=input_ids, attention_mask=attention_mask)[0]
        h, targets = _labelled(h, labels)
        return m.generator_lm_head(m.generator_predictions(h)), targets

    def forward(self, input_ids, attention_mask, labels, segment_ids=None) -> dict:
        logits, targets = self._mlm_logits(input_ids, attention_mask, labels)
        out = mlm_sums(logits, targets)
        if self.discriminator is None:
            return out
        predicted = labels != IGNORE_INDEX  # (B, T)
        original = torch.where(predicted, labels, input_ids)
        corrupted = original.masked_scatter(predicted, sample_replacements(logits))
        d_logits = self.discriminator(input_ids=corrupted, attention_mask=attention_mask).logits
        out.update(rtd_sums(d_logits, corrupted != original, attention_mask))
        return out


def build_hf_side(arch: str, ours: nn.Module, seed: int) -> HFSide:
    """HF model(s) with ``ours``'s configuration (through our exporter's ``config.json``),
    freshly initialised by ``transformers`` from ``seed``."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as d:
        hf_module(arch).export_hf(ours, d)
        cfg = transformers.AutoConfig.from_pretrained(d)
        gen_cfg = (
            transformers.AutoConfig.from_pretrained(Path(d) / "generator")
            if arch == "electra"
            else None
        )
    torch.manual_seed(seed)
    if arch == "electra":
        disc = transformers.ElectraForPreTraining(cfg)
        return HFSide(arch, transformers.ElectraForMaskedLM(gen_cfg), disc)
    if arch == "deberta" and getattr(ours.config, "objective", "mlm") != "mlm":
        raise ValueError("transformers has no DeBERTa RTD pretraining model: use objective=mlm")
    return HFSide(arch, transformers.AutoModelForMaskedLM.from_config(cfg))


def hf_optimizer(model: nn.Module, cfg) -> tuple[torch.optim.Optimizer, object]:
    """torch AdamW with the HF Trainer's decay exclusions + HF's linear warm-up/decay."""
    import transformers

    o, s = cfg.optimizer, cfg.schedule
    if cfg.schedule.kind != "linear" or o.name != "adamw":
        raise ValueError("the HF side runs AdamW with a linear schedule (as the configs here)")
    decay, rest = [], []
    for name, p in model.named_parameters():
        (
            rest if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay
        ).append(p)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = transformers.get_linear_schedule_with_warmup(opt, s.warmup_steps, cfg.total_steps)
    return opt, sched


def hf_train(model: HFSide, batches, cfg, steps: int, rtd_weight: float, log=None) -> None:
    """``steps`` optimizer steps of ``model`` on ``batches`` (an iterator of global batches);
    ``log(step, outputs)`` after each step, if given."""
    opt, sched = hf_train.state.setdefault(id(model), hf_optimizer(model, cfg))
    model.train()
    for _ in range(steps):
        b = next(batches)
        out = model(b["input_ids"], b["attention_mask"], b["labels"])
        loss = out["mlm_loss_sum"] / out["mlm_count"].clamp_min(1)
        if "rtd_loss_sum" in out:
            loss = loss + rtd_weight * out["rtd_loss_sum"] / out["rtd_count"].clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optimizer.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        opt.step()
        sched.step()
        if log is not None:
            log(out)


hf_train.state = {}  # optimizer and schedule of each model, kept between calls
