"""Pieces every architecture shares: attention masks, the sparse MLM/RTD loss sums,
replacement sampling for RTD, initialisation and parameter counting.

Losses are returned as *sums with counts* (see ``pretrain.models``): the objective
divides by the global number of predicted tokens across micro-batches and ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def attention_mask_for_sdpa(
    attention_mask: torch.Tensor, segment_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask for ``scaled_dot_product_attention`` (True = may attend).

    Without ``segment_ids``: (B, 1, 1, L), padding keys masked. With ``segment_ids``
    (packed documents): (B, 1, L, L), a query attends only to keys of its own non-zero
    segment. Every query row keeps at least one key (itself when it is padding) so that
    fully padded rows never produce NaNs.
    """
    keys = attention_mask.bool()
    if segment_ids is None:
        mask = keys[:, None, None, :]
        # A row with no real token at all would softmax over nothing: let it see itself.
        empty = ~keys.any(dim=1)
        if empty.any():
            mask = mask.clone()
            mask[empty, :, :, 0] = True
        return mask
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, L, L)
    mask = same & keys[:, None, :]
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    mask = mask | (eye & ~keys[:, :, None])  # padding queries attend to themselves only
    return mask[:, None]


def gather_predicted(
    hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H) hidden states and (N,) targets at the positions with a label.

    The MLM head then projects only these N rows onto the vocabulary (cramming's
    sparse prediction): with 15 % masking that is ~7x less head compute and memory.
    N depends on the data, so ``nonzero`` waits for the device (one host sync) and the
    shapes change every batch; ``gather_predicted_fixed`` is the static-shape variant.
    """
    flat = labels.reshape(-1)
    idx = (flat != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx), flat.index_select(0, idx)


def predicted_positions(labels: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) positions of each row's labelled tokens in increasing order, padded with
    unlabelled positions up to K = min(capacity, T), and (B, K) bool: really labelled.

    A row with more than K labels would lose the rest: ``gather_predicted_fixed`` checks.
    """
    t = labels.shape[1]
    k = max(1, min(int(capacity), t))
    pos = torch.arange(t, device=labels.device)
    labelled = labels != IGNORE_INDEX
    # Labelled positions sort first (keys < T), each group in increasing position order.
    order = torch.where(labelled, pos, pos + t)
    qpos = order.topk(k, dim=1, largest=False, sorted=True).indices  # (B, K)
    return qpos, labelled.gather(1, qpos)


def check_capacity(labels: torch.Tensor, capacity: int) -> None:
    """Refuse a batch with more labels in a row than the fixed capacity (never drop any).

    CPU: a plain check with a one-line error. CUDA: an asynchronous device assertion, so
    the step never waits for the device; it cannot fire when the capacity comes from
    ``pretrain.train.perf.predict_capacity`` (a bound the masking guarantees).
    """
    per_row = (labels != IGNORE_INDEX).sum(dim=1)
    if labels.device.type == "cuda":
        # torch._assert_async is torch's only device-side assertion (documented in the torch
        # reference, lowered by Inductor to a device assert, so it also works compiled): any
        # public check (torch._check, `if`, .item()) reads the value on the host, a sync per
        # step. The cost: a failure surfaces at a later kernel launch and leaves the CUDA
        # context unusable, acceptable for a bound the masking guarantees.
        torch._assert_async(
            (per_row <= capacity).all(), "more labels in a row than predict_capacity"
        )
    elif labels.numel() and int(per_row.max()) > capacity:
        raise ValueError(
            f"a row has {int(per_row.max())} labelled tokens, more than the model's "
            f"predict_capacity {capacity} (see pretrain.train.perf.predict_capacity)"
        )


def gather_predicted_fixed(
    hidden: torch.Tensor, labels: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Static-shape ``gather_predicted``: (B*K, H) states, (B*K,) targets (IGNORE_INDEX in
    the padding slots), and the (B, K) positions and validity of ``predicted_positions``.

    K is fixed per run, so there is no host sync and every step has the same shapes
    (torch.compile and CUDA graphs friendly). The valid rows are the same, in the same
    order, as ``gather_predicted``'s; the padding slots cost (K - labels per row) extra
    head rows and add nothing to the sums (``mlm_sums`` ignores their targets).
    """
    check_capacity(labels, capacity)
    pos, valid = predicted_positions(labels, capacity)  # (B, K)
    c = hidden.shape[-1]
    h = hidden.gather(1, pos[..., None].expand(-1, -1, c))  # (B, K, C)
    targets = torch.where(valid, labels.gather(1, pos), IGNORE_INDEX)  # (B, K)
    return h.reshape(-1, c), targets.reshape(-1), pos, valid


def gather_rows(
    hidden: torch.Tensor, labels: torch.Tensor, capacity: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(states, targets) the MLM head decodes: exactly the labelled positions
    (``gather_predicted``, capacity None) or the B*K fixed slots of ``gather_predicted_fixed``."""
    if capacity is None:
        return gather_predicted(hidden, labels)  # (N, C), (N,)
    h, targets, _, _ = gather_predicted_fixed(hidden, labels, capacity)
    return h, targets


def mlm_sums(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed cross-entropy, number correct and count over predicted positions; rows whose
    target is IGNORE_INDEX (the padding slots of ``gather_predicted_fixed``) count nothing."""
    loss = F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=IGNORE_INDEX)
    correct = (logits.argmax(-1) == targets).sum()  # an ignored target (-100) never matches
    return {
        "mlm_loss_sum": loss,
        "mlm_correct": correct,
        "mlm_count": (targets != IGNORE_INDEX).sum(),
    }


def sentence_sums(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sentence-pair classification (BERT's NSP, ALBERT's SOP) over (B, 2) logits: summed
    cross-entropy, number correct and count over rows whose label is not IGNORE_INDEX (empty
    rows of the loader carry IGNORE_INDEX). Label 0: B follows A (HF's convention for
    ``next_sentence_label`` and ``sentence_order_label``); 1: random B / swapped."""
    loss = F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=IGNORE_INDEX)
    return {
        "sentence_loss_sum": loss,
        "sentence_correct": (logits.argmax(-1) == labels).sum(),
        "sentence_count": (labels != IGNORE_INDEX).sum(),
    }


def rtd_sums(
    logits: torch.Tensor, is_replaced: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Replaced-token-detection BCE summed over real (non-padding) tokens, plus counts.

    Accuracy alone hides a discriminator stuck at the majority class ("original" is right
    for ~85 % of tokens): ``rtd_true_pos`` (flagged and replaced) and ``rtd_pred_pos``
    (flagged) give precision and recall on the replaced tokens (``replaced_count``)."""
    real = attention_mask.bool()
    replaced = is_replaced.bool() & real
    flagged = (logits > 0) & real
    target = is_replaced.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    correct = (flagged == replaced) & real
    return {
        "rtd_loss_sum": (bce * real).sum(),
        "rtd_correct": correct.sum(),
        "rtd_count": real.sum(),
        "replaced_count": replaced.sum(),
        "rtd_true_pos": (flagged & replaced).sum(),
        "rtd_pred_pos": flagged.sum(),
    }


@torch.no_grad()
def sample_replacements(logits: torch.Tensor) -> torch.Tensor:
    """Sample one token per row of (N, V) generator logits (no gradient through sampling).

    Uses the Gumbel-max trick with torch's global RNG, so it is reproducible whenever
    the RNG state is (the trainer checkpoints it).
    """
    u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32)
    # Parenthesised: ``-x.clamp_min`` would clamp before negating and give log(<0) = NaN.
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    return (logits.float() + gumbel).argmax(-1)


@torch.no_grad()
def init_weights(module: nn.Module, std: float) -> None:
    """BERT/HF/microsoft initialisation: N(0, std) linears and embeddings, zero biases and
    padding rows, unit LayerNorms. Use as ``model.apply(lambda m: init_weights(m, std))``."""
    if isinstance(module, nn.Linear):
        module.weight.normal_(0.0, std)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.normal_(0.0, std)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()


def count_params(module: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    seen, n = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n
