"""``python -m pretrain fill-mask``: what a model predicts for each ``<mask>`` in a text.

Works on a run directory (latest checkpoint, through ``pretrain.checkpoint``) or an HF
directory written by ``export`` (weights through the architecture's ``import_hf``, tokenizer
from the same directory through ``data_pipeline.tokenizer.Tokenizer``). ``<mask>`` is
accepted for every tokenizer family and mapped to the tokenizer's own mask token (e.g.
``[MASK]``). Scores are the softmax over the full vocabulary at each masked position, as
HF's ``pipeline("fill-mask")`` computes them; RTD models use their generator.

An HF directory is run as ``transformers`` runs it, so the scores agree with HF's pipeline on
that directory: a DeBERTa trained with the enhanced mask decoder (EMD) is decoded without it
(HF's ``DebertaV2ForMaskedLM`` has none; the exported EMD position table is only for
``init_from``). A run directory's model is decoded as it was trained, EMD included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from data_pipeline.common import CommandError
from data_pipeline.tokenizer import Tokenizer
from pretrain.export import hf_arch, load_model_dir

MASK = "<mask>"


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer, text: str, top_k: int = 5) -> list[list[dict]]:
    """For each mask in ``text`` (left to right): the ``top_k`` predictions as
    ``{"token_id", "token", "score"}``, best first."""
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    if mask_token != MASK:
        text = text.replace(MASK, mask_token)
    ids = torch.as_tensor(list(tokenizer.encode_for_model(text)), dtype=torch.long)[None]  # (1, T)
    positions = (ids[0] == tokenizer.mask_id).nonzero(as_tuple=True)[0]
    if positions.numel() == 0:
        also = "" if mask_token == MASK else f" (or {mask_token})"
        raise CommandError(f"no {MASK}{also} in the text")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids = ids.to(device)
        logits = model.mlm_logits(ids, torch.ones_like(ids))[0, positions]  # (M, V)
    except ValueError as e:  # e.g. text longer than the model's positions
        raise CommandError(str(e)) from e
    finally:
        model.train(was_training)
    probs = logits.float().softmax(-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        [
            {"token_id": int(i), "token": tokenizer.decode([int(i)]), "score": float(s)}
            for s, i in zip(scores.tolist(), idx.tolist(), strict=True)
        ]
        for scores, idx in zip(top.values, top.indices, strict=True)
    ]


def _check_has_mlm_head(path: Path) -> None:
    """Refuse an HF discriminator without ``generator/``: it has no MLM head to decode with."""
    arch = hf_arch(path)
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures")
    except (OSError, ValueError):
        architectures = None
    if arch == "electra" or (arch == "deberta" and architectures == ["DebertaV2Model"]):
        name, mlm = {
            "electra": ("ELECTRA", "ElectraForMaskedLM"),
            "deberta": ("DeBERTa", "DebertaV2ForMaskedLM"),
        }[arch]
        raise CommandError(
            f"{path}: an {name} discriminator without generator/; fill-mask needs the "
            f"generator ({mlm}), as `export` writes it"
        )


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="run directory or HF directory written by `export`",
    )
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="predictions per mask")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list (one list of {token_id, token, score} per mask)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--file",
        metavar="PATH",
        help="also take texts from PATH, one per line (blank lines skipped; - for stdin)",
    )
    parser.add_argument(
        "text", nargs="*", help=f"texts, each containing one or more {MASK} (quote each)"
    )


def _texts(args) -> list[tuple[str, str]]:
    """(where, text) of every text to fill: the arguments, then the file's lines."""
    out = [(f"text {i}", t) for i, t in enumerate(args.text, 1)]
    if args.file:
        try:
            lines = (
                sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
            ).splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(f"--file {args.file}: unreadable ({e})") from e
        out += [(f"{args.file}:{n}", ln) for n, ln in enumerate(lines, 1) if ln.strip()]
    if not out:
        raise CommandError(f"no text given (pass texts with {MASK}, or --file PATH)")
    return out


def main(args) -> int:
    if args.top_k < 1:
        raise CommandError("--top-k must be >= 1")
    texts = _texts(args)
    path = Path(args.model)
    if (path / "config.json").is_file() and not (path / "generator" / "config.json").is_file():
        _check_has_mlm_head(path)
    model, tokenizer_dir = load_model_dir(path, as_hf=True)

    try:
        tokenizer = Tokenizer.load(tokenizer_dir)
    except (OSError, ValueError) as e:
        raise CommandError(f"{tokenizer_dir}: cannot load the tokenizer ({e})") from e
    try:
        model = model.to(torch.device(args.device))
    except (RuntimeError, AssertionError) as e:
        raise CommandError(f"--device {args.device}: {e}") from e
    several = len(texts) > 1
    for where, text in texts:
        try:
            results = fill_mask(model, tokenizer, text, args.top_k)
        except CommandError as e:
            raise CommandError(f"{where}: {e}" if several else str(e)) from None
        if args.json:  # one text: its list of masks; several: one JSON object per line
            rec = {"text": text, "masks": results} if several else results
            print(json.dumps(rec, ensure_ascii=False), flush=True)
            continue
        if several:
            print(f"{where}: {text}")
        for n, preds in enumerate(results, 1):
            print(f"mask {n}:")
            for p in preds:
                print(f"  {p['score']:.4f}  {p['token']!r}  (id {p['token_id']})")
    return 0
