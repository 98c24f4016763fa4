"""Ablations behind ``bench/quality.py``: which difference between our RoBERTa setup and an HF
one moves the validation loss, one at a time (configs/quickstart.toml's model and optimizer).

    python bench/quality_ablations.py [--only NAME,...] [--steps 2000] [--seeds 0,1]
        [--corpus PATH] [--quick] [--results FILE | --no-append]

Plain torch loops (no DeepSpeed: ``bench/quality.py`` shows that the trainer trains exactly
like this loop), our model (identical to ``RobertaForMaskedLM`` in forward, backward, dropout
draws and initialisation: tests/pretrain/test_roberta_training_parity.py) unless the variant
says HF. Each variant changes one thing against "ours, across rows": the model, optimizer
and schedule construction, the data order (ours: documents shuffled within blocks of
``shuffle_block`` shards, then packed; HF ``group_texts``: packed in corpus order, rows
shuffled every epoch), the masking (ours: exact count per row; HF's collator: Bernoulli), the
attention mode and dropout. Scored on the valid split packed in manifest order (our
validation loader; corpus order, like ``group_texts``), across rows and within documents.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KEYS = ("input_ids", "attention_mask", "labels", "segment_ids")
# name -> (what changes, overrides of the baseline spec)
VARIANTS = {
    "ours-rows": ("baseline: our model, optimizer and batches, attention across rows", {}),
    "hf-model": ("HF RobertaForMaskedLM (HF's own initialisation)", {"model": "hf"}),
    "decay-all": ("weight decay also on biases and LayerNorm weights", {"groups": "all"}),
    "eps-1e-8": ("Adam eps 1e-8 (torch's default) instead of 1e-6", {"eps": 1e-8}),
    "hf-warmup": ("HF's warm-up (step s at s/W: the first step has LR 0)", {"schedule": "hf"}),
    "no-clip": ("no gradient clipping", {"clip": 0.0}),
    "one-block": ("documents shuffled over the whole split (one shuffle block)", {"block": 4096}),
    "corpus-order": (
        "packed in corpus order, rows shuffled per epoch (group_texts)",
        {"order": "rows"},
    ),
    "bernoulli": (
        "Bernoulli masking (HF's collator) instead of exact counts",
        {"masking": "bernoulli"},
    ),
    "hf-pipeline": (
        "corpus order + Bernoulli (the HF data pipeline)",
        {"order": "rows", "masking": "bernoulli"},
    ),
    "ours-doc": ("attention within documents (our default)", {"segments": True}),
    "doc-corpus-order": ("within documents + corpus order", {"segments": True, "order": "rows"}),
    "doc-no-dropout": ("within documents, dropout 0", {"segments": True, "dropout": 0.0}),
}
BASE = dict(
    model="ours",
    groups="ours",
    eps=1e-6,
    schedule="ours",
    clip=1.0,
    block=16,
    order="docs",
    masking="exact",
    segments=False,
    dropout=0.1,
)


def batches(shards, spec, cfg, steps: int):
    """``steps`` global batches (dicts of (G, T) tensors) of the variant's data pipeline."""
    import dataclasses

    from data_pipeline.loader import PretrainLoader

    G = cfg.batch.global_batch_size
    data = dataclasses.replace(
        cfg.data,
        shard_dir=str(shards),
        num_workers=0,
        shuffle_block=spec["block"],
        shuffle=spec["order"] == "docs",
    )
    loader = PretrainLoader(data, cfg.masking, G, G)
    gen, it, buf = torch.Generator().manual_seed(0), iter(loader), []
    for _ in range(steps):
        if spec["order"] == "docs":
            b = next(it)
        else:  # group_texts: an epoch's rows in corpus order, shuffled, then batched
            if len(buf) < G:
                epoch = [next(it) for _ in range(loader.batches_per_epoch())]
                rows = {k: torch.cat([e[k][e["sample_ids"] >= 0] for e in epoch]) for k in KEYS}
                perm = torch.randperm(len(rows["input_ids"]), generator=gen)
                buf += [{k: v[i] for k, v in rows.items()} for i in perm]
            b = {k: torch.stack([r[k] for r in buf[:G]]) for k in KEYS}
            buf = buf[G:]
        if spec["masking"] == "bernoulli":
            b = bernoulli(b, gen, loader.manifest.tokenizer)
        yield b


def bernoulli(b: dict, gen, tok: dict, p: float = 0.15) -> dict:
    """HF ``DataCollatorForLanguageModeling`` on the batch's original ids: each non-special
    token with probability p; 80 % mask, 10 % a random id of the vocabulary, 10 % kept."""
    ids, labels = b["input_ids"], b["labels"]
    orig = torch.where(labels != -100, labels, ids)
    special = torch.isin(orig, torch.tensor(sorted(tok["special_ids"].values())))
    sel = (torch.rand(orig.shape, generator=gen) < p) & ~special & (b["attention_mask"] == 1)
    r = torch.rand(orig.shape, generator=gen)
    new = torch.where(sel & (r < 0.8), tok["special_ids"]["mask"], orig)
    rnd = torch.randint(tok["vocab_size"], orig.shape, generator=gen)
    new = torch.where(sel & (r >= 0.8) & (r < 0.9), rnd, new)
    return {**b, "input_ids": new, "labels": torch.where(sel, orig, -100)}


def build(spec, cfg, vocab: int, pad: int, seed: int):
    """The model of the variant (ours or HF's RobertaForMaskedLM, HF-initialised)."""
    from pretrain.models import roberta, roberta_hf

    kw = dict(
        roberta.PRESETS[cfg.model.preset],
        vocab_size=vocab,
        pad_token_id=pad,
        hidden_dropout_prob=spec["dropout"],
        attention_probs_dropout_prob=spec["dropout"],
    )
    torch.manual_seed(seed)
    ours = roberta.Model(roberta.Config(**kw))
    if spec["model"] == "ours":
        return ours
    import transformers

    cfg_hf = transformers.RobertaConfig(**roberta_hf.hf_config(ours.config))
    torch.manual_seed(seed)
    return transformers.RobertaForMaskedLM(cfg_hf)


def loss_sums(model, b, segments: bool):
    """(loss sum, count) over the labelled positions (the head decodes only those)."""
    if hasattr(model.roberta, "max_len"):  # ours
        out = model(
            b["input_ids"], b["attention_mask"], b["labels"], b["segment_ids"] if segments else None
        )
        return out["mlm_loss_sum"], out["mlm_count"]
    sel = b["labels"] != -100
    h = model.roberta(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
    return F.cross_entropy(model.lm_head(h[sel]), b["labels"][sel], reduction="sum"), sel.sum()


def optimizer(model, spec, cfg):
    """AdamW + LambdaLR as ``pretrain.engine``/``session`` build them, or the variant's change."""
    from pretrain.optim import lr_multiplier, param_groups

    o, total, warm = cfg.optimizer, cfg.total_steps, cfg.schedule.warmup_steps
    if spec["groups"] == "all":
        groups = [{"params": list(model.parameters()), "weight_decay": o.weight_decay}]
    else:
        groups = [
            {k: v for k, v in g.items() if k != "adapt"}
            for g in param_groups(model, o.weight_decay)
        ]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=spec["eps"])
    if spec["schedule"] == "hf":  # transformers.get_linear_schedule_with_warmup
        f = lambda s: s / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))  # noqa: E731
    else:
        f = lr_multiplier("linear", warm, total)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, f)


@torch.no_grad()
def score(model, val: list[dict], segments: bool) -> float:
    model.eval()
    s = n = 0.0
    for b in val:
        ls, c = loss_sums(model, b, segments)
        s, n = s + float(ls), n + float(c)
    model.train()
    return s / max(n, 1.0)


def run(name: str, shards, cfg, val, args, seed: int) -> dict:
    """{step: {"rows": loss, "docs": loss}} of one variant and seed."""
    from data_pipeline.shards import Manifest

    spec = {**BASE, **VARIANTS[name][1]}
    tok = Manifest.load(shards).tokenizer
    model = build(spec, cfg, tok["vocab_size"], tok["special_ids"]["pad"], seed)
    opt, sched = optimizer(model, spec, cfg)
    torch.manual_seed(seed + 1)  # dropout
    out = {}
    for step, b in enumerate(batches(shards, spec, cfg, args.steps), 1):
        ls, c = loss_sums(model, b, spec["segments"])
        opt.zero_grad(set_to_none=True)
        (ls / c.clamp_min(1)).backward()
        if spec["clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])
        opt.step()
        sched.step()
        if step in args.eval_at:
            out[step] = {"rows": score(model, val, False)}
            if hasattr(model.roberta, "max_len"):
                out[step]["docs"] = score(model, val, True)
    return out


def main(argv=None) -> int:
    from quality import prepare_shards, side_config, validation

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shards, t0 = prepare_shards(args), time.time()
    side = dict(arch="roberta", attention="row", objective="mlm")
    cfg = side_config(args, shards, side, 0, Path(args.work) / "ablations")
    val = validation(cfg, args.val_masks, 64 if args.quick else None)
    res = {}
    for name in args.only:
        for seed in args.seeds:
            res.setdefault(name, []).append(run(name, shards, cfg, val, args, seed))
            print(name, seed, res[name][-1], flush=True)
    common.emit(report(args, res, time.time() - t0), args)
    return 0


def report(args, res: dict, seconds: float) -> list[str]:
    base = res.get("ours-rows")
    header = ["variant", "what changes"] + [f"rows, step {s}" for s in args.eval_at]
    header += [f"vs baseline, step {s}" for s in args.eval_at] + [
        f"within docs, step {s}" for s in args.eval_at
    ]
    rows = []
    for name, runs in res.items():

        def mean(step, key, rs=runs):
            v = [r[step][key] for r in rs if key in r[step]]
            return statistics.fmean(v) if v else None

        vals = [mean(s, "rows") for s in args.eval_at]
        ref = [mean(s, "rows", base) if base else None for s in args.eval_at]
        docs = [mean(s, "docs") for s in args.eval_at]
        rows.append(
            [name, VARIANTS[name][0]]
            + [f"{v:.3f}" for v in vals]
            + [f"{v - r:+.3f}" if r is not None else "" for v, r in zip(vals, ref, strict=True)]
            + [f"{d:.3f}" if d is not None else "" for d in docs]
        )
    out = common.section_start("quality_ablations.py", args.quick, common.machine())
    out += [
        "",
        f"RoBERTa, configs/quickstart.toml model and optimizer, {args.steps} steps, seeds "
        f"{', '.join(map(str, args.seeds))} (means), corpus {args.corpus or 'built-in sample'}; "
        f"validation MLM loss (nats), valid split x {args.val_masks} mask draws, scored across "
        "rows and within documents.",
        "",
        *common.table(header, rows, "ll" + "r" * 3 * len(args.eval_at)),
        "",
        f"({seconds:.0f} s)",
    ]
    return out


def parse_args(argv):
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(VARIANTS), help="variants, comma-separated")
    ap.add_argument("--corpus")
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--valid-fraction", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-at", default=None)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--val-masks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "quality"))
    ap.add_argument("--quick", action="store_true")
    common.add_output_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.val_masks, args.seeds = 10, 1, "0"
    args.only = [v for v in args.only.split(",") if v]
    unknown = [v for v in args.only if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    args.seeds = [int(x) for x in args.seeds.split(",")]
    at = args.eval_at or (str(args.steps) if args.quick else f"1000,{args.steps}")
    args.eval_at = sorted({int(x) for x in at.split(",")})
    args.arch, args.eval_at_list = ["roberta"], args.eval_at
    return args


if __name__ == "__main__":
    sys.exit(main())
