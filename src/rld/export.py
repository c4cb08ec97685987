"""Ship a trained student: ``rld export`` (safetensors, ONNX, TorchScript) and ``rld predict``.

An export holds the student as it predicts (eval mode) and, in its metadata, what a user of the file
needs: the architecture, the class names and the evaluation preprocessing (resize / crop / size and
the normalisation mean and std). ``rld predict`` reads a run checkpoint or an export, applies that
preprocessing to image files and prints the top-k classes with their probabilities.

* ``safetensors``: the state dict, with the metadata as a JSON string under ``"rld"``
  (``pip install safetensors``); rld rebuilds the model from the architecture name.
* ``onnx``: a graph with a dynamic batch (input ``images`` (B, 3, H, W), output ``logits``), the metadata
  under the ``"rld"`` metadata property (``pip install onnx``; ``onnxruntime`` to run it).
* ``torchscript``: a traced module with the metadata as the extra file ``rld.json``.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rld.errors import UserError, first_line

FORMATS = ("safetensors", "onnx", "torchscript")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- what a prediction needs


def _metadata_of_checkpoint(path: Path, data_path: str | None = None) -> tuple[dict[str, Any], dict, Any]:
    """(metadata, state dict, config) of an rld run checkpoint; the data set is read only when the
    checkpoint does not record its classes and preprocessing (checkpoints of older runs)."""
    from rld.config import from_dict
    from rld.engine import checkpoint as ckpt

    state = ckpt.load_run(path)
    cfg = from_dict(state["config"])
    info = state.get("data_info")
    if info is None:
        from rld.data import build_data
        from rld.engine.trainer import data_info, data_options

        options = data_options(cfg, path.parent.parent)
        info = data_info(build_data(cfg.data.name, data_path or cfg.data.path, batch_size=1, device="cpu", **options))
    meta = {
        "format": "rld-export-1",
        "model": cfg.model.student,
        "dataset": cfg.model.dataset,
        "num_classes": int(state["num_classes"]),
        "classes": list(info["classes"]),
        "preprocess": info["preprocess"],
        "epoch": int(state["epoch"]),
        "source": str(path),
    }
    export_metadata(json.dumps(meta), path)  # what the checkpoint records of its data, checked
    return meta, state["model"], cfg


def _student(meta: dict[str, Any], state_dict: dict, path: Path) -> nn.Module:
    from rld.models import create_model
    from rld.models.checkpoint import load_state

    model = create_model(meta["model"], num_classes=meta["num_classes"], dataset=meta["dataset"])
    load_state(model, state_dict, path, "student weights")
    return model.eval()


def _example(meta: dict[str, Any]) -> torch.Tensor:
    pre = meta["preprocess"]
    h, w = pre["crop"] if "crop" in pre else pre["size"]
    return torch.randn(2, 3, int(h), int(w))


# ----------------------------------------------------------------------------- export


def export(checkpoint: str | Path, fmt: str, out: str | Path, data_path: str | None = None) -> Path:
    """Write the student of a run checkpoint (``last.pt`` / ``best.pt``, or a run folder: its
    ``best.pt``) to ``out`` in format ``fmt``; returns ``out``."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    meta, state_dict, cfg = _metadata_of_checkpoint(path, data_path)
    from rld.engine.predictor import own_prediction, predictor

    if own_prediction(cfg):
        if fmt == "safetensors":
            raise UserError(
                f"method {cfg.method.name!r} predicts with more than the student's weights (the method's own modules): "
                "export it as onnx or torchscript"
            )
        from rld.engine import checkpoint as ckpt

        model = predictor(cfg, ckpt.load_run(path), path)
    else:
        model = _student(meta, state_dict, path)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror}") from err
    text = json.dumps(meta)
    if fmt == "safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError as err:
            raise UserError("--format safetensors needs the package safetensors (pip install safetensors)") from err
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(out), metadata={"rld": text})
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, _example(meta))
            torch.jit.save(traced, str(out), _extra_files={"rld.json": text})
    else:
        try:
            import onnx
        except ImportError as err:
            raise UserError("--format onnx needs the package onnx (pip install onnx)") from err
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter: no onnxscript needed
            torch.onnx.export(
                model,
                _example(meta),
                buffer,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
        graph = onnx.load_from_string(buffer.getvalue())
        entry = graph.metadata_props.add()
        entry.key, entry.value = "rld", text
        onnx.save(graph, str(out))
    return out


# ----------------------------------------------------------------------------- predict


class Predictor:
    """Logits of preprocessed images ``(B, 3, H, W)`` from a run checkpoint or an export."""

    def __init__(self, source: str | Path, data_path: str | None = None):
        path = Path(source)
        if path.is_dir():
            path = path / "checkpoints" / "best.pt"
        if not path.is_file():
            raise UserError(f"{path} does not exist; give a run checkpoint, a run folder or an exported file")
        self.path = path
        self._session = None
        self.format = None  # the export's format; None for a run checkpoint
        if path.suffix == ".safetensors":
            self.format = "safetensors"
            self.meta, self.model = _reading(path, self.format, lambda: self._from_safetensors(path))
        elif path.suffix == ".onnx":
            self.format = "onnx"
            self.meta = _reading(path, self.format, lambda: self._from_onnx(path))
            self.model = None
        elif path.suffix in (".ts", ".torchscript") or _is_torchscript(path):
            self.format = "torchscript"
            self.meta, self.model = _reading(path, self.format, lambda: self._from_torchscript(path))
        else:
            from rld.engine.predictor import own_prediction, predictor

            self.meta, state_dict, cfg = _metadata_of_checkpoint(path, data_path)
            if own_prediction(cfg):  # the student with the method's modules (SimKD), as rld eval and export
                from rld.engine import checkpoint as ckpt

                self.model = predictor(cfg, ckpt.load_run(path), path)
            else:
                self.model = _student(self.meta, state_dict, path)

    @staticmethod
    def _from_safetensors(path: Path):
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
        except ImportError as err:
            raise UserError(f"{path}: reading .safetensors needs the package safetensors") from err
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("rld")
        if not text:
            raise UserError(f"{path} is not an rld export (no 'rld' metadata)")
        meta = export_metadata(text, path)
        return meta, _student(meta, load_file(str(path)), path)

    @staticmethod
    def _from_torchscript(path: Path):
        files = {"rld.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still supported
            model = torch.jit.load(str(path), map_location="cpu", _extra_files=files).eval()
        if not files["rld.json"]:
            raise UserError(f"{path} is not an rld export (no rld.json)")
        return export_metadata(files["rld.json"], path), model

    def _from_onnx(self, path: Path) -> dict[str, Any]:
        try:
            import onnx
            import onnxruntime
        except ImportError as err:
            message = f"{path}: running ONNX files needs onnx and onnxruntime (pip install onnx onnxruntime)"
            raise UserError(message) from err
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if "rld" not in props:
            raise UserError(f"{path} is not an rld export (no 'rld' metadata)")
        meta = export_metadata(props["rld"], path)
        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return meta

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of preprocessed images (B, 3, H, W). An export that loads but does not run (or
        does not give B x C logits) is damaged: UserError."""

        def run() -> torch.Tensor:
            if self._session is not None:
                (out,) = self._session.run(["logits"], {"images": images.numpy()})
                return torch.from_numpy(out)
            with torch.no_grad():
                return self.model(images).float()

        if self.format is None:
            return run()  # a model rld builds from a run checkpoint: a failure here is a bug
        out = _reading(self.path, self.format, run, "does not run")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(images), self.meta["num_classes"]):
            raise UserError(
                f"{self.path} does not give {self.meta['num_classes']} logits per image: the {self.format} export "
                "is damaged; export the run again (rld export)"
            )
        return out

    def preprocess(self, image) -> torch.Tensor:
        """A PIL image -> (3, H, W) float32 as the run evaluated its test images."""
        import torchvision.transforms as T
        from PIL import Image

        pre = self.meta["preprocess"]
        image = image.convert("RGB")
        steps: list = []
        if "resize" in pre:
            steps.append(T.Resize(pre["resize"]))
        if "crop" in pre:
            steps.append(T.CenterCrop(pre["crop"]))
        if "size" in pre and tuple(image.size[::-1]) != tuple(pre["size"]):
            steps.append(T.Resize(tuple(pre["size"]), interpolation=Image.BILINEAR))
        return T.Compose([*steps, T.ToTensor(), T.Normalize(pre["mean"], pre["std"])])(image)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (its zip holds the scripted ``code/``), not a torch.save checkpoint."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except Exception:  # noqa: BLE001 - not a readable zip (damaged files raise many kinds): not TorchScript
        return False


def _reading(path: Path, fmt: str, read, what: str = "cannot be read"):
    """``read()``; any exception but a UserError means a damaged export file: UserError naming it."""
    try:
        return read()
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file makes each reader raise its own kinds
        reason = first_line(err)
        raise UserError(
            f"{path} {what} as a {fmt} export ({reason}); it is damaged or not an rld export: export the run "
            "again (rld export)"
        ) from err


MAX_SIDE = 10_000
"""The largest image side an export's preprocessing may give (a damaged number is refused, not allocated)."""


def export_metadata(text: Any, path: Path) -> dict[str, Any]:
    """The ``rld`` metadata of an export (JSON text) checked for what :class:`Predictor` reads: the model,
    the class names (one per output), the preprocessing (sizes, and 3 finite means and positive stds).
    UserError naming what is wrong (an edited or damaged file)."""
    import math

    def bad(what: str) -> UserError:
        return UserError(f"{path}: its rld metadata {what}; export the run again (rld export)")

    try:
        meta = json.loads(text)
    except (TypeError, ValueError) as err:
        raise bad(f"is not JSON ({str(err).splitlines()[0][:80]})") from err
    if not isinstance(meta, dict):
        raise bad("is not a JSON object")
    for key in ("model", "dataset"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise bad(f"has no {key} name")
    n, classes = meta.get("num_classes"), meta.get("classes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad("gives no number of classes")
    if not isinstance(classes, list) or len(classes) != n or not all(isinstance(c, str) for c in classes):
        raise bad(f"does not name its {n} classes")
    pre = meta.get("preprocess")

    def side(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIDE

    def pair(value: Any) -> bool:
        return isinstance(value, list) and len(value) == 2 and all(map(side, value))

    def stats(value: Any, low: float) -> bool:
        ok = isinstance(value, list) and len(value) == 3
        return ok and all(isinstance(v, int | float) and math.isfinite(v) and v > low for v in value)

    if not isinstance(pre, dict) or not stats(pre.get("mean"), -math.inf) or not stats(pre.get("std"), 0.0):
        raise bad("gives no normalisation (3 finite means, 3 positive stds)")
    sizes = [("size", pair), ("crop", pair), ("resize", lambda v: side(v) or pair(v))]
    if not ("size" in pre or "crop" in pre) or any(k in pre and not ok(pre[k]) for k, ok in sizes):
        raise bad(f"gives no valid input size (sides of 1 to {MAX_SIDE} pixels)")
    return meta


def image_files(items: list[str]) -> list[Path]:
    """Image files given directly or found (recursively, sorted) in folders."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"image {item} does not exist")
    if not out:
        raise UserError("no images given (files or folders of .png/.jpg/... images)")
    return out


def predict(
    source: str | Path, images: list[str], *, top_k: int = 5, batch_size: int = 64, data_path: str | None = None
) -> list[dict[str, Any]]:
    """Top-``top_k`` classes and probabilities of each image file: ``[{"image", "top": [(class, p), ...]}]``."""
    from rld.data.sources import read_image

    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    predictor = Predictor(source, data_path)
    classes = predictor.meta["classes"]
    files = image_files(images)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        tensors = []
        for f in chunk:
            tensors.append(predictor.preprocess(read_image(f, "give only image files")))
        probs = predictor.logits(torch.stack(tensors)).softmax(dim=1)
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for f, v, i in zip(chunk, values.tolist(), indices.tolist()):
            rows.append({"image": str(f), "top": [(classes[c], p) for c, p in zip(i, v)]})
    return rows


def write_predictions(rows: list[dict[str, Any]], out: Path) -> None:
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        k = max(len(r["top"]) for r in rows)
        writer.writerow(["image", *[h for j in range(1, k + 1) for h in (f"class_{j}", f"prob_{j}")]])
        for r in rows:
            writer.writerow([r["image"], *[x for c, p in r["top"] for x in (c, f"{p:.6f}")]])
