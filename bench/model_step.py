"""Forward + backward time of our models vs the transformers models at equal config.

    python bench/model_step.py [--arch roberta electra deberta bert albert] [--device cpu|cuda]
                               [--seq N] [--batch N] [--steps N] [--quick]
                               [--results FILE] [--no-append]

For each architecture a preset is built (CPU: roberta-base, electra-small,
deberta-v3-xsmall, bert-base, albert-base at seq 128; CUDA: the base presets at seq 512,
bf16 weights), exported with our ``export_hf`` and loaded back with transformers' classes,
so both sides hold the same weights and hyper-parameters. One training step (train mode, dropout on) on the same
random batch with 15 % of positions labelled:

* RoBERTa / DeBERTa (objective forced to "mlm"): ours ``forward`` -> mlm_loss_sum / count;
  HF ``AutoModelForMaskedLM(labels=...)`` (full-vocabulary logits for every position);
* ELECTRA: ours ``forward`` (generator MLM, sampling, discriminator); HF
  ``ElectraForMaskedLM`` + Gumbel sampling + ``ElectraForPreTraining`` with shared
  embeddings, the same loss (gen + 50 * disc);
* BERT / ALBERT: both sides get the same token types (first half of each row 0, second
  half 1) and random sentence labels; loss = MLM mean + NSP / SOP mean; HF
  ``BertForPreTraining`` / ``AlbertForPreTraining`` with ``labels=`` and
  ``next_sentence_label=`` / ``sentence_order_label=``.

The HF sides are ``bench/hf_models.py``.

Our MLM heads decode only the labelled positions (sparse prediction); that is part of what
is measured, deliberately. Steps alternate between the two sides so load drift hits both;
the table compares the fastest step of each side (medians shown too).
Prints a table and appends it to bench/RESULTS.md with the machine, date and commit.
``--quick``: the debug presets on a tiny batch, one step (checks the bench works).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import PRESETS, add_output_args, emit, load_average, machine, section_start, summarize
from hf_models import hf_twin

from pretrain.models import PAIR_ARCHITECTURES, arch_module, find_preset

OVERRIDES = {"deberta": {"objective": "mlm"}}  # HF has no DeBERTa RTD pretraining class


def build(arch: str, preset: str, device: torch.device, dtype: torch.dtype):
    """(ours, hf, our_step, hf_step) holding identical weights (``hf_models.hf_twin``);
    a step function maps (ids, attn, labels[, token_type_ids, sentence_labels]) to the loss."""
    mod = arch_module(arch)
    torch.manual_seed(0)
    kwargs = {**find_preset(preset)[1], **OVERRIDES.get(arch, {})}
    ours = mod.Model(mod.Config(**kwargs))
    hf = hf_twin(arch, ours)
    ours.to(device, dtype).train()
    hf.to(device, dtype).train()
    weight = getattr(ours.config, "rtd_weight", 0.0)

    def step(model):
        def loss(ids, attn, labels, *pair):
            kw = dict(zip(("token_type_ids", "sentence_labels"), pair, strict=False))
            out = model(ids, attn, labels, **kw)
            value = out["mlm_loss_sum"] / out["mlm_count"]
            if "sentence_loss_sum" in out:  # BERT's NSP / ALBERT's SOP, one mean each
                value = value + out["sentence_loss_sum"] / out["sentence_count"]
            if "rtd_loss_sum" in out:
                value = value + weight * out["rtd_loss_sum"] / out["rtd_count"]
            return value

        return loss

    return ours, hf, step(ours), step(hf)


def timed_pair(steps, modules, batch, n: int, device: torch.device) -> list[dict[str, float]]:
    """Per step function: min and median wall seconds and min process CPU seconds of one
    forward+backward, the functions alternating.

    The minimum is the figure compared: on a shared machine other processes only ever add
    time. CPU seconds (``time.process_time``, all threads of this process) are what the
    step itself consumed, and barely move when other processes compete for the cores."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wall: list[list[float]] = [[] for _ in steps]
    cpu: list[list[float]] = [[] for _ in steps]
    for i in range(n + 1):  # the first round is warm-up
        for k, (step, module) in enumerate(zip(steps, modules, strict=True)):
            module.zero_grad(set_to_none=True)
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            step(*batch).backward()
            sync()
            if i:
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    return [
        {"wall": min(w), "median": summarize(w)["median"], "cpu": min(c)}
        for w, c in zip(wall, cpu, strict=True)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--arch", nargs="+", default=["roberta", "electra", "deberta", "bert", "albert"]
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seq", type=int, help="sequence length (cpu 128, cuda 512)")
    ap.add_argument("--batch", type=int, help="sequences per step (cpu 8, cuda 32)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="debug presets, tiny batch, one step")
    add_output_args(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    seq, bsz = args.seq or (512 if gpu else 128), args.batch or (32 if gpu else 8)
    if args.quick:
        seq, bsz, args.steps = min(seq, 32), min(bsz, 2), 1
    dtype = torch.bfloat16 if gpu else torch.float32
    load_start = load_average()
    rows = []
    for arch in args.arch:
        try:
            arch_module(arch)
        except ModuleNotFoundError:
            print(f"skipping {arch}: its module is not available")
            continue
        preset = PRESETS["quick" if args.quick else device.type][arch]
        ours, hf, our_step, hf_step = build(arch, preset, device, dtype)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(5, ours.config.vocab_size, (bsz, seq), generator=g)
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, -100)
        tensors = [ids, torch.ones_like(ids), labels]
        if arch in PAIR_ARCHITECTURES:  # token types: A = first half, B = second half
            types = (torch.arange(seq) >= seq // 2).long().expand(bsz, seq).contiguous()
            tensors += [types, torch.randint(0, 2, (bsz,), generator=g)]
        batch = [t.to(device) for t in tensors]
        o, h = timed_pair([our_step, hf_step], [ours, hf], batch, args.steps, device)
        rows.append((arch, preset, o, h))
        print(
            f"{arch:8} {preset:18} wall ours {o['wall'] * 1e3:8.1f} ms HF {h['wall'] * 1e3:8.1f} "
            f"ms ({o['wall'] / h['wall']:.2f}); cpu ours {o['cpu'] * 1e3:8.1f} ms HF "
            f"{h['cpu'] * 1e3:8.1f} ms ({o['cpu'] / h['cpu']:.2f})",
            flush=True,
        )
        del ours, hf
    lines = [
        *section_start(
            "model_step.py",
            args.quick,
            f"{machine(device.type)}; torch {torch.__version__}, intra-op threads "
            f"{torch.get_num_threads()}; {str(dtype)[6:]}, seq {seq}, batch {bsz}, 15 % "
            f"labelled, train mode, {args.steps} timed steps per side; load average "
            f"{load_start:.1f} at the start, {load_average():.1f} at the end.",
        ),
        "",
        "| arch | preset | ours ms (wall min) | HF ms (wall min) | ours / HF wall | "
        "wall medians ours / HF | ours / HF CPU time | ours tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, preset, o, h in rows:
        lines.append(
            f"| {arch} | {preset} | {o['wall'] * 1e3:.1f} | {h['wall'] * 1e3:.1f} | "
            f"{o['wall'] / h['wall']:.2f} | {o['median'] * 1e3:.0f} / "
            f"{h['median'] * 1e3:.0f} | {o['cpu'] / h['cpu']:.2f} | "
            f"{bsz * seq / o['wall']:,.0f} |"
        )
    lines += [
        "",
        "Ours decodes only the labelled 15 % in the MLM head (sparse prediction); HF "
        "projects every position onto the vocabulary. Target: ours / HF <= 1.0 on CPU.",
        "",
    ]
    emit(lines, args)


if __name__ == "__main__":
    main()
