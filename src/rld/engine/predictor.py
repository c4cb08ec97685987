"""What a trained run predicts with, rebuilt from its checkpoint.

Most methods train the student's own classifier, so the student is the predictor. A method with
its own prediction (SimKD classifies the projected student feature with the teacher's
classifier) is rebuilt with its modules: the teacher's architecture gives their shapes, and what
the method copied from the real teacher is restored from the checkpoint, so no teacher
checkpoint is needed. Evaluation (``rld eval``: :func:`evaluate_checkpoint`, :func:`evaluate_weights`),
export and the figures all go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rld.config import RunConfig, from_dict
from rld.data import build_data
from rld.engine import checkpoint as ckpt
from rld.engine.distributed import World
from rld.engine.trainer import StudentAndMethod, data_options, evaluate, resolve_device
from rld.methods import MethodContext, build_method, get_spec
from rld.models import create_model, load_checkpoint
from rld.models.checkpoint import load_state
from rld.models.sources import resolve_checkpoint


def predictor(cfg: RunConfig, state: dict[str, Any], path: str | Path = "the checkpoint") -> nn.Module:
    """The eval-mode module ``x → logits`` of a run checkpoint's state (``last.pt`` / ``best.pt``, read
    from ``path``: named when its weights do not fit)."""
    num_classes = int(state["num_classes"])
    student = create_model(cfg.model.student, num_classes=num_classes, dataset=cfg.model.dataset)
    load_state(student, state["model"], path, "student weights")
    if not get_spec(cfg.method.name).own_prediction:
        return student.eval()
    teacher = create_model(cfg.model.teacher, num_classes=num_classes, dataset=cfg.model.dataset)
    context = MethodContext(
        student=student,
        teacher=teacher,
        num_classes=num_classes,
        input_shape=tuple(state.get("input_shape") or (3, 32, 32)),
        seed=cfg.seed,
    )
    method = build_method(cfg.method, context)
    load_state(method, state["method"], path, "method state")
    return StudentAndMethod(student, method, amp=False).eval()


def own_prediction(cfg: RunConfig) -> bool:
    """Whether the run's method predicts with more than the student (:func:`predictor` is not the student)."""
    return get_spec(cfg.method.name).own_prediction


def evaluate_weights(
    cfg: RunConfig,
    model_name: str,
    weights: str | Path | nn.Module,
    data_path: str | None = None,
    device: str = "auto",
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Test loss, top-1 and top-5 of ``model_name`` with ``weights`` on the test split of ``cfg``'s data
    (the validation part a run saved in ``run_dir/split.json``, when there is one)."""
    world = World()
    dev = resolve_device(device, world)
    data = build_data(
        cfg.data.name,
        data_path or cfg.data.path,
        batch_size=cfg.data.eval_batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        device=dev,
        **data_options(cfg, run_dir),
    )
    if isinstance(weights, nn.Module):
        model = weights
    else:
        model = create_model(model_name, num_classes=data.num_classes, dataset=cfg.model.dataset)
        load_checkpoint(model, resolve_checkpoint(weights))
    return evaluate(model.to(dev), data.test, dev, world)


def evaluate_checkpoint(path: str | Path, data_path: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Evaluate a run checkpoint (``last.pt`` / ``best.pt``) on its data set's test split, with what
    the run predicts with (:func:`rld.engine.predictor.predictor`)."""
    state = ckpt.load_run(Path(path))
    cfg = from_dict(state["config"])
    weights = predictor(cfg, state, path)  # (the state read once, its weights checked against the model)
    metrics = evaluate_weights(cfg, cfg.model.student, weights, data_path, device, run_dir=Path(path).parent.parent)
    return {"checkpoint": str(path), "model": cfg.model.student, "epoch": state["epoch"], **metrics}
