"""Training engine: the epoch loop, evaluation, checkpoints and resume, torchrun data parallelism."""

from rld.engine.trainer import evaluate, evaluate_checkpoint, evaluate_weights, lr_at, train

__all__ = ["evaluate", "evaluate_checkpoint", "evaluate_weights", "lr_at", "train"]
