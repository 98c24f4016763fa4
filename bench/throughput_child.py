"""One side of ``bench/train_throughput.py``: train one model for a few steps the way the
trainer does, and report timings.

``run(spec) -> dict`` builds a ``RunConfig`` from ``spec`` (shard directory, packing and pair
task, model preset and overrides, batch, precision, ZeRO stage, loader workers), the model
exactly as ``pretrain.train.session`` builds it (ours: plus ``pretrain.train.perf``; HF:
``hf_models.hf_twin`` of ours, same weights), a ``PretrainLoader`` and a
``pretrain.engine.Engine`` (so both sides get the identical DeepSpeed config and optimizer,
AdamW), then runs ``pretrain.train.loop.train_step`` ``warmup + steps`` times, timing each
optimizer step (device synchronised) and the time blocked on the loader. Run as ``python bench/throughput_child.py SPEC.json`` it prints the
result as a ``RESULT {json}`` line (the parent runs every side in a fresh process, so peak
memory and compilation caches are the side's own).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

import torch

RESULT_PREFIX = "RESULT "


def run_config(spec: dict, run_dir: str):
    """The ``RunConfig`` of a bench side (what a user would put in a TOML file)."""
    from pretrain.config import config_from_dict

    return config_from_dict(
        {
            "run_dir": run_dir,
            "seed": 0,
            "max_steps": spec["warmup"] + spec["steps"],
            "data": {
                "shard_dir": spec["shard_dir"],
                "seq_len": spec["seq"],
                "packing": spec.get("packing", "full"),
                **({"pair_task": spec["pair_task"]} if spec.get("pair_task") else {}),
                "num_workers": spec["workers"],
                "attend_within_document": spec["attend_within_document"],
            },
            "model": {
                "arch": spec["arch"],
                "preset": spec["preset"],
                "overrides": spec["overrides"],
            },
            "masking": {"kind": "mlm", "mask_prob": spec["mask_prob"]},
            "batch": {"global_batch_size": spec["global_batch"], "micro_batch_size": spec["micro"]},
            "precision": {"dtype": spec["precision"]},
            "zero": {"stage": spec["zero"]},
            # AdamW on every side (ALBERT's configs use LAMB, which needs ZeRO 0).
            "optimizer": {"name": "adamw", "lr": 1e-4, "impl": spec["optimizer_impl"]},
            "schedule": {"kind": "constant"},
            "logging": {"tensorboard": False, "progress": False},
        }
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(spec: dict) -> dict:
    from data_pipeline.loader import PretrainLoader
    from data_pipeline.shards import Manifest
    from pretrain import engine as eng
    from pretrain.config import PerfConfig
    from pretrain.metrics import StepTimer, peak_flops_per_second, peak_memory_bytes
    from pretrain.optim import lr_multiplier
    from pretrain.train import train_step
    from pretrain.train.build import build_model, is_rtd, seed_all
    from pretrain.train.objectives import Objective
    from pretrain.train.perf import apply_perf

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = run_config(spec, run_dir)
        dist = eng.init_distributed()
        if spec.get("threads"):  # after init_distributed, which sets its own default
            torch.set_num_threads(spec["threads"])
        seed_all(cfg.seed)
        model = build_model(cfg, Manifest.load(cfg.data.shard_dir).tokenizer)
        rtd, weight = is_rtd(model.config), getattr(model.config, "rtd_weight", 1.0)
        perf = {}
        if spec["side"] == "hf":
            from hf_models import hf_twin

            model = hf_twin(spec["arch"], model)
        else:
            knobs = PerfConfig(compile=spec["compile"], predict_capacity=spec["predict_capacity"])
            perf = apply_perf(model, knobs, cfg.masking, cfg.data.seq_len)
        G, M = cfg.batch.global_batch_size, cfg.batch.micro_batch_size
        loader = PretrainLoader(cfg.data, cfg.masking, G, M, dist.rank, dist.world_size)
        engine = eng.Engine(model, cfg, dist, lr_multiplier("constant", 0, cfg.max_steps))
        pair_task = cfg.data.pair_task if cfg.data.packing == "pairs" else None
        objective = Objective(rtd, weight, pair_task)  # as pretrain.train.session
        seed_all(cfg.seed + 1)
        device = engine.device
        it, timer = iter(loader), StepTimer()
        steps, waits = [], []
        warmup_s = time.perf_counter()
        try:
            for i in range(spec["warmup"] + spec["steps"]):
                if i == spec["warmup"]:
                    _sync(device)
                    warmup_s = time.perf_counter() - warmup_s
                    timer.reset()
                    objective.take_sums()
                timer.data_start()
                batches = [next(it) for _ in range(engine.grad_accum)]
                timer.data_end()
                result = train_step(engine, objective, batches, cfg.data.attention_segments())
                _sync(device)
                stats = timer.step_end()
                if i >= spec["warmup"]:
                    steps.append(stats["step_time_s"])
                    waits.append(stats["data_wait_s"])
                    if result.nonfinite:
                        raise RuntimeError(f"non-finite loss at step {i + 1}")
            sums, n = objective.take_sums()
            loss = objective.metrics(sums, n)["loss"]
        finally:
            loader.close()
        dtype = eng.torch_dtype(engine.dtype)
        return {
            "ok": True,
            "step_s": steps,
            "wait_s": waits,
            "warmup_s": warmup_s,
            "tokens_per_step": G * cfg.data.seq_len,
            "loss": loss,
            "peak_memory": peak_memory_bytes(device),
            "peak_flops": peak_flops_per_second(device, dtype),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": engine.dtype,
            "threads": torch.get_num_threads(),
            "perf": perf,
            "params": sum(p.numel() for p in engine.module.parameters()),
        }


def main(path: str) -> int:
    spec = json.loads(open(path).read())
    try:
        out = run(spec)
    except Exception as e:  # reported to the parent, which records the failure in the table
        traceback.print_exc()
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        out = {"ok": False, "error": msg}
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    from pretrain import engine as eng

    eng.shutdown()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1]))
