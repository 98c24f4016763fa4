"""The transformers side of the benches: HF models holding our model's exact weights, wrapped
to the interface of ``pretrain.models`` (``forward(input_ids, attention_mask, labels,
segment_ids=None) -> sums and counts``; BERT / ALBERT also ``token_type_ids`` and
``sentence_labels``) so that the trainer's own step function and DeepSpeed config drive them
exactly as they drive ours.

The wrappers do what a user of ``transformers`` writes, the straightforward way:

* RoBERTa / DeBERTa: ``RobertaForMaskedLM`` / ``DebertaV2ForMaskedLM`` called with
  ``labels=`` (full-vocabulary logits for every position, HF's own loss); the sum is that
  mean times the number of labels;
* BERT / ALBERT: ``BertForPreTraining`` / ``AlbertForPreTraining`` called with ``labels=``,
  ``token_type_ids=`` and ``next_sentence_label=`` / ``sentence_order_label=`` (HF's own
  loss: the MLM mean plus the NSP / SOP mean, full-vocabulary logits for every position).
  HF returns only that total: the sentence mean is recomputed from the returned 2-way logits
  exactly as HF computes it (a (B, 2) cross-entropy, negligible), the MLM mean is the total
  minus it, and each sum is its mean times its count;
* ELECTRA: ``ElectraForMaskedLM`` generator (full-vocabulary logits, cross-entropy over the
  labelled positions), Gumbel sampling of replacements at the labelled positions,
  ``ElectraForPreTraining`` discriminator with BCE over real tokens; the generator shares
  the discriminator's embeddings and ties its output layer to them, as ours does.

HF models know nothing of packed documents: ``segment_ids`` are ignored (attention spans
the whole row; a sentence-pair row holds one pair, so the trainer passes none anyway).
Accuracy, precision and recall counts are not computed (zeros): the benches time the
training step, and the argmax over full-vocabulary logits would be extra work HF users do
not do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models import hf_module
from pretrain.models.common import IGNORE_INDEX, sample_replacements


class HFMaskedLM(nn.Module):
    """``*ForMaskedLM`` with ``labels=`` -> the sums of ``pretrain.models``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask, labels, segment_ids=None) -> dict:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        count = (labels != IGNORE_INDEX).sum()
        return {
            "mlm_loss_sum": out.loss * count,  # HF returns the mean over labelled tokens
            "mlm_correct": torch.zeros_like(count),
            "mlm_count": count,
        }


class HFPreTraining(nn.Module):
    """``BertForPreTraining`` / ``AlbertForPreTraining`` with ``labels=`` and the sentence
    label (``next_sentence_label`` / ``sentence_order_label``) -> the sums of
    ``pretrain.models``' pair models."""

    def __init__(self, hf: nn.Module, label_arg: str, logits_field: str):
        super().__init__()
        self.hf, self.label_arg, self.logits_field = hf, label_arg, logits_field

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        segment_ids=None,
        token_type_ids=None,
        sentence_labels=None,
    ) -> dict:
        count = (labels != IGNORE_INDEX).sum()
        zero = torch.zeros_like(count)
        if sentence_labels is None:  # no pair rows: HF computes no loss, MLM the way it would
            out = self.hf(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            logits = out.prediction_logits
            mlm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            return {"mlm_loss_sum": mlm * count, "mlm_correct": zero, "mlm_count": count}
        out = self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            labels=labels,
            **{self.label_arg: sentence_labels},
        )
        # HF's loss is mlm_mean + sentence_mean; the sentence mean as HF computes it.
        sentence = F.cross_entropy(
            getattr(out, self.logits_field).view(-1, 2), sentence_labels.view(-1)
        )
        n_pairs = (sentence_labels != IGNORE_INDEX).sum()
        return {
            "mlm_loss_sum": (out.loss - sentence) * count,
            "mlm_correct": zero,
            "mlm_count": count,
            "sentence_loss_sum": sentence * n_pairs,
            "sentence_correct": torch.zeros_like(n_pairs),
            "sentence_count": n_pairs,
        }


class HFElectraRTD(nn.Module):
    """``ElectraForMaskedLM`` + ``ElectraForPreTraining`` trained jointly (replaced-token
    detection written around the HF models)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        # Shared embeddings and a tied generator output layer, as in ELECTRA and in ours.
        generator.electra.embeddings = discriminator.electra.embeddings
        words = discriminator.electra.embeddings.word_embeddings.weight
        generator.generator_lm_head.weight = words

    def forward(self, input_ids, attention_mask, labels, segment_ids=None) -> dict:
        logits = self.generator(input_ids=input_ids, attention_mask=attention_mask).logits
        mlm = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="sum"
        )
        predicted = labels != IGNORE_INDEX  # (B, T)
        original = torch.where(predicted, labels, input_ids)
        corrupted = original.clone()
        corrupted[predicted] = sample_replacements(logits[predicted])  # no gradient
        replaced = (corrupted != original).float()
        d_logits = self.discriminator(input_ids=corrupted, attention_mask=attention_mask).logits
        bce = F.binary_cross_entropy_with_logits(d_logits.float(), replaced, reduction="none")
        real = attention_mask.to(bce.dtype)
        count = predicted.sum()
        zero = torch.zeros_like(count)
        return {
            "mlm_loss_sum": mlm,
            "mlm_correct": zero,
            "mlm_count": count,
            "rtd_loss_sum": (bce * real).sum(),
            "rtd_correct": zero,
            "rtd_count": attention_mask.sum(),
            "replaced_count": zero,
            "rtd_true_pos": zero,
            "rtd_pred_pos": zero,
        }


def hf_twin(arch: str, ours: nn.Module) -> nn.Module:
    """The HF model(s) holding ``ours``'s weights and configuration, wrapped as above.

    Goes through our production exporter (``export_hf``) and HF's ``from_pretrained``, so
    the two sides are the same network: the parity tests check exactly this round trip.
    """
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars in bench logs
    with tempfile.TemporaryDirectory() as d:
        hf_module(arch).export_hf(ours, d)
        if arch == "electra":
            disc = transformers.ElectraForPreTraining.from_pretrained(d)
            gen = transformers.ElectraForMaskedLM.from_pretrained(Path(d) / "generator")
            return HFElectraRTD(gen, disc)
        if arch == "bert":
            hf = transformers.BertForPreTraining.from_pretrained(d)
            return HFPreTraining(hf, "next_sentence_label", "seq_relationship_logits")
        if arch == "albert":
            hf = transformers.AlbertForPreTraining.from_pretrained(d)
            return HFPreTraining(hf, "sentence_order_label", "sop_logits")
        if arch == "deberta" and getattr(ours.config, "objective", "mlm") != "mlm":
            raise ValueError("transformers has no DeBERTa RTD pretraining model: use objective=mlm")
        return HFMaskedLM(transformers.AutoModelForMaskedLM.from_pretrained(d))
