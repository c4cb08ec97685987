"""Your own images end to end: a single folder split by data.val_fraction (or a CSV manifest), a
pretrained torchvision teacher fine-tuned with a new classifier, RLD into a small torchvision student,
export, and predictions that agree with the run's own evaluation."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_RUN, assert_user_error, save_hf_folder
from rld.cli import main
from rld.config import resolve
from rld.data import build_data
from rld.data.sources import Split
from rld.engine import train
from rld.errors import UserError
from rld.export import export, predict
from rld.models import create_model

CLASSES = ("cat", "dog", "fox")
SMALL = [
    "train.batch_size=4",
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "seed=3",
]


def _images(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(36, 40, 3), dtype=np.uint8)
            pixels[..., c] = 255  # a class colour, so the classes differ
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_a_single_folder_is_split_stratified_seeded_and_saved(tmp_path):
    root = _images(tmp_path / "pets")
    bundle = build_data("imagefolder", str(root), batch_size=4, device="cpu", seed=3, val_fraction=0.4, num_workers=0)
    split: Split = bundle.split
    assert split.classes == list(CLASSES) and bundle.num_classes == 3
    assert sorted(y for _, y in split.val) == [0, 0, 1, 1, 2, 2]  # 40 % of 5 per class, stratified
    assert not {p for p, _ in split.train} & {p for p, _ in split.val}
    again = build_data("imagefolder", str(root), batch_size=4, device="cpu", seed=3, val_fraction=0.4, num_workers=0)
    assert again.split == split  # seeded
    other = build_data("imagefolder", str(root), batch_size=4, device="cpu", seed=4, val_fraction=0.4, num_workers=0)
    assert other.split.val != split.val
    with pytest.raises(UserError, match="has no train/ and val/ folders: set data.val_fraction"):
        build_data("imagefolder", str(root), batch_size=4, device="cpu", seed=0, num_workers=0)


def _source(kind: str, root: Path, tmp_path: Path) -> list[str]:
    """The data overrides of an image source: one folder split by val_fraction, a CSV manifest, or a
    saved Hugging Face data set (with its images also written as files, for rld predict)."""
    if kind == "folder":
        return [f"data.path={root}", "data.val_fraction=0.4"]
    if kind == "csv":
        lines = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        return [f"data.path={root / 'labels.csv'}", "data.val_fraction=0.4"]
    hf = save_hf_folder(root, tmp_path / "hf", CLASSES)
    return ["data.name=hf", f"data.path={hf}", "data.val_fraction=0.4"]


def _validation_files(kind: str, bundle, root: Path, tmp_path: Path) -> list[str]:
    if kind != "hf":
        return [str(Path(bundle.split.root) / p) for p, _ in bundle.split.val]
    out = []
    for i, row in enumerate(bundle.test.loader.dataset.base.split):
        out.append(str(tmp_path / f"val{i}.png"))
        row["image"].save(out[-1])
    return out


@pytest.mark.parametrize("kind", ["folder", "csv", "hf"])
def test_custom_path_end_to_end(tmp_path, capsys, kind):
    """Fine-tune a pretrained torchvision teacher (a local weights file, a new classifier), distil it
    with RLD into a torchvision student, export to ONNX and safetensors: their predictions on the
    validation images are the run's own."""
    root = _images(tmp_path / "pets")
    data = _source(kind, root, tmp_path)
    capsys.readouterr()  # (progress bars of the data set writer)
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": create_model("torchvision:resnet18", num_classes=1000).state_dict()}, weights)
    teacher_run = tmp_path / "teacher"
    argv = ["train", "custom/teacher", *data, *SMALL, f"model.student_weights={weights}", "--out", str(teacher_run)]
    assert main(argv) == 0
    if kind != "hf":
        split = json.loads((teacher_run / "split.json").read_text())
        assert split["classes"] == list(CLASSES) and len(split["val"]) == 6
    student_run = tmp_path / "rld"
    teacher = teacher_run / "checkpoints" / "last.pt"
    argv = ["train", "custom/rld", *data, *SMALL, "model.student_weights=null", "--teacher", str(teacher)]
    assert main([*argv, "--out", str(student_run)]) == 0
    capsys.readouterr()
    # eval of the run folder uses the same validation images (the saved split)
    assert main(["eval", str(student_run), "--json"]) == 0
    results = {r["which"]: r for r in json.loads(capsys.readouterr().out)}
    history = torch.load(student_run / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert results["last"]["test_top1"] == history[-1]["test_top1"]
    # the student's own predictions on the validation images, as the run evaluates them
    cfg = resolve(str(student_run / "config.yaml"))
    from rld.engine.trainer import data_options

    bundle = build_data(
        cfg.data.name, cfg.data.path, batch_size=8, eval_batch_size=8, device="cpu", **data_options(cfg, student_run)
    )
    model = create_model(cfg.model.student, num_classes=3, dataset="imagenet")
    model.load_state_dict(torch.load(student_run / "checkpoints" / "best.pt", weights_only=True)["model"])
    with torch.no_grad():
        expected = torch.cat([model.eval()(b.images) for b in bundle.test]).argmax(dim=1).tolist()
    files = _validation_files(kind, bundle, root, tmp_path)
    assert len(files) == len(expected) == 6
    for fmt in ("onnx", "safetensors"):
        out = export(student_run, fmt, tmp_path / f"student.{fmt}")
        rows = predict(out, files, top_k=1)
        assert [CLASSES.index(r["top"][0][0]) for r in rows] == expected, fmt


def test_a_teacher_used_as_it_comes_with_teacher_weights(tmp_path):
    root = _images(tmp_path / "pets")
    weights = tmp_path / "pets-resnet18.pth"
    torch.save(create_model("torchvision:resnet18", num_classes=3).state_dict(), weights)
    over = [f"data.path={root}", "data.val_fraction=0.4", *SMALL, "model.student_weights=null"]
    cfg = resolve("custom/kd", [*over, f"model.teacher_weights={weights}"])
    train(cfg, tmp_path / "kd")
    assert json.loads((tmp_path / "kd" / "split.json").read_text())["classes"] == list(CLASSES)
    wrong = tmp_path / "imagenet-resnet18.pth"
    torch.save(create_model("torchvision:resnet18", num_classes=1000).state_dict(), wrong)
    with pytest.raises(UserError, match="predict 1000 classes, the data has 3: a teacher must predict"):
        train(resolve("custom/kd", [*over, f"model.teacher_weights={wrong}"]), tmp_path / "wrong")


def test_a_csv_manifest_and_a_corrupt_image(tmp_path, capsys):
    root = _images(tmp_path / "pets", per_class=4)
    lines = ["path,label,split"] + [
        f"{name}/{i}.png,{name},{'val' if i == 0 else 'train'}" for name in CLASSES for i in range(4)
    ]
    (tmp_path / "pets" / "labels.csv").write_text("\n".join(lines) + "\n")
    bundle = build_data("imagefolder", str(root / "labels.csv"), batch_size=4, device="cpu", seed=0, num_workers=0)
    assert bundle.split.val == [(f"{name}/0.png", c) for c, name in enumerate(CLASSES)]
    (root / "dog" / "2.png").write_bytes(b"broken")
    out = tmp_path / "run"
    argv = [
        "train",
        "custom/teacher",
        f"data.path={root / 'labels.csv'}",
        *SMALL,
        "model.student_weights=null",
        "--out",
    ]
    code = main([*argv, str(out)])
    assert_user_error(code, capsys.readouterr().err, f"cannot read image {root / 'dog' / '2.png'}")
    assert not out.exists()  # a new run stopped by a user error before its first checkpoint leaves no folder
    out.mkdir()
    assert main([*argv, str(out)]) == 2 and list(out.iterdir()) == []  # an empty folder stays as it was
    assert main([*argv, str(tmp_path / "skipping"), "data.skip_bad_images=true"]) == 0


@pytest.mark.parametrize("layout", ["folder", "csv", "trainval"])
@pytest.mark.parametrize("damage", ["truncated", "random", "huge"])
def test_an_image_that_cannot_be_decoded_is_one_line_or_left_out(tmp_path, capsys, layout, damage):
    """A truncated JPEG (whose damage only decoding shows), random bytes named .jpg, or the header of
    a 20000 x 20000 PNG (a decompression bomb to PIL), in a single folder, a CSV manifest or train/
    and val/ folders: the run stops with one line naming the file and leaves no run folder; with
    data.skip_bad_images=true it is left out and the run trains."""
    root = tmp_path / "pets"
    if layout == "trainval":
        _images(root / "train", per_class=3), _images(root / "val", per_class=2)
    else:
        _images(root, per_class=4)
    bad = (root / "train" if layout == "trainval" else root) / "cat" / "bad.jpg"
    if damage == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG")
        bad.write_bytes(buffer.getvalue()[:300])
    elif damage == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(100))
    else:
        ihdr = b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)))
    data = {"folder": [f"data.path={root}", "data.val_fraction=0.5"], "trainval": [f"data.path={root}"]}.get(layout)
    if layout == "csv":
        files = sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
        rows = [f"{p},{p.parent.name},{'val' if p.name == '0.png' else 'train'}" for p in files]
        (root / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
        data = [f"data.path={root / 'labels.csv'}"]
    argv = ["train", "custom/teacher", *data, *TINY_RUN, "--device", "cpu", "--out", str(tmp_path / "run")]
    code = main(argv)
    assert_user_error(code, capsys.readouterr().err, f"cannot read image {bad}")
    assert not (tmp_path / "run").exists()  # stopped before its first checkpoint: nothing left behind
    assert main([*argv, "data.skip_bad_images=true"]) == 0
    assert "bad.jpg" in capsys.readouterr().out  # said in the log


def test_a_manifest_row_without_a_label_or_not_text_is_refused(tmp_path):
    from rld.data.sources import manifest_split

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,cat\nb.png\n")
    with pytest.raises(
        UserError, match=r"m.csv, line 3: a row needs a path and a label, got \{'path': 'b.png', 'label': None\}"
    ):
        manifest_split(manifest, 0.5, 0)
    manifest.write_bytes(b"path,label\n\x80.png,cat\n")
    with pytest.raises(UserError, match="cannot read the manifest .*m.csv: 'utf-8' codec can't decode byte 0x80"):
        manifest_split(manifest, 0.5, 0)
