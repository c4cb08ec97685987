"""Run checkpoints: written atomically, read safely (``weights_only``), with every RNG state."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rld.errors import UserError

FORMAT = "rld-run-1"


def save_atomic(obj: Any, path: Path, *, before_rename: Callable[[], None] | None = None) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    ``before_rename`` is called between the two (a crash point for the tests, rld.engine.faults).
    If anything fails before the rename (a full disk, a folder made read-only), the temporary file
    is removed and the error raised: ``path`` keeps its previous content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, fsync, rename over ``path`` (removed again if that fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


TEACHER_RECORD = "teacher.json"
"""In a distilled run's folder: the teacher checkpoint's absolute path (or its URL / name, with ``file``:
the downloaded file), architecture and SHA-256 (of the file loaded)."""


def write_teacher_record(out: Path, checkpoint: str, architecture: str, source: str | None = None) -> None:
    """Write ``teacher.json``: ``checkpoint`` the file loaded; ``source`` the URL or name it came from."""
    record = {"checkpoint": source or str(Path(checkpoint).resolve()), "architecture": architecture}
    if source:
        record["file"] = str(Path(checkpoint).resolve())
    record["sha256"] = sha256_file(checkpoint)
    write_text_atomic(Path(out) / TEACHER_RECORD, json.dumps(record, indent=2) + "\n")


def read_teacher_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / TEACHER_RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load(path: Path) -> dict:
    """Load an rld checkpoint (or any torch file) without executing code; UserError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    from rld.models.checkpoint import load_failure, read_torch_file

    try:
        return read_torch_file(path)
    except Exception as err:  # truncated zip, wrong format, pickled code, ...
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({load_failure(err)}); delete it to start over "
            "or point to another checkpoint"
        ) from err


def load_run(path: Path) -> dict:
    """Load a checkpoint written by the rld engine (``last.pt`` / ``best.pt``); UserError when it is
    unreadable, not a run checkpoint, or lacks what a run checkpoint holds (:func:`run_state_problem`)."""
    ckpt = load(path)
    check_run_state(ckpt, path)
    return ckpt


def check_run_state(state: Any, path: Path) -> None:
    """UserError unless ``state`` (a loaded file) is a run checkpoint with all it holds intact."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an rld run checkpoint (no '{FORMAT}' format marker)")
    problem = run_state_problem(state)
    if problem:
        raise UserError(
            f"checkpoint {path} is damaged ({problem}); delete it to start over or point to another checkpoint"
        )


def _count(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def run_state_problem(state: dict) -> str | None:
    """What a run checkpoint's entries lack or hold of the wrong kind (a damaged or edited file: a
    flipped byte in its pickle can rename a key or change a type without making it unreadable), or
    None. Tensors' values are not checked (a run checkpoint holds no checksum of them)."""
    model = state.get("model")
    info, shape, position = state.get("data_info"), state.get("input_shape"), state.get("position")
    best = state.get("best")
    checks = [
        (isinstance(state.get("config"), dict), "no configuration"),
        (_count(state.get("epoch")), "no epoch count"),
        (_count(state.get("num_classes"), 1), "no number of classes"),
        (
            isinstance(model, dict)
            and bool(model)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()),
            "no model weights",
        ),
        (isinstance(state.get("method", {}), dict), "no method state"),
        (state.get("optimizer") is None or isinstance(state["optimizer"], dict), "no optimizer state"),
        (
            isinstance(state.get("history"), list)
            and all(isinstance(r, dict) and _count(r.get("epoch"), 1) for r in state["history"]),
            "no history of epochs",
        ),
        (
            isinstance(best, dict) and _count(best.get("epoch")) and isinstance(best.get("test_top1"), int | float),
            "no best epoch",
        ),
        (
            position is None
            or isinstance(position, dict)
            and _count(position.get("epoch"), 1)
            and _count(position.get("step")),
            "no valid position inside an epoch",
        ),
        (
            info is None
            or isinstance(info, dict)
            and isinstance(info.get("classes"), list)
            and isinstance(info.get("preprocess"), dict),
            "no valid class names and preprocessing",
        ),
        (
            shape is None or isinstance(shape, list | tuple) and len(shape) == 3 and all(_count(s, 1) for s in shape),
            "no valid input shape",
        ),
        (_valid_rng_state(state.get("rng")), "no valid random-number state"),
    ]
    return next((what for ok, what in checks if not ok), None)


def _valid_rng_state(rng: Any) -> bool:
    """Whether :func:`set_rng_state` takes ``rng`` (tried, and the generators' states restored; the
    CUDA generators' part is not tried, which would start CUDA in a process that may not use it)."""
    if not isinstance(rng, dict):
        return False
    saved = rng_state()
    try:
        set_rng_state({k: v for k, v in rng.items() if k != "cuda"})
        return True
    except Exception:  # noqa: BLE001 - the generators raise many kinds for a state they do not take
        return False
    finally:
        set_rng_state(saved)
