"""rld export (safetensors, ONNX, TorchScript) and rld predict: the exported student predicts what
the run's student predicts on the same images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_user_error
from rld.cli import main
from rld.config import resolve
from rld.data.digits import load_digits
from rld.engine import train
from rld.export import Predictor, export, predict
from rld.models import create_model

FAST = ["train.batch_size=256", "data.eval_batch_size=512", "train.channels_last=false", "train.epochs=1"]
N_IMAGES = 12


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    train(resolve("demo/vanilla", FAST), root / "run")
    data = load_digits()
    folder = root / "images"
    folder.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(data.test.x[i]).save(folder / f"{i:02d}.png")
    return root / "run", folder, data


def _reference(run: Path, data) -> torch.Tensor:
    """The run's own student on the first test images, as its evaluation computes them."""
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    model = create_model("resnet8", num_classes=10)
    model.load_state_dict(state["model"])
    x = torch.from_numpy(data.test.x[:N_IMAGES]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(data.mean)[:, None, None], torch.tensor(data.std)[:, None, None]
    with torch.no_grad():
        return model.eval()((x - mean) / std).softmax(dim=1)


@pytest.mark.parametrize("fmt,suffix", [("safetensors", ".safetensors"), ("onnx", ".onnx"), ("torchscript", ".ts")])
def test_an_export_predicts_what_the_run_predicts(run_and_images, tmp_path, fmt, suffix):
    run, images, data = run_and_images
    out = export(run, fmt, tmp_path / f"student{suffix}")
    meta = Predictor(out).meta
    assert meta["classes"] == list(data.classes)
    assert meta["preprocess"]["size"] == [32, 32] and meta["model"] == "resnet8"
    rows = predict(out, [str(images)], top_k=3)
    reference = _reference(run, data)
    assert [r["image"] for r in rows] == [str(images / f"{i:02d}.png") for i in range(N_IMAGES)]
    classes = meta["classes"]
    top1 = [classes.index(r["top"][0][0]) for r in rows]
    assert top1 == reference.argmax(dim=1).tolist()
    got = torch.tensor([r["top"][0][1] for r in rows])
    assert torch.allclose(got, reference.max(dim=1).values, atol=1e-4)
    from_ckpt = predict(run, [str(images)], top_k=3)  # the run folder itself
    assert [r["top"][0][0] for r in from_ckpt] == [r["top"][0][0] for r in rows]


def test_predict_cli_writes_csv_and_reports_bad_images(run_and_images, tmp_path, capsys):
    run, images, _ = run_and_images
    out = tmp_path / "preds.csv"
    assert (
        main(["predict", str(run), str(images / "00.png"), str(images / "01.png"), "--top-k", "2", "--out", str(out)])
        == 0
    )
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["image", "class_1", "prob_1", "class_2", "prob_2"] and len(rows) == 3
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["predict", str(run), str(bad)])
    assert_user_error(code, capsys.readouterr().err, f"cannot read image {bad}")
    code = main(["export", str(tmp_path / "nothing.pt"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    assert_user_error(code, capsys.readouterr().err, "does not exist")
    assert main(["predict", str(run), str(images / "00.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == str(images / "00.png")


def test_checkpoints_record_their_classes_and_preprocessing(run_and_images, tmp_path):
    run, _, data = run_and_images
    info = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["data_info"]
    # a checkpoint without the record (an older run): read from the data set, the same metadata
    old = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    del old["data_info"]
    (tmp_path / "checkpoints").mkdir()
    torch.save(old, tmp_path / "checkpoints" / "best.pt")
    assert Predictor(tmp_path / "checkpoints" / "best.pt").meta == {
        **Predictor(run / "checkpoints" / "best.pt").meta,
        "source": str(tmp_path / "checkpoints" / "best.pt"),
    }
    assert info["classes"] == list(data.classes)
    assert info["preprocess"]["size"] == [32, 32]
    assert np.allclose(info["preprocess"]["mean"], data.mean) and np.allclose(info["preprocess"]["std"], data.std)
