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

from rld.errors import UserError

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
    return meta, state["model"], cfg


def _student(meta: dict[str, Any], state_dict: dict) -> nn.Module:
    from rld.models import create_model

    model = create_model(meta["model"], num_classes=meta["num_classes"], dataset=meta["dataset"])
    model.load_state_dict(state_dict)
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

        model = predictor(cfg, ckpt.load_run(path))
    else:
        model = _student(meta, state_dict)
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
        if path.suffix == ".safetensors":
            self.meta, self.model = self._from_safetensors(path)
        elif path.suffix == ".onnx":
            self.meta = self._from_onnx(path)
            self.model = None
        elif path.suffix in (".ts", ".torchscript") or _is_torchscript(path):
            files = {"rld.json": ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still supported
                self.model = torch.jit.load(str(path), map_location="cpu", _extra_files=files).eval()
            self.meta = json.loads(files["rld.json"])
        else:
            from rld.engine.predictor import own_prediction, predictor

            self.meta, state_dict, cfg = _metadata_of_checkpoint(path, data_path)
            if own_prediction(cfg):  # the student with the method's modules (SimKD), as rld eval and export
                from rld.engine import checkpoint as ckpt

                self.model = predictor(cfg, ckpt.load_run(path))
            else:
                self.model = _student(self.meta, state_dict)

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
        meta = json.loads(text)
        return meta, _student(meta, load_file(str(path)))

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
        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return json.loads(props["rld"])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if self._session is not None:
            (out,) = self._session.run(["logits"], {"images": images.numpy()})
            return torch.from_numpy(out)
        with torch.no_grad():
            return self.model(images).float()

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
    except (OSError, zipfile.BadZipFile):
        return False


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
