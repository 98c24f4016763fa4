"""The distillation objective: the student's usual terms plus the ``[distill]`` terms, each
divided by its own global count across micro-batches and ranks (``pretrain.distill.losses``
has the sums):

    L = w_mlm S_mlm / N_mlm + w_ce S_ce / N_mlm + (w_cos S_cos + w_emb S_emb
        + w_hid S_hid) / N_tok + w_att S_att / N_visible  (+ NSP/SOP as without distillation)

``N_visible`` (query-key pairs a real query may attend to) is counted from the batches on
the host, like the other counts, so every rank knows the global one before its backward.
Logged as ``distill_<term>`` (training) and ``eval_distill_<term>`` (validation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from data_pipeline.common import CommandError
from pretrain.config.distill import TERMS
from pretrain.distill.losses import visible_pair_count
from pretrain.train.objectives import SUM_KEYS, Objective, local_counts

KD_TERMS = tuple(t for t in TERMS if t != "mlm")  # the terms with a kd_<term>_sum
_COUNT = {"ce": 0, "cos": 1, "embedding": 1, "hidden": 1, "attention": 3}  # index in counts
KD_KEYS = (*(f"kd_{t}" for t in KD_TERMS), "kd_tokens", "kd_attention_count")


class DistillObjective(Objective):
    """``Objective`` with the distillation terms (see the module docstring)."""

    keys = SUM_KEYS + KD_KEYS

    def __init__(self, weights: dict[str, float], pair_task: str | None = None, sbo: bool = False):
        super().__init__(False, pair_task=pair_task, mlm_weight=weights["mlm"], sbo=sbo)
        self.weights = {t: float(weights[t]) for t in KD_TERMS}
        self._kd_inv = dict.fromkeys(KD_TERMS, 0.0)
        self._kd_scale = dict.fromkeys(KD_TERMS, 0.0)

    def local_counts(self, batches: Sequence[dict], segments: bool) -> torch.Tensor:
        """(N_mlm, N_tok, N_pair, N_visible) of this rank's micro-batches."""
        n_visible = 0
        if self.weights["attention"]:
            for b in batches:
                seg = b["segment_ids"] if segments else None
                n_visible += visible_pair_count(b["attention_mask"], seg)
        extra = torch.tensor([n_visible], dtype=torch.float64)
        return torch.cat([local_counts(batches), extra])

    def set_step(self, global_counts: torch.Tensor, grad_accum: int, world_size: int) -> None:
        super().set_step(global_counts, grad_accum, world_size)
        counts = [float(x) for x in global_counts.tolist()]
        for t in KD_TERMS:
            self._kd_inv[t] = 1.0 / max(counts[_COUNT[t]], 1.0)
            self._kd_scale[t] = grad_accum * world_size * self._kd_inv[t] * self.weights[t]

    def loss(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = super().loss(out)
        for t in KD_TERMS:
            if self.weights[t]:
                loss = loss + out[f"kd_{t}_sum"] * self._kd_scale[t]
        return loss

    def _values(self, out: dict[str, torch.Tensor]) -> list:
        vals = super()._values(out)
        for t in KD_TERMS:
            on = self.weights[t]
            vals.append(out[f"kd_{t}_sum"].detach().double() * self._kd_inv[t] if on else 0.0)
        return vals + [out["kd_tokens"], out.get("kd_attention_count", 0.0)]

    def metrics(self, global_sums: torch.Tensor, steps: int) -> dict[str, float]:
        m = super().metrics(global_sums, steps)
        s = dict(zip(self.keys, global_sums.tolist(), strict=True))
        for t in KD_TERMS:
            if self.weights[t]:
                m[f"distill_{t}"] = s[f"kd_{t}"] / max(steps, 1)
                m["loss"] += self.weights[t] * m[f"distill_{t}"]
        return m

    def raw_sums(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        zero = out["mlm_loss_sum"].new_zeros((), dtype=torch.float64)
        extra = [out.get(f"kd_{t}_sum", zero) for t in KD_TERMS]
        extra += [out["kd_tokens"], out.get("kd_attention_count", zero)]
        extra = torch.stack([torch.as_tensor(v).detach().double().to(zero.device) for v in extra])
        return torch.cat([super().raw_sums(out), extra])

    def eval_metrics(self, global_sums: torch.Tensor) -> dict[str, float]:
        m = super().eval_metrics(global_sums)
        s = dict(zip(self.keys, global_sums.tolist(), strict=True))
        counts = (s["mlm_count"], s["kd_tokens"], 0.0, s["kd_attention_count"])
        for t in KD_TERMS:
            if self.weights[t]:
                m[f"eval_distill_{t}"] = s[f"kd_{t}"] / max(counts[_COUNT[t]], 1.0)
                m["eval_loss"] += self.weights[t] * m[f"eval_distill_{t}"]
        return m


def distill_json(model_json: str, model) -> str:
    """model.json of a run: the student's architecture and config, plus, when distilling,
    the ``Plan`` (``distill``: what rebuilds the checkpoint's module, the teacher's identity)."""
    plan = getattr(model, "plan", None)
    if plan is None:
        return model_json
    return json.dumps({**json.loads(model_json), "distill": plan.to_dict()}, indent=1) + "\n"


def check_teacher_unchanged(point, model) -> str | None:
    """Refuse to resume a checkpoint with another teacher (or with/without distillation):
    the run would not continue the one that was checkpointed. Changed weights, temperature
    or layer map are allowed: returns a note naming them (None if nothing changed)."""
    path = point.tag_dir / "model.json"
    saved = json.loads(path.read_text()).get("distill") if path.is_file() else None
    plan = getattr(model, "plan", None)
    if saved is None and plan is None:
        return None
    if saved is None or plan is None:
        what = "without" if saved is None else "with"
        raise CommandError(
            f"{point.tag_dir}: written {what} distillation; this config "
            f"{'distils' if plan is not None else 'does not distil'} (use another run_dir)"
        )
    if saved.get("teacher_fingerprint") != plan.teacher_fingerprint:
        raise CommandError(
            f"{point.tag_dir}: trained from teacher {saved.get('teacher')!r} "
            f"(sha256 {str(saved.get('teacher_fingerprint'))[:12]}), but distill.teacher "
            f"{plan.teacher!r} is another model (sha256 {plan.teacher_fingerprint[:12]}); "
            "resume needs the same teacher"
        )
    changed = [
        f"{key}: {saved.get(key)} -> {getattr(plan, key)}"
        for key in ("weights", "temperature", "layer_map")
        if saved.get(key) != getattr(plan, key)
    ]
    return (
        f"note: distillation settings changed since the checkpoint: {'; '.join(changed)}"
        if changed
        else None
    )
