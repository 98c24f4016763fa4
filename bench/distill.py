"""What distillation buys and costs: student vs teacher size and inference speed, and the
per-step overhead of training a student with its teacher attached.

    python bench/distill.py [--device cpu|cuda] [--seq N] [--batch N] [--repeats N]
                            [--threads N] [--mlm-logits] [--quick] [--results FILE] [--no-append]

Pairs (teacher -> student, recipe): roberta-base -> distilroberta (distilbert recipe),
bert-base -> distilbert (distilbert), bert-base -> tinybert-4l-312 (tinybert: widths differ,
so W_e / W_h exist, and attention scores are recorded). Random weights (seeded), random
token ids in [5, vocab) with 15 % of positions labelled; fp32 on CPU, bf16 on CUDA.

1. Inference: parameters (``count_params``: the whole pretraining model, heads included,
   tied weights once) and forward time, eval mode under ``torch.no_grad``, of the *encoder*
   (``model.bert`` / ``model.roberta``: no MLM head, as the papers time the encoder plus a
   small task head); ``--mlm-logits`` times ``model.mlm_logits`` (full-vocabulary logits at
   every position) instead. The five models are timed in turn, round after round, so load
   drift hits all of them. Beside: DistilBERT's claims (40 % fewer parameters, 60 % faster
   than BERT-base), the distilroberta-base model card's (82 M vs 125 M, twice as fast) and
   TinyBERT-4's (7.5x smaller, 9.4x faster than BERT-base).
2. Training: one optimizer step (zero_grad, forward, backward, AdamW step; plain torch, no
   DeepSpeed, train mode) of (a) the student alone on MLM (mlm_loss_sum / mlm_count) and
   (b) ``Distiller`` with the teacher attached, loss from ``DistillObjective`` with the
   recipe's weights (``set_step(counts, 1, 1)``), (a) and (b) alternating on one batch.
   The teacher runs forward only, so (b) - (a) should be about one teacher forward (a third
   of a teacher training step); "expected" is 1 + teacher forward (table 1) / (a).

The first round is warm-up; tables give the minimum of ``--repeats`` timed rounds (median
beside). ``--quick``: seq 32, batch 2, one round (checks the script; not a measurement).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import add_output_args, emit, load_average, machine, section_start, summarize, table

from pretrain.config.distill import RECIPES
from pretrain.distill.distiller import Distiller, Plan, init_from_teacher, uniform_layer_map
from pretrain.models import arch_module, find_preset
from pretrain.models.common import count_params
from pretrain.train.distill import DistillObjective

PAIRS = [  # (teacher, student, recipe)
    ("roberta-base", "distilroberta", "distilbert"),
    ("bert-base", "distilbert", "distilbert"),
    ("bert-base", "tinybert-4l-312", "tinybert"),
]
CLAIMS = {  # student: (params student / teacher, speed-up), as their authors state them
    "distilroberta": ("82M / 125M = 0.66 (card)", "2x (card)"),
    "distilbert": ("0.60 (DistilBERT)", "1.60x (DistilBERT)"),
    "tinybert-4l-312": ("1 / 7.5 = 0.13 (TinyBERT)", "9.4x (TinyBERT)"),
}
INFER_HEADER = (
    "teacher -> student|teacher params|student params|student / teacher|claimed|teacher ms|"
    "student ms|student tokens/s|speed-up|claimed"
)
TRAIN_HEADER = (
    "student (recipe)|(a) student MLM ms|(b) distillation ms|(b) / (a)|expected (b) / (a)"
)


def build(preset: str, device: torch.device, dtype: torch.dtype) -> tuple[str, torch.nn.Module]:
    """(architecture, model) of a preset, seeded random weights, on ``device`` in ``dtype``."""
    arch, kwargs = find_preset(preset)
    mod = arch_module(arch)
    torch.manual_seed(0)
    return arch, mod.Model(mod.Config(**kwargs)).to(device, dtype)


def rounds(fns, n: int, sync) -> list[dict[str, float]]:
    """min / median / mean wall seconds of each function, called in turn for 1 + n rounds
    (the first is warm-up)."""
    wall: list[list[float]] = [[] for _ in fns]
    for i in range(n + 1):
        for k, fn in enumerate(fns):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i:
                wall[k].append(time.perf_counter() - t0)
    return [summarize(w) for w in wall]


def batch_for(vocab: int, seq: int, bsz: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (bsz, seq), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, -100)
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in b.items()}


def inference_fn(model, batch, mlm_logits: bool):
    encoder = model.bert if hasattr(model, "bert") else model.roberta
    ids, attn = batch["input_ids"], batch["attention_mask"]

    def fn():
        with torch.no_grad():
            return model.mlm_logits(ids, attn) if mlm_logits else encoder(ids, attn)

    return fn


def train_fns(teacher, t_arch, student, recipe, batch, device, dtype):
    """(plain student MLM step, distillation step): each zero_grad, forward, backward, AdamW."""
    r, s, t = RECIPES[recipe], student.config, teacher.config
    if r["student_init"] == "every_other_layer":
        init_from_teacher(student, teacher)
    plan = Plan(
        weights=dict(r["weights"]),
        temperature=r["temperature"],
        layer_map=uniform_layer_map(s.num_hidden_layers, t.num_hidden_layers),
        student_hidden=s.hidden_size,
        teacher_hidden=t.hidden_size,
        teacher_arch=t_arch,
    )
    distiller = Distiller(student, plan).to(device, dtype).train()
    distiller.attach_teacher(teacher, device, dtype)
    objective = DistillObjective(plan.weights)
    objective.set_step(objective.local_counts([batch], segments=False), 1, 1)
    opt = torch.optim.AdamW(distiller.parameters(), lr=1e-5)  # the projections too
    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    def plain():
        opt.zero_grad(set_to_none=True)
        out = student(ids, attn, labels)
        (out["mlm_loss_sum"] / out["mlm_count"]).backward()
        opt.step()

    def distill():
        opt.zero_grad(set_to_none=True)
        objective.loss(distiller(ids, attn, labels)).backward()
        opt.step()

    return plain, distill, plan.projections


def ms(x: dict[str, float]) -> str:
    return f"{x['min'] * 1e3:,.1f} ({x['median'] * 1e3:,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seq", type=int, default=128, help="sequence length (128)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per forward / step (8)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds after warm-up (5)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--mlm-logits", action="store_true", help="time mlm_logits, not the encoder")
    ap.add_argument("--quick", action="store_true", help="seq 32, batch 2, one round")
    add_output_args(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seq, args.batch, args.repeats = min(args.seq, 32), min(args.batch, 2), 1
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    load_start, t_start = load_average(), time.perf_counter()

    models = {}  # preset -> (arch, model)
    for preset in dict.fromkeys(p for pair in PAIRS for p in pair[:2]):
        models[preset] = build(preset, device, dtype)
    batches = {}  # vocab -> batch
    for _, model in models.values():
        v = model.config.vocab_size
        batches.setdefault(v, batch_for(v, args.seq, args.batch, device))

    def batch_of(preset):
        return batches[models[preset][1].config.vocab_size]

    fns = [inference_fn(m.eval(), batch_of(p), args.mlm_logits) for p, (_, m) in models.items()]
    times = dict(zip(models, rounds(fns, args.repeats, sync), strict=True))
    params = {p: count_params(m) for p, (_, m) in models.items()}
    tokens = args.seq * args.batch
    infer_rows = []
    for teacher, student, _ in PAIRS:
        (tt, st), (pt, ps) = (times[teacher], times[student]), (params[teacher], params[student])
        claim_p, claim_s = CLAIMS[student]
        infer_rows.append(
            [f"{teacher} -> {student}", f"{pt / 1e6:.1f} M", f"{ps / 1e6:.1f} M"]
            + [f"{ps / pt:.2f} (1 / {pt / ps:.1f})", claim_p, ms(tt), ms(st)]
            + [f"{tokens / st['min']:,.0f}", f"{tt['min'] / st['min']:.2f}x", claim_s]
        )
        print(" | ".join(infer_rows[-1]), flush=True)

    train_rows = []
    for teacher, student, recipe in PAIRS:
        t_arch, t_model = models[teacher]
        plain, distill, projections = train_fns(
            t_model, t_arch, models[student][1], recipe, batch_of(student), device, dtype
        )
        a, b = rounds([plain, distill], args.repeats, sync)
        fwd = times[teacher]["min"]
        extra = ", W_e / W_h, scores" if projections else ""
        ratio, expected = b["min"] / a["min"], (a["min"] + fwd) / a["min"]
        row = [f"{student} ({recipe}{extra})", ms(a), ms(b), f"{ratio:.2f}", f"{expected:.2f}"]
        train_rows.append(row)
        print(" | ".join(train_rows[-1]), flush=True)
        del plain, distill
        models.pop(student)  # its optimizer state goes with the closures

    what = "model.mlm_logits (full-vocabulary head)" if args.mlm_logits else "the encoder"
    lines = [
        *section_start(
            "distill.py",
            args.quick,
            f"{machine(device.type)}; torch {torch.__version__}, intra-op threads "
            f"{torch.get_num_threads()}; {str(dtype)[6:]}, seq {args.seq}, batch {args.batch} "
            f"(15 % labelled), one warm-up round then {args.repeats} timed; load average "
            f"{load_start:.1f} at the start, {load_average():.1f} at the end.",
        ),
        "",
        f"Inference (eval, no_grad, forward of {what}); ms: min (median) per forward:",
        "",
        *table(INFER_HEADER.split("|"), infer_rows),
        "",
        "Training step (zero_grad + forward + backward + AdamW, train mode); ms: min (median):",
        "",
        *table(TRAIN_HEADER.split("|"), train_rows),
        "",
        "Parameters: count_params of the pretraining model (MLM head; BERT's pooler and NSP "
        "head too), tied weights once. Claims: DistilBERT (Sanh et al., 2019) 40 % fewer "
        "parameters, inference 60 % faster than BERT-base; distilroberta-base's model card "
        "82 M vs 125 M, twice as fast; TinyBERT-4 (Jiao et al., 2020) 7.5x smaller, 9.4x "
        "faster than BERT-base. Distillation runs the teacher forward only (no backward), "
        "so its expected cost is about one teacher forward, roughly +1/3 of a teacher "
        "training step: expected (b) / (a) = 1 + teacher ms (table 1) / (a) ms. Table 1's "
        f"teacher time ({what}) is on the SDPA path, while the TinyBERT recipe records "
        "attention scores on the explicit attention path in both models, which costs more. "
        f"({time.perf_counter() - t_start:.0f} s)",
        "",
    ]
    emit(lines, args)


if __name__ == "__main__":
    main()
