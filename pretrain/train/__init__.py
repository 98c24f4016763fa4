"""Training: the loop and everything it is made of.

Read ``loop`` first: ``train(cfg)`` orders step -> log -> eval -> checkpoint, and
``train_step`` is one optimizer step. ``session`` builds (and on resume restores) a run:
distributed set-up, model, loaders, engine, objective, checkpointer, loggers; ``build``
decides what it is built from (the model for the tokenizer, the resume point).
``policies`` decides after each step (non-finite steps, logging and evaluation cadence,
when to save, the end-of-run summary and export). ``objectives`` normalises losses by
global counts; ``perf`` holds the speed knobs; ``audit`` records the rows of every step.
"""

from pretrain.train.build import build_model
from pretrain.train.loop import StepResult, evaluate, train, train_step
from pretrain.train.policies import NonFiniteLossError, StopSignal, TrainState
from pretrain.train.session import Session

__all__ = [
    "NonFiniteLossError",
    "Session",
    "StepResult",
    "StopSignal",
    "TrainState",
    "build_model",
    "evaluate",
    "train",
    "train_step",
]
