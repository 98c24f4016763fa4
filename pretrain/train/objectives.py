"""Loss normalisation: sums from the model, divided by GLOBAL counts of predicted tokens.

Models return loss *sums* and counts (``pretrain.models``). For one optimizer step made of
A micro-batches on each of W ranks, the objective is

    MLM:  L = S_mlm / N_mlm
    RTD:  L = S_mlm / N_mlm + rtd_weight * S_rtd / N_rtd
    pair: L = S_mlm / N_mlm + S_pair / N_pair     (BERT's NSP, ALBERT's SOP)
    SBO:  L = (S_mlm + S_sbo) / N_mlm             (SpanBERT: the same predicted tokens)

where S_* sum over all micro-batches and ranks and N_* are the global numbers of
predicted tokens (labels != -100 for MLM, real tokens for RTD, rows with a sentence label
for NSP/SOP: each term by its own count, as HF's BertForPreTraining adds two means). Averaging per micro-batch
instead would weight a token by how full its micro-batch happens to be.

DeepSpeed divides each micro-batch loss by A (``scale_wrt_gas``) and averages gradients
over W ranks, so the loss handed to ``engine.backward`` is multiplied by A * W: the
resulting gradient is exactly dL/dtheta. ``tests/pretrain/train/test_loop.py`` checks this
numerically against a single full-batch backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100
SUM_KEYS = (
    "mlm_loss",
    "mlm_correct",
    "mlm_count",
    "rtd_loss",
    "rtd_correct",
    "rtd_count",
    "rtd_replaced",  # real tokens the generator's sample changed (positives of RTD)
    "rtd_true_pos",  # ... of which the discriminator flagged
    "rtd_pred_pos",  # real tokens the discriminator flagged
    "sentence_loss",  # NSP / SOP
    "sentence_correct",
    "sentence_count",
    "sbo_loss",  # SpanBERT's span boundary objective (its count is mlm_count)
    "sbo_correct",
)
_SENTENCE = ("sentence_loss_sum", "sentence_correct", "sentence_count")
_SBO = ("sbo_loss_sum", "sbo_correct")
# Model output of each RTD count in SUM_KEYS (after the loss sum).
_RTD_COUNTS = ("rtd_correct", "rtd_count", "replaced_count", "rtd_true_pos", "rtd_pred_pos")


def local_counts(batches: Sequence[dict]) -> torch.Tensor:
    """(N_mlm, N_tokens, N_pairs) of this rank's micro-batches, float64 (exact up to 2**53)."""
    n_mlm = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    n_tok = sum(int(b["attention_mask"].sum()) for b in batches)
    n_pair = sum(
        int((b["sentence_labels"] != IGNORE_INDEX).sum()) for b in batches if "sentence_labels" in b
    )
    return torch.tensor([n_mlm, n_tok, n_pair], dtype=torch.float64)


class Objective:
    """Scales micro-batch losses for the backward pass and accumulates exact metrics.

    ``set_step(global_counts, grad_accum, world_size)`` once per optimizer step (before the
    first backward), then ``loss(outputs)`` per micro-batch. The metric sums accumulate
    over steps until ``take_sums()``; the trainer all-reduces them once per logged step.
    """

    keys = SUM_KEYS  # the metric sums this objective accumulates, in order

    def __init__(
        self,
        rtd: bool,
        rtd_weight: float = 1.0,
        pair_task: str | None = None,
        mlm_weight: float = 1.0,
        sbo: bool = False,
    ):
        """``pair_task``: "nsp" or "sop" when the model has a sentence-pair head fed by pair
        rows (the metrics are named after it), else None. ``mlm_weight``: the MLM term's
        weight (1; distillation's hard-label weight, ``pretrain.distill``). ``sbo``: the model
        has SpanBERT's span boundary head."""
        self.rtd, self.rtd_weight, self.pair_task = rtd, float(rtd_weight), pair_task
        self.mlm_weight, self.sbo = float(mlm_weight), sbo
        self._scale_mlm = self._scale_rtd = self._scale_pair = 0.0
        self._inv_mlm = self._inv_rtd = self._inv_pair = 0.0
        self._sums: torch.Tensor | None = None
        self.steps = 0

    def local_counts(self, batches: Sequence[dict], segments: bool) -> torch.Tensor:
        """This rank's counts that normalise the loss terms (all-reduced, then ``set_step``);
        ``segments``: whether the model gets segment ids (unused here)."""
        return local_counts(batches)

    def set_step(self, global_counts: torch.Tensor, grad_accum: int, world_size: int) -> None:
        n_mlm, n_tok, n_pair = (float(x) for x in global_counts.tolist()[:3])
        # A step with nothing to predict has zero loss sums; max(., 1) keeps them finite.
        self._inv_mlm, self._inv_rtd = 1.0 / max(n_mlm, 1.0), 1.0 / max(n_tok, 1.0)
        self._inv_pair = 1.0 / max(n_pair, 1.0)
        self._scale_mlm = grad_accum * world_size * self._inv_mlm * self.mlm_weight
        self._scale_rtd = grad_accum * world_size * self._inv_rtd * self.rtd_weight
        self._scale_pair = grad_accum * world_size * self._inv_pair
        self._scale_sbo = grad_accum * world_size * self._inv_mlm
        self.steps += 1

    def loss(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss to hand to ``engine.backward`` for one micro-batch's model outputs."""
        loss = out["mlm_loss_sum"] * self._scale_mlm
        if self.rtd:
            loss = loss + out["rtd_loss_sum"] * self._scale_rtd
        if self.pair_task:
            loss = loss + out["sentence_loss_sum"] * self._scale_pair
        if self.sbo:
            loss = loss + out["sbo_loss_sum"] * self._scale_sbo
        self._accumulate(out)
        return loss

    def _accumulate(self, out: dict[str, torch.Tensor]) -> None:
        device = out["mlm_loss_sum"].device
        vals = self._values(out)
        vec = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in vals])
        self._sums = vec if self._sums is None else self._sums + vec

    def _values(self, out: dict[str, torch.Tensor]) -> list:
        """One micro-batch's entries of ``keys``. Loss terms are stored already normalised
        by this step's global count, so that their all-reduced sum is the exact global loss
        of the step (averaged over steps)."""
        vals = [
            out["mlm_loss_sum"].detach().double() * self._inv_mlm,
            out["mlm_correct"],
            out["mlm_count"],
        ]
        if self.rtd:
            vals += [out["rtd_loss_sum"].detach().double() * self._inv_rtd]
            vals += [out[k] for k in _RTD_COUNTS]
        else:
            vals += [0.0] * (1 + len(_RTD_COUNTS))
        if self.pair_task:
            vals += [out["sentence_loss_sum"].detach().double() * self._inv_pair]
            vals += [out["sentence_correct"], out["sentence_count"]]
        else:
            vals += [0.0] * len(_SENTENCE)
        if self.sbo:
            vals += [out["sbo_loss_sum"].detach().double() * self._inv_mlm, out["sbo_correct"]]
        else:
            vals += [0.0] * len(_SBO)
        return vals

    def take_sums(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
        """(local sums vector in ``SUM_KEYS`` order, steps) since the last call; resets."""
        sums = (
            self._sums
            if self._sums is not None
            else torch.zeros(len(self.keys), dtype=torch.float64)
        )
        steps, self._sums, self.steps = self.steps, None, 0
        return sums.to(device), steps

    def metrics(self, global_sums: torch.Tensor, steps: int) -> dict[str, float]:
        """Logged values from all-reduced sums over ``steps`` optimizer steps."""
        s = dict(zip(SUM_KEYS, global_sums.tolist()[: len(SUM_KEYS)], strict=True))
        steps = max(steps, 1)
        m = {
            "mlm_loss": s["mlm_loss"] / steps,
            "mlm_acc": s["mlm_correct"] / max(s["mlm_count"], 1.0),
        }
        m["loss"] = self.mlm_weight * m["mlm_loss"]
        if self.rtd:
            m["rtd_loss"] = s["rtd_loss"] / steps
            m.update(_rtd_rates(s))
            m["loss"] += self.rtd_weight * m["rtd_loss"]
        if self.pair_task:
            m[f"{self.pair_task}_loss"] = s["sentence_loss"] / steps
            m[f"{self.pair_task}_acc"] = s["sentence_correct"] / max(s["sentence_count"], 1.0)
            m["loss"] += m[f"{self.pair_task}_loss"]
        if self.sbo:
            m["sbo_loss"] = s["sbo_loss"] / steps
            m["sbo_acc"] = s["sbo_correct"] / max(s["mlm_count"], 1.0)
            m["loss"] += m["sbo_loss"]
        return {"loss": m.pop("loss"), **m}

    def raw_sums(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """One micro-batch's unnormalised sums in ``keys`` order (for evaluation)."""
        return raw_sums(out, self.rtd)

    def eval_metrics(self, global_sums: torch.Tensor) -> dict[str, float]:
        """Validation metrics from all-reduced ``raw_sums``."""
        return eval_metrics(
            global_sums, self.rtd, self.rtd_weight, self.pair_task, self.mlm_weight, self.sbo
        )


def eval_metrics(
    global_sums: torch.Tensor,
    rtd: bool,
    rtd_weight: float,
    pair_task: str | None = None,
    mlm_weight: float = 1.0,
    sbo: bool = False,
) -> dict[str, float]:
    """Validation metrics from all-reduced raw sums (``SUM_KEYS`` order, losses unnormalised)."""
    s = dict(zip(SUM_KEYS, global_sums.tolist()[: len(SUM_KEYS)], strict=True))
    m = {
        "eval_mlm_loss": s["mlm_loss"] / max(s["mlm_count"], 1.0),
        "eval_mlm_acc": s["mlm_correct"] / max(s["mlm_count"], 1.0),
    }
    loss = mlm_weight * m["eval_mlm_loss"]
    if rtd:
        m["eval_rtd_loss"] = s["rtd_loss"] / max(s["rtd_count"], 1.0)
        m.update({f"eval_{k}": v for k, v in _rtd_rates(s).items()})
        loss += rtd_weight * m["eval_rtd_loss"]
    if pair_task:
        n = max(s["sentence_count"], 1.0)
        m[f"eval_{pair_task}_loss"] = s["sentence_loss"] / n
        m[f"eval_{pair_task}_acc"] = s["sentence_correct"] / n
        loss += m[f"eval_{pair_task}_loss"]
    if sbo:  # over the same predicted tokens as MLM
        n = max(s["mlm_count"], 1.0)
        m["eval_sbo_loss"], m["eval_sbo_acc"] = s["sbo_loss"] / n, s["sbo_correct"] / n
        loss += m["eval_sbo_loss"]
    return {"eval_loss": loss, **m}


def _rtd_rates(s: dict[str, float]) -> dict[str, float]:
    """Accuracy over real tokens, precision and recall on the replaced ones, and the replaced
    share (1 - share is the accuracy of always answering "original": the majority class)."""
    return {
        "rtd_acc": s["rtd_correct"] / max(s["rtd_count"], 1.0),
        "rtd_precision": s["rtd_true_pos"] / max(s["rtd_pred_pos"], 1.0),
        "rtd_recall": s["rtd_true_pos"] / max(s["rtd_replaced"], 1.0),
        "rtd_replaced": s["rtd_replaced"] / max(s["rtd_count"], 1.0),
    }


def raw_sums(out: dict[str, torch.Tensor], rtd: bool) -> torch.Tensor:
    """One micro-batch's unnormalised sums in ``SUM_KEYS`` order (for evaluation)."""
    zero = out["mlm_loss_sum"].new_zeros((), dtype=torch.float64)
    keys = ["mlm_loss_sum", "mlm_correct", "mlm_count"]
    keys += ["rtd_loss_sum", *_RTD_COUNTS] if rtd else [None] * (1 + len(_RTD_COUNTS))
    keys += _SENTENCE if "sentence_loss_sum" in out else [None] * len(_SENTENCE)
    keys += _SBO if "sbo_loss_sum" in out else [None] * len(_SBO)
    return torch.stack([zero if k is None else out[k].detach().double() for k in keys])
