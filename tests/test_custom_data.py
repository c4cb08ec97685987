"""Your own images end to end: a single folder split by data.val_fraction (or a CSV manifest), a
pretrained torchvision teacher fine-tuned with a new classifier, RLD into a small torchvision student,
export, and predictions that agree with the run's own evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_user_error
from rld.cli import main
from rld.config import resolve
from rld.data import build_data
from rld.data.sources import Split
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


def test_custom_path_end_to_end(tmp_path, capsys):
    root = _images(tmp_path / "pets")
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": create_model("torchvision:resnet18", num_classes=1000).state_dict()}, weights)
    data = [f"data.path={root}", "data.val_fraction=0.4"]
    teacher_run = tmp_path / "teacher"
    argv = ["train", "custom/teacher", *data, *SMALL, f"model.student_weights={weights}", "--out", str(teacher_run)]
    assert main(argv) == 0
    split = json.loads((teacher_run / "split.json").read_text())
    assert split["classes"] == list(CLASSES) and len(split["val"]) == 6
    student_run = tmp_path / "rld"
    teacher = teacher_run / "checkpoints" / "last.pt"
    argv = ["train", "custom/rld", *data, *SMALL, "model.student_weights=null", "--teacher", str(teacher)]
    assert main([*argv, "--out", str(student_run)]) == 0
    capsys.readouterr()
    # eval of the run folder uses its saved split: 6 validation images
    assert main(["eval", str(student_run), "--json"]) == 0
    results = {r["which"]: r for r in json.loads(capsys.readouterr().out)}
    history = torch.load(student_run / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert results["last"]["test_top1"] == history[-1]["test_top1"]
    # the student's own predictions on the validation images, as the run evaluates them
    cfg = resolve(str(student_run / "config.yaml"))
    bundle = build_data(
        "imagefolder", str(root), batch_size=8, eval_batch_size=8, device="cpu", seed=0, num_workers=0,
        split=Split.read(student_run / "split.json"),
    )  # fmt: skip
    model = create_model(cfg.model.student, num_classes=3, dataset="imagenet")
    model.load_state_dict(torch.load(student_run / "checkpoints" / "best.pt", weights_only=True)["model"])
    with torch.no_grad():
        expected = torch.cat([model.eval()(b.images) for b in bundle.test]).argmax(dim=1).tolist()
    files = [str(root / p) for p, _ in Split.read(student_run / "split.json").val]
    for fmt in ("onnx", "safetensors"):
        out = export(student_run, fmt, tmp_path / f"student.{fmt}")
        rows = predict(out, files, top_k=1)
        assert [CLASSES.index(r["top"][0][0]) for r in rows] == expected, fmt


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
    assert main([*argv, str(tmp_path / "skipping"), "data.skip_bad_images=true"]) == 0


def test_a_saved_hugging_face_data_set_end_to_end(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    images, labels = [], []
    for c in range(len(CLASSES)):
        for _ in range(4):
            pixels = rng.integers(0, 256, size=(36, 40, 3), dtype=np.uint8)
            pixels[..., c] = 255
            images.append(Image.fromarray(pixels))
            labels.append(c)
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=list(CLASSES))})
    train = datasets.Dataset.from_dict({"img": images, "y": labels}, features=features)
    datasets.DatasetDict({"train": train}).save_to_disk(str(tmp_path / "hf"))
    capsys.readouterr()  # (its progress bar)
    hf = ["data.name=hf", f"data.path={tmp_path / 'hf'}", "data.image_column=img", "data.label_column=y"]
    bundle = build_data(
        "hf", str(tmp_path / "hf"), batch_size=4, device="cpu", seed=0, num_workers=0, val_fraction=0.25,
        image_column="img", label_column="y",
    )  # fmt: skip
    assert bundle.classes == list(CLASSES) and len(bundle.test.loader.dataset) == 3
    code = main(["train", "custom/teacher", *hf, *SMALL, "model.student_weights=null", "--out", str(tmp_path / "a")])
    assert_user_error(code, capsys.readouterr().err, "has no validation/test split: set data.val_fraction")
    argv = ["train", "custom/teacher", *hf, "data.val_fraction=0.25", *SMALL, "model.student_weights=null"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = export(tmp_path / "run", "onnx", tmp_path / "m.onnx")
    images[0].save(tmp_path / "x.png")
    assert predict(out, [str(tmp_path / "x.png")], top_k=1)[0]["top"][0][0] in CLASSES
