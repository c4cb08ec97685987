"""What a trained run predicts with, rebuilt from its checkpoint.

Most methods train the student's own classifier, so the student is the predictor. A method with
its own prediction (SimKD classifies the projected student feature with the teacher's
classifier) is rebuilt with its modules: the teacher's architecture gives their shapes, and what
the method copied from the real teacher is restored from the checkpoint, so no teacher
checkpoint is needed. Evaluation (``rld eval``), export and the figures all go through here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rld.config import RunConfig
from rld.methods import MethodContext, build_method, get_spec
from rld.models import create_model


def predictor(cfg: RunConfig, state: dict[str, Any]) -> nn.Module:
    """The eval-mode module ``x → logits`` of a run checkpoint's state (``last.pt`` / ``best.pt``)."""
    from rld.engine.trainer import StudentAndMethod

    num_classes = int(state["num_classes"])
    student = create_model(cfg.model.student, num_classes=num_classes, dataset=cfg.model.dataset)
    student.load_state_dict(state["model"])
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
    method.load_state_dict(state["method"])
    return StudentAndMethod(student, method, amp=False).eval()


def own_prediction(cfg: RunConfig) -> bool:
    """Whether the run's method predicts with more than the student (:func:`predictor` is not the student)."""
    return get_spec(cfg.method.name).own_prediction
