"""Training engine: the step, the epoch loop, a run and its folder, evaluation, checkpoints and
resume, torchrun data parallelism.

The modules, lower first: ``step`` (the one training step), ``metrics`` (a run's epoch metrics),
``teacher`` (what the methods read from the teacher), ``batched`` (students stacked), ``static``
(the whole step, CUDA graphs), ``folder`` (a run's folder), ``trainer`` (a run: its student, method,
optimizer and schedule; evaluation; set-up), ``predictor`` (what a checkpoint predicts with;
evaluating checkpoints), ``loop`` (the one epoch loop; ``train``), ``sweep`` (groups of runs).
Imported lazily, as :mod:`rld.fast`; ``docs/architecture.md`` tells how a step flows.
"""

from rld._lazy import lazy_exports

_EXPORTS = {
    "evaluate": "rld.engine.trainer",
    "evaluate_checkpoint": "rld.engine.predictor",
    "evaluate_weights": "rld.engine.predictor",
    "lr_at": "rld.engine.trainer",
    "train": "rld.engine.loop",
}

__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)

__all__ = ["evaluate", "evaluate_checkpoint", "evaluate_weights", "lr_at", "train"]
