"""Model FLOPs per token, device peak FLOP/s and MFU.

Counting convention (PaLM/Megatron "model FLOPs"): a matmul of (m, k) by (k, n) costs
2*m*k*n; softmax, GELU, LayerNorm, biases, dropout and embedding lookups are not
counted; training = forward + backward = 3x forward (the backward computes gradients
for inputs and weights, 2x). Recomputation (activation checkpointing) is not counted:
this is MFU, not hardware utilisation.

Per input token, forward, for an encoder layer with hidden h, FFN width f, sequence
length T::

    layer      = 8 h^2          Q, K, V and output projections
               + 4 h f          FFN up and down
               + 4 T h          attention scores QK^T (2 T h) and AV (2 T h), all heads

DeBERTa adds, with S = 2 * att_span relative-embedding rows (att_span = position_buckets;
unbucketed: max_relative_positions, or max_position_embeddings when that is < 1)::

               + 4 S h          content->position (Q . K_rel) and position->content
                                (K . Q_rel) scores, computed against all S rows and then
                                gathered (the gather is not FLOPs)
               + 4 S h^2 / (T B) projecting the S relative embeddings through the shared
                                query/key projections once per micro-batch of B sequences

The MLM head runs only on the predicted fraction p of tokens (sparse head):
p * (2 h e + 2 e V) (dense h->e, GELU, LayerNorm, tied decoder e->V; e = h except for
ELECTRA's generator and ALBERT, which project to embedding_size). An input projection
embedding_size -> h, where present (ELECTRA; ALBERT always), costs 2 e h per token. ALBERT's
shared layers cost what unshared ones do (each layer runs; with inner_group_num > 1 each runs
that many). BERT and ALBERT add the pooler and the NSP/SOP classifier on [CLS], once per
sequence: (2 h^2 + 4 h) / T per token. RTD models count the
generator (its own width and depth, MLM head on p), the discriminator, and the RTD head
(dense h->h, then h->1) on every token.

DeBERTa's enhanced mask decoder (``emd``) skips the last layer's full pass and re-applies
that layer EMD_REPEATS = 2 times with the predicted positions as queries; per pass::

    emd pass   = p (4 h^2 + 4 h f + 4 T h + 2 S h)      Q and output projections, FFN,
                                                        QK^T/AV and c2p for the queries
               + 4 h^2 + 2 S h + 4 S h^2 / (T B)        K, V and p2c for every key, and
                                                        the relative projections

Not counted: the model's padding of EMD queries to a multiple of 64 (hardware work, not
model work), GDES's elementwise sum of the embedding tables, the discriminator input
construction and the sampling of replacements (no matmuls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_ARCH_MODULES = {
    "pretrain.models.bert": "bert",
    "pretrain.models.albert": "albert",
    "pretrain.models.roberta": "roberta",
    "pretrain.models.electra": "electra",
    "pretrain.models.deberta": "deberta",
}
EMD_REPEATS = 2  # microsoft/DeBERTa applies the enhanced mask decoder's layer twice


@dataclass(frozen=True)
class _Encoder:
    hidden: int
    layers: int
    ffn: int
    rel_rows: int = 0  # DeBERTa: 2 * att_span relative embeddings; 0 = absolute positions


def _layer_flops(enc: _Encoder, seq_len: int, micro_batch_size: int) -> dict[str, float]:
    h, f, t, s = enc.hidden, enc.ffn, seq_len, enc.rel_rows
    out = {
        "attn_proj": 8.0 * h * h,
        "ffn": 4.0 * h * f,
        "attn_scores": 4.0 * t * h,
    }
    if s:
        out["rel_scores"] = 4.0 * s * h
        out["rel_proj"] = 4.0 * s * h * h / (t * micro_batch_size)
    return out


def _arch(model) -> str:
    module = type(model).__module__
    if module in _ARCH_MODULES:
        return _ARCH_MODULES[module]
    raise ValueError(
        f"cannot count FLOPs of {type(model).__qualname__} from {module!r}: "
        f"expected a model from {sorted(_ARCH_MODULES)}"
    )


def _att_span(cfg) -> int:
    """DeBERTa's number of relative positions on each side (HF ``pos_ebd_size``)."""
    buckets = getattr(cfg, "position_buckets", -1) or -1
    if buckets > 0:
        return buckets
    max_rel = getattr(cfg, "max_relative_positions", -1) or -1
    return max_rel if max_rel > 0 else cfg.max_position_embeddings


def flops_breakdown(
    model, seq_len: int, predicted_fraction: float, *, micro_batch_size: int = 1
) -> dict[str, float]:
    """Forward FLOPs per input token by component (see the module docstring).

    Keys: ``[gen_]attn_proj``, ``[gen_]ffn``, ``[gen_]attn_scores``, DeBERTa's
    ``[gen_]rel_scores``/``[gen_]rel_proj``, ``[gen_]embed_proj``, ``mlm_head``, ``emd``
    and ``rtd_head`` where they apply; ``gen_`` marks an RTD model's generator.
    """
    if seq_len <= 0 or micro_batch_size <= 0:
        raise ValueError("seq_len and micro_batch_size must be positive")
    if not 0.0 <= predicted_fraction <= 1.0:
        raise ValueError(f"predicted_fraction must be in [0, 1], got {predicted_fraction}")
    arch, cfg, p = _arch(model), model.config, float(predicted_fraction)
    t, b, h = seq_len, micro_batch_size, cfg.hidden_size
    rtd = arch == "electra" or (arch == "deberta" and getattr(cfg, "objective", "mlm") == "rtd")
    emd = arch == "deberta" and bool(getattr(cfg, "emd", False))
    rel_rows = 2 * _att_span(cfg) if arch == "deberta" else 0
    emb = getattr(cfg, "embedding_size", None) or h  # ELECTRA's shared embedding width

    depth = cfg.num_hidden_layers
    if arch == "albert" and getattr(cfg, "share", "all") == "all":
        depth *= cfg.inner_group_num  # every layer runs its group's inner layers
    disc = _Encoder(h, depth, cfg.intermediate_size, rel_rows)
    gen = None
    if rtd:
        gen = _Encoder(
            cfg.generator_hidden_size,
            cfg.generator_num_hidden_layers,
            cfg.generator_intermediate_size,
            rel_rows,
        )
    mlm = gen if rtd else disc  # the encoder under the MLM head

    out: dict[str, float] = {}
    for enc, prefix in ((gen, "gen_"), (disc, "")):
        if enc is None:
            continue
        layers = enc.layers
        if emd and enc is mlm:
            layers -= 1  # with EMD the last layer's full pass is never computed, only the EMD
        out.update({f"{prefix}{k}": v * layers for k, v in _layer_flops(enc, t, b).items()})
        if emb != enc.hidden or arch == "albert":  # ALBERT keeps its E -> H map even at E = H
            out[f"{prefix}embed_proj"] = 2.0 * emb * enc.hidden

    # Sparse MLM head on the predicted fraction: dense (hidden -> head width), GELU,
    # LayerNorm, tied decoder onto the vocabulary. ELECTRA's generator head projects to
    # embedding_size (the tied table's width); RoBERTa's and DeBERTa's keep the hidden size.
    head_width = emb if arch in ("electra", "albert") else mlm.hidden
    out["mlm_head"] = p * (2.0 * mlm.hidden * head_width + 2.0 * head_width * cfg.vocab_size)
    if emd:
        out["emd"] = EMD_REPEATS * _emd_pass(mlm, t, b, p)
    if rtd:
        out["rtd_head"] = 2.0 * h * h + 2.0 * h  # dense h -> h, then h -> 1 logit
    if arch in ("bert", "albert"):  # pooler (h -> h) and NSP/SOP classifier (h -> 2) on [CLS]
        out["pair_head"] = (2.0 * h * h + 4.0 * h) / t
    return out


def _emd_pass(enc: _Encoder, t: int, b: int, p: float) -> float:
    """One pass of the EMD's layer per input token: queries are the predicted positions
    (fraction p), keys/values (and the p2c term) cover all T tokens."""
    h, f, s = enc.hidden, enc.ffn, enc.rel_rows
    per_query = 2 * h * h + 2 * h * h + 4 * h * f + 4 * t * h + 2 * s * h  # Q, out, FFN, QK/AV, c2p
    per_key = 4 * h * h + 2 * s * h  # K and V projections, p2c
    return p * per_query + per_key + 4.0 * s * h * h / (t * b)


def model_flops_per_token(
    model, seq_len: int, predicted_fraction: float, *, micro_batch_size: int = 1
) -> float:
    """Training FLOPs (forward + backward = 3 x forward) per input token.

    ``seq_len``: tokens per sequence (padding included: the model computes on it);
    ``predicted_fraction``: share of tokens with an MLM label (e.g. 0.15);
    ``micro_batch_size``: sequences per forward pass, over which DeBERTa's once-per-batch
    relative-embedding projections are amortised (1 = per sequence, an upper bound).
    The formula is in this module's docstring; ``flops_breakdown`` gives the terms.
    """
    return 3.0 * sum(
        flops_breakdown(
            model, seq_len, predicted_fraction, micro_batch_size=micro_batch_size
        ).values()
    )


# ----------------------------------------------------------------------------- device peaks

# Dense (no structured sparsity) peak FLOP/s from the vendors' datasheets, in TFLOP/s:
# (bf16/fp16 tensor cores, tf32 tensor cores, fp32 without TF32). None = not published or
# not supported (V100 and T4 have no bf16 tensor cores). First matching pattern wins, so
# more specific names come first. A10G: AWS publishes no figures; it is a GA102 like the
# A10, whose datasheet figures are used.
_PEAKS_TFLOPS: list[tuple[str, tuple[float | None, float | None, float | None]]] = [
    (r"H100.*NVL", (835.5, 417.5, 60.0)),
    (r"H[18]00.*PCIe", (756.5, 378.0, 51.2)),
    (r"H200.*NVL", (835.5, 417.5, 60.0)),
    (r"GH200", (989.4, 494.7, 66.9)),
    (r"H100|H200|H800", (989.4, 494.7, 66.9)),  # SXM: "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    (r"\bH20\b", (148.0, 74.0, 44.0)),
    (r"B200", (2250.0, 1125.0, None)),
    (r"A100", (312.0, 156.0, 19.5)),
    (r"A10G?\b", (125.0, 62.5, 31.2)),
    (r"L40S", (362.05, 183.0, 91.6)),
    (r"L40\b", (181.05, 90.5, 90.5)),
    (r"L4\b", (121.0, 60.0, 30.3)),
    (r"V100S", (130.0, None, 16.4)),
    (r"V100.*PCIE", (112.0, None, 14.0)),
    (r"V100", (125.0, None, 15.7)),
    (r"\bT4\b", (65.0, None, 8.1)),
    (r"MI300X", (1307.4, 653.7, 163.4)),
    (r"MI250X", (383.0, None, 95.7)),
]


def peak_flops_for_name(name: str, dtype: torch.dtype, tf32: bool = False) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` for ``dtype``; None when unknown.

    float32 uses the TF32 tensor-core peak when ``tf32`` (PyTorch's "high" matmul
    precision) and the plain FP32 peak otherwise. V100/T4 report their fp16 peak for
    fp16 and None for bf16 (no bf16 tensor cores).
    """
    for pattern, (half, tf32_peak, fp32_peak) in _PEAKS_TFLOPS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            if dtype in (torch.bfloat16, torch.float16):
                has_bf16 = tf32_peak is not None  # the pre-Ampere parts have neither
                tflops = half if (dtype == torch.float16 or has_bf16) else None
            elif dtype == torch.float32:
                tflops = tf32_peak if tf32 else fp32_peak
            else:
                tflops = None
            return None if tflops is None else tflops * 1e12
    return None


def peak_flops_per_second(device, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of one ``device`` (CUDA/ROCm, by name) for ``dtype``.

    None on CPU and for unknown GPUs: MFU is then not reported rather than guessed. The
    training config can override the peak. For float32 the TF32 peak is used when
    PyTorch's matmul precision is not "highest" (TF32 enabled), the FP32 peak otherwise.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    tf32 = torch.get_float32_matmul_precision() != "highest"
    return peak_flops_for_name(torch.cuda.get_device_name(device), dtype, tf32=tf32)


def mfu(
    tokens_per_s: float, flops_per_token: float, n_devices: int, peak: float | None
) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved / (n_devices * peak).

    ``tokens_per_s`` is the global throughput (all devices together); ``peak`` the peak
    of one device; None when the peak is unknown.
    """
    if peak is None or peak <= 0 or n_devices <= 0:
        return None
    return tokens_per_s * flops_per_token / (n_devices * peak)
