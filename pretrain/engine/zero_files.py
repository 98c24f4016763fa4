"""Reading DeepSpeed checkpoint files without running code from them, and the one call into
DeepSpeed's own conversion tool.

- ``load_checkpoint_file`` / ``check_checkpoint_files``: weights-only reads with only
  DeepSpeed's data-holder classes allowed; a file that DeepSpeed's loaders (resume,
  universal conversion) would fully unpickle is refused first.
- ``consolidated_state_dict``: the fp32 weights of a checkpoint of any ZeRO stage,
  precision and world size (for export and inference), read weights-only.
- ``ds_to_universal``: DeepSpeed's universal conversion, in-process.

DeepSpeed is imported inside the functions that need it (a heavy import: ~3 s, and it
prints accelerator notices), so reading a run's weights for ``export``/``fill-mask``
imports only its metadata classes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
from pathlib import Path

import torch

from data_pipeline.common import load_torch_file
from pretrain.optim import param_groups

# ----------------------------------------------------------------------------- reading checkpoints
# Every checkpoint file is read with ``torch.load(weights_only=True)``: a run directory can
# come from anywhere, and a full unpickle would run any code a file asks for. Besides tensors
# and containers, DeepSpeed 0.19 pickles these classes into the files we write (found by
# loading ZeRO 0-3 checkpoints in fp32 and bf16): the optimizer wrappers' loss scaler and
# ZeRO stage, and the fp32 fragment addresses of ZeRO 1/2 and the BF16 optimizer. fp16 runs
# (GPU only) write a DynamicLossScaler instead of a LossScaler. All are plain data holders.
_OPTIM_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")
_MODEL_FILE = "mp_rank_00_model_states.pt"  # ZeRO 0-2: the whole module
_ZERO3_MODEL_FILE = "zero_pp_rank_0_mp_rank_00_model_states.pt"  # ZeRO 3: metadata, no weights


def _checkpoint_globals() -> tuple:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


def load_checkpoint_file(path: str | os.PathLike, mmap: bool = False):
    """One DeepSpeed checkpoint file, read weights-only (``UnsafeFileError`` if it holds
    anything but tensors, containers and DeepSpeed's metadata classes above)."""
    return load_torch_file(path, _checkpoint_globals(), mmap=mmap)


def check_checkpoint_files(directory: str | os.PathLike, recursive: bool = False) -> None:
    """Refuse (``UnsafeFileError``) a checkpoint with a file that a weights-only load rejects,
    before DeepSpeed's own loader, which unpickles everything, reads it. Memory-mapped: only
    the pickles are parsed, no tensor data is read."""
    d = Path(directory)
    for path in sorted(d.rglob("*.pt") if recursive else d.glob("*.pt")):
        load_checkpoint_file(path, mmap=True)


def consolidated_state_dict(tag_dir: str | os.PathLike, model: torch.nn.Module) -> dict:
    """fp32 weights of the checkpoint in ``tag_dir`` (one written by ``Engine.save`` for a
    model of ``model``'s class and config), whatever its ZeRO stage, precision and world size.

    Reimplements what DeepSpeed's ``zero_to_fp32`` does for the layouts we save, with
    weights-only loads (``zero_to_fp32`` unpickles everything). The fp32 master weights are
    read where DeepSpeed keeps them: ZeRO 0 in fp32: the module itself; ZeRO 0 in bf16/fp16:
    the optimizer wrapper's fp32 copies (per parameter, or one flat tensor per group) in the
    model-states file, in ``pretrain.optim.param_groups`` order; ZeRO 1/2: each rank's
    partition of the flat fp32 groups (``*zero_pp_rank_R_*optim_states.pt``), concatenated
    in rank order; ZeRO 3: each rank's slice of every parameter. ``model`` only supplies the
    parameter order of ZeRO 0's optimizer groups and the tied-parameter names.
    """
    tag_dir = Path(tag_dir)
    optim = {}
    for path in tag_dir.glob("*_optim_states.pt"):
        m = _OPTIM_FILE.fullmatch(path.name)
        if m is not None:
            if m.group(2) != "00":
                raise ValueError(f"{path}: model-parallel checkpoints are not supported")
            optim[int(m.group(1))] = path
    if sorted(optim) != list(range(len(optim))):
        raise ValueError(f"{tag_dir}: optimizer partitions of ranks {sorted(optim)} only")
    model_file = tag_dir / _MODEL_FILE
    if not model_file.is_file() and (tag_dir / _ZERO3_MODEL_FILE).is_file():
        model_file = tag_dir / _ZERO3_MODEL_FILE
    if not model_file.is_file():
        raise ValueError(f"{tag_dir}: no {_MODEL_FILE}; not a DeepSpeed checkpoint")
    states = load_checkpoint_file(model_file)
    module = states["module"]
    buffers = set(states.get("buffer_names") or [])
    out = {k: _fp32(v) for k, v in module.items() if k in buffers}
    if optim:
        shards = [
            load_checkpoint_file(optim[r], mmap=True)["optimizer_state_dict"]
            for r in range(len(optim))
        ]
        counts = shards[0].get("partition_count", len(shards))
        if max(counts if isinstance(counts, list) else [counts]) != len(shards):
            raise ValueError(
                f"{tag_dir}: written by {counts} ranks, but {len(shards)} optimizer "
                "partitions are there (an incomplete or overwritten checkpoint)"
            )
        if int(shards[0]["zero_stage"]) == 3:
            out.update(_zero3_weights(shards, states["param_shapes"], tag_dir))
        else:
            out.update(_zero12_weights(shards, states["param_shapes"], tag_dir))
    else:
        out.update(_zero0_weights(module, states.get("optimizer") or {}, model, tag_dir))
    # Tied parameters (ELECTRA's shared embeddings) are stored once.
    shared = dict(states.get("shared_params") or {})
    shared.update(_aliases(model))
    for name, source in shared.items():
        if source in out:
            out[name] = out[source]
    return out


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """{second name of a tied parameter: its first name}."""
    first, out = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _zero0_weights(module: dict, wrapper: dict, model, where) -> dict:
    """ZeRO 0: the module's weights, replaced by the optimizer wrapper's fp32 masters when
    the module is bf16/fp16 (FP16_UnfusedOptimizer: ``fp32_groups``, one tensor per
    parameter; FP16_Optimizer (fused Adam): ``fp32_groups_flat``, one flat tensor per group)."""
    out = {k: _fp32(v) for k, v in module.items()}
    per_param, flat = wrapper.get("fp32_groups"), wrapper.get("fp32_groups_flat")
    if per_param is None and flat is None:
        return out  # fp32 training: the module holds the master weights
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in param_groups(model, 0.0)]
    groups = [g for g in groups if g]  # DeepSpeed drops empty groups
    mismatch = ValueError(f"{where}: the optimizer's fp32 weights do not match this model")
    if flat is not None:
        sizes = [[module[n].numel() for n in g] for g in groups]
        if [f.numel() for f in flat] != [sum(z) for z in sizes]:
            raise mismatch
        per_param = [torch.split(f, z) for f, z in zip(flat, sizes, strict=True)]
    if [len(t) for t in per_param] != [len(g) for g in groups]:
        raise mismatch
    for group, tensors in zip(groups, per_param, strict=True):
        for name, t in zip(group, tensors, strict=True):
            if t.numel() != module[name].numel():
                raise ValueError(f"{where}: fp32 weight of {name} has {t.numel()} elements")
            out[name] = t.float().view(module[name].shape)
    return out


def _zero12_weights(shards: list[dict], shapes: list[dict], where) -> dict:
    """ZeRO 1/2 (and the BF16 optimizer): per group, the ranks' fp32 partitions in rank
    order form the flat group; parameters follow each other in ``param_shapes`` order, each
    followed by its alignment padding."""
    paddings = shards[0].get("param_alignment_paddings")
    out = {}
    for g, group in enumerate(shapes):
        flat = torch.cat([s["single_partition_of_fp32_groups"][g] for s in shards])
        pads = paddings[g] if paddings is not None else [0] * len(group)
        offset = 0
        for (name, shape), pad in zip(group.items(), pads, strict=True):
            n = math.prod(shape)
            if offset + n > flat.numel():
                raise ValueError(f"{where}: fp32 partitions too small for {name}")
            out[name] = flat.narrow(0, offset, n).view(shape).float()
            offset += n + pad
    return out


def _zero3_weights(shards: list[dict], shapes: list[dict], where) -> dict:
    """ZeRO 3: every parameter is split into world-size slices of ceil(numel / world)
    (the last one padded); rank R's slices follow each other, over its flat groups, in
    ``param_shapes`` order."""
    world = len(shards)
    streams = [torch.cat(list(s["fp32_flat_groups"])) for s in shards]
    out, offset = {}, 0
    for name, shape in ((k, v) for group in shapes for k, v in group.items()):
        n = math.prod(shape)
        part = -(-n // world)
        out[name] = torch.cat([s.narrow(0, offset, part) for s in streams])[:n].view(shape)
        out[name] = out[name].float()
        offset += part
    if offset != streams[0].numel():
        raise ValueError(
            f"{where}: fp32 partitions hold {streams[0].numel()} elements per rank, "
            f"the parameters {offset}; not this layout"
        )
    return out


def ds_to_universal(tag_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """DeepSpeed's ``ds_to_universal`` of ``tag_dir`` into ``out_dir``, in this process.

    In-process (DeepSpeed is imported already: ~0.2 s instead of ~2 s for a new interpreter)
    and sequential: no worker processes are forked from a process with live communication
    threads. Atomicity and caching are ``pretrain.engine.universal``'s.
    """
    from deepspeed.checkpoint import ds_to_universal as conv

    check_checkpoint_files(tag_dir)  # DeepSpeed's conversion unpickles everything it reads
    argv = sys.argv
    sys.argv = ["ds_to_universal", "--input_folder", str(tag_dir), "--output_folder", str(out_dir)]
    sys.argv += ["--num_extract_workers", "1", "--num_merge_workers", "1"]
    try:
        args = conv.parse_arguments()
    finally:
        sys.argv = argv
    sink = io.StringIO()  # its progress bars and chatter
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        conv.main(args)
