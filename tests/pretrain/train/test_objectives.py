"""Loss normalisation and metrics of ``pretrain.objectives``: RTD precision and recall on the
replaced tokens beside accuracy (a discriminator stuck at the majority class has accuracy
1 - replaced share and recall 0), in training windows and in validation."""

import pytest
import torch

from pretrain.models.common import rtd_sums, sentence_sums
from pretrain.train.objectives import SUM_KEYS, Objective, eval_metrics, raw_sums


def _rtd_out(logits, replaced, mask):
    n = int(mask.sum())
    out = {
        "mlm_loss_sum": torch.tensor(2.0 * n),
        "mlm_correct": torch.tensor(1),
        "mlm_count": torch.tensor(n),
    }
    out.update(rtd_sums(logits, replaced, mask))
    return out


def test_rtd_sums_count_flagged_and_replaced_real_tokens_only():
    logits = torch.tensor([[3.0, -1.0, 2.0, -2.0, 5.0]])
    replaced = torch.tensor([[True, True, False, False, True]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last token is padding: never counted
    out = rtd_sums(logits, replaced, mask)
    assert out["replaced_count"] == 2 and out["rtd_pred_pos"] == 2 and out["rtd_true_pos"] == 1
    assert out["rtd_correct"] == 2 and out["rtd_count"] == 4


def test_training_and_eval_metrics_report_precision_recall_and_replaced_share():
    mask = torch.ones(2, 10, dtype=torch.long)
    replaced = torch.zeros(2, 10, dtype=torch.bool)
    replaced[:, :2] = True  # 4 of 20 real tokens replaced
    flag = torch.full((2, 10), -4.0)
    flag[0, :3] = 4.0  # flags 3: 2 replaced (true positives) + 1 original
    out = _rtd_out(flag, replaced, mask)
    obj = Objective(rtd=True, rtd_weight=50.0)
    obj.set_step(torch.tensor([20.0, 20.0, 0.0], dtype=torch.float64), 1, 1)
    obj.loss(out)
    sums, steps = obj.take_sums()
    m = obj.metrics(sums, steps)
    assert m["rtd_precision"] == pytest.approx(2 / 3)
    assert m["rtd_recall"] == pytest.approx(2 / 4)
    assert m["rtd_replaced"] == pytest.approx(4 / 20)
    assert m["rtd_acc"] == pytest.approx(17 / 20)
    assert m["loss"] == pytest.approx(m["mlm_loss"] + 50.0 * m["rtd_loss"])
    ev = eval_metrics(raw_sums(out, rtd=True), rtd=True, rtd_weight=50.0)
    for k in ("rtd_precision", "rtd_recall", "rtd_replaced", "rtd_acc"):
        assert ev[f"eval_{k}"] == pytest.approx(m[k]), k


def test_majority_class_discriminator_has_zero_recall():
    """What accuracy hides: answering "original" everywhere scores 1 - replaced share."""
    mask = torch.ones(1, 20, dtype=torch.long)
    replaced = torch.zeros(1, 20, dtype=torch.bool)
    replaced[0, :3] = True
    ev = eval_metrics(
        raw_sums(_rtd_out(torch.full((1, 20), -3.0), replaced, mask), True), True, 50.0
    )
    assert ev["eval_rtd_acc"] == pytest.approx(1 - ev["eval_rtd_replaced"]) == pytest.approx(0.85)
    assert ev["eval_rtd_recall"] == 0.0 and ev["eval_rtd_precision"] == 0.0


def test_raw_sums_follow_sum_keys_for_mlm_and_rtd():
    out = {
        "mlm_loss_sum": torch.tensor(6.0),
        "mlm_correct": torch.tensor(2),
        "mlm_count": torch.tensor(3),
    }
    v = raw_sums(out, rtd=False)
    assert v.shape == (len(SUM_KEYS),) and v[3:].abs().sum() == 0
    ev = eval_metrics(v, rtd=False, rtd_weight=1.0)
    assert ev == {"eval_loss": 2.0, "eval_mlm_loss": 2.0, "eval_mlm_acc": pytest.approx(2 / 3)}


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_pair_term_is_normalised_by_its_own_global_count(task):
    """MLM + NSP/SOP: each term divided by its own global count (labelled positions, labelled
    rows), summed over micro-batches, as HF's BertForPreTraining adds the two means."""
    torch.manual_seed(0)
    micro = []
    for rows in (3, 5):  # micro-batches with different numbers of pairs
        logits = torch.randn(rows, 2)
        labels = torch.randint(0, 2, (rows,))
        labels[0] = -100  # an empty row: no pair
        out = {
            "mlm_loss_sum": torch.tensor(float(4 * rows)),
            "mlm_correct": torch.tensor(rows),
            "mlm_count": torch.tensor(2 * rows),
            **sentence_sums(logits, labels),
        }
        micro.append((out, logits, labels))
    n_mlm = sum(int(o["mlm_count"]) for o, _, _ in micro)
    n_pair = sum(int(o["sentence_count"]) for o, _, _ in micro)
    obj = Objective(rtd=False, pair_task=task)
    obj.set_step(
        torch.tensor([n_mlm, 99.0, n_pair], dtype=torch.float64), grad_accum=2, world_size=1
    )
    total = sum(obj.loss(o) for o, _, _ in micro) / 2  # DeepSpeed divides by grad_accum
    all_logits = torch.cat([lg for _, lg, _ in micro])
    all_labels = torch.cat([lb for _, _, lb in micro])
    pair_mean = torch.nn.functional.cross_entropy(all_logits, all_labels, ignore_index=-100)
    mlm_mean = sum(float(o["mlm_loss_sum"]) for o, _, _ in micro) / n_mlm
    assert float(total) == pytest.approx(mlm_mean + float(pair_mean), rel=1e-6)
    m = obj.metrics(*obj.take_sums())
    assert m[f"{task}_loss"] == pytest.approx(float(pair_mean), rel=1e-6)
    kept = all_labels != -100
    acc = (all_logits.argmax(-1)[kept] == all_labels[kept]).float().mean()
    assert m[f"{task}_acc"] == pytest.approx(float(acc))
    assert m["loss"] == pytest.approx(m["mlm_loss"] + m[f"{task}_loss"])
    ev = eval_metrics(sum(raw_sums(o, rtd=False) for o, _, _ in micro), False, 1.0, task)
    assert ev[f"eval_{task}_loss"] == pytest.approx(float(pair_mean), rel=1e-6)
    assert ev[f"eval_{task}_acc"] == pytest.approx(float(acc))
    assert ev["eval_loss"] == pytest.approx(ev["eval_mlm_loss"] + ev[f"eval_{task}_loss"])


def test_sbo_is_normalised_by_the_global_count_of_predicted_tokens():
    """MLM + SBO: both sums over the same predicted tokens, divided by their global count;
    logged (sbo_loss, sbo_acc) and validated (eval_sbo_*) beside MLM."""
    micro = [
        {
            "mlm_loss_sum": torch.tensor(float(3 * n)),
            "mlm_correct": torch.tensor(n // 2),
            "mlm_count": torch.tensor(n),
            "sbo_loss_sum": torch.tensor(float(5 * n + 1)),
            "sbo_correct": torch.tensor(n // 3),
        }
        for n in (4, 10)
    ]
    obj = Objective(rtd=False, sbo=True)
    obj.set_step(torch.tensor([14.0, 99.0, 0.0], dtype=torch.float64), grad_accum=2, world_size=2)
    total = sum(obj.loss(o) for o in micro) / 4  # DeepSpeed: / grad_accum, mean over ranks
    assert float(total) == pytest.approx((42 + 72) / 14)  # this rank's share of (S + S') / N
    m = obj.metrics(*obj.take_sums())
    assert m["sbo_loss"] == pytest.approx(72 / 14) and m["sbo_acc"] == pytest.approx(4 / 14)
    assert m["loss"] == pytest.approx(m["mlm_loss"] + m["sbo_loss"])
    ev = obj.eval_metrics(sum(obj.raw_sums(o) for o in micro))
    assert ev["eval_sbo_loss"] == pytest.approx(72 / 14) and ev["eval_sbo_acc"] == pytest.approx(
        4 / 14
    )
    assert ev["eval_loss"] == pytest.approx(ev["eval_mlm_loss"] + ev["eval_sbo_loss"])
