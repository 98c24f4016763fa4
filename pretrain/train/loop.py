"""The training loop (one screen) and the step function.

``train(cfg)`` orders step -> log -> eval -> checkpoint; ``train_step`` does one optimizer
step: global token counts first (one all-reduce, which also tells every rank whether some
rank could not get its batches: then all stop together with that rank's one-line reason),
then forward/backward over this rank's A micro-batches, then an agreed non-finite check and
the DeepSpeed step. Setup lives in
``pretrain.train.session``; logging, evaluation, checkpoint and non-finite policies in
``pretrain.train.policies`` (the session's ``policy``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from data_pipeline.common import CommandError
from pretrain.engine import agreed_error
from pretrain.train.policies import StopSignal
from pretrain.train.session import Session


@dataclass
class StepResult:
    applied: bool  # parameters were updated
    nonfinite: bool  # some rank's loss was non-finite
    grad_norm: float | None
    lr: float  # the learning rate this step used
    tokens: int  # real tokens in the global batch


def train_step(
    engine,
    objective,
    batches: Sequence[dict],
    segments: bool,
    poison: bool = False,
    failure: str | None = None,
) -> StepResult:
    """One optimizer step over this rank's micro-batches of the global batch (``failure``:
    why this rank has none; every rank then raises the same ``AgreedError``)."""
    failed = torch.tensor([float(failure is not None)], dtype=torch.float64)
    # The objective's counts (N_mlm, N_tok, N_pair, ...), then the failures: one all-reduce.
    counts = engine.all_reduce(torch.cat([objective.local_counts(batches, segments), failed]))
    if counts[-1]:
        raise agreed_error(failure)
    counts = counts[:-1]
    objective.set_step(counts, engine.grad_accum, engine.world_size)
    finite = torch.ones((), dtype=torch.bool, device=engine.device)
    lr = engine.lr
    for mb in batches:
        loss = objective.loss(engine.forward(mb, segments))
        if poison:  # debug.poison_loss_steps: NaN loss and gradients, as a real blow-up would
            loss = loss * float("nan")
        finite &= torch.isfinite(loss.detach())
        engine.backward(loss)
    # Every rank must take the same decision, or ZeRO partitions would diverge.
    nonfinite = bool(engine.all_reduce((~finite).to(torch.float32), op="max").item())
    applied, grad_norm = engine.step(skip=nonfinite)
    return StepResult(applied, nonfinite, grad_norm, lr, int(counts[1]))


@torch.no_grad()
def evaluate(s: Session) -> dict[str, float]:
    """Validation loss/accuracy with fixed masks, exact over all ranks, attending as training
    does (``data.attend_within_document``)."""
    e = s.engine
    devices = [e.device.index or 0] if e.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # RTD sampling must not shift training RNG
        torch.manual_seed(s.cfg.seed)
        e.train(False)
        o = s.objective
        sums = torch.zeros(len(o.keys), dtype=torch.float64, device=e.device)
        it = iter(s.val)
        for _ in range(len(s.val)):  # the same count on every rank
            batches, failure = _take(it, 1)
            # Agreed per micro-batch: a ZeRO-3 forward has collectives of its own.
            if e.all_reduce(torch.tensor([float(failure is not None)]), op="max").item():
                raise agreed_error(failure)
            sums += o.raw_sums(e.forward(batches[0], s.cfg.data.attention_segments()))
        e.train(True)
    metrics = o.eval_metrics(e.all_reduce(sums))
    metrics.update({f"eval_{k}": v for k, v in e.diagnostics().items()})  # same on every rank
    return metrics


def _take(it: Iterator, n: int, timer=None) -> tuple[list[dict], str | None]:
    """``n`` micro-batches and None, or ([], the one-line reason) if the data failed."""
    if timer is not None:
        timer.data_start()
    try:
        batches, failure = [next(it) for _ in range(n)], None
    except CommandError as err:  # damaged data, a dead loader worker: agreed in the step
        batches, failure = [], str(err)
    if timer is not None:
        timer.data_end()
    return batches, failure


def train(cfg, resume: str = "auto", overwrite: bool = False) -> Session:
    """Train ``cfg`` to ``cfg.max_steps`` (or until SIGTERM/SIGUSR1); returns the session."""
    with StopSignal() as stop:  # from the start: a signal during set-up stops after one step
        s = Session(cfg, resume, overwrite)
        try:
            e, p, step = s.engine, s.policy, s.state.step
            segments = cfg.data.attention_segments()  # keep packed documents apart
            if p.nothing_to_train():
                return s
            if step == 0 and p.eval_due(0):  # eval.at_start: the untrained model
                p.log_eval(0, evaluate(s))
            it = iter(s.loader)
            while step < cfg.max_steps:
                step += 1
                batches, failure = _take(it, e.grad_accum, s.timer)
                result = train_step(e, s.objective, batches, segments, p.poisoned(step), failure)
                s.audit.record(step, batches)  # logging.audit_samples: the rows of this step
                p.account(step, result)
                if p.log_due(step):
                    p.log(step, result)
                if p.eval_due(step):
                    p.log_eval(step, evaluate(s))
                save, preempted = p.checkpoint_due(step, stop)
                if save:
                    s.save(step)
                if preempted:
                    p.finish(preempted_by=stop.name)
                    return s
            p.finish()
            return s
        finally:
            s.close()
