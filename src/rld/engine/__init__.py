"""Training engine: the epoch loop, evaluation, checkpoints and resume, torchrun data parallelism.

The modules, lower first: ``step`` (the one training step), ``metrics`` (a run's epoch metrics),
``batched`` (students stacked), ``static`` (the whole step, CUDA graphs), ``trainer`` (a run: its
student, method, optimizer, schedule, folder writes; the teacher provider; evaluation), ``predictor``
(what a checkpoint predicts with; evaluating checkpoints), ``loop`` (the one epoch loop; ``train``),
``sweep`` (groups of runs). Imported lazily, as :mod:`rld.fast`.
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
