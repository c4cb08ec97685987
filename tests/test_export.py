"""rld export (safetensors, ONNX, TorchScript) and rld predict: the exported student predicts what
the run's student predicts on the same images."""

from __future__ import annotations

import csv
import json
import warnings
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


def _flip(data: bytes, at: int, mask: int = 0x19) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


@pytest.mark.parametrize("fmt,suffix", [("safetensors", ".safetensors"), ("onnx", ".onnx"), ("torchscript", ".ts")])
def test_a_damaged_export_is_one_line(run_and_images, tmp_path, capsys, fmt, suffix):
    """An export cut short, or whose metadata was edited into nonsense, is refused by rld predict in
    one line naming the file (each format's reader raised its own exception before)."""
    run, images, _ = run_and_images
    good = export(run, fmt, tmp_path / f"good{suffix}").read_bytes()
    image = str(images / "00.png")
    for n in (0, 40, len(good) // 2, len(good) - 10):
        path = tmp_path / f"cut{n}{suffix}"
        path.write_bytes(good[:n])
        code = main(["predict", str(path), image])
        assert_user_error(code, capsys.readouterr().err, str(path))
    text = json.dumps(Predictor(tmp_path / f"good{suffix}").meta)
    at = good.find(text.encode()) if fmt != "torchscript" else -1
    if at >= 0:  # the metadata stored as it is: a number of classes that no longer matches
        edited = good.replace(b'"num_classes": 10', b'"num_classes": 19')
        (tmp_path / f"edited{suffix}").write_bytes(edited)
        code = main(["predict", str(tmp_path / f"edited{suffix}"), image])
        assert_user_error(code, capsys.readouterr().err, "its rld metadata does not name its 19 classes")


def test_a_checkpoint_whose_pickle_was_damaged_is_one_line(run_and_images, tmp_path, capsys):
    """A flipped byte in a run checkpoint's pickle renames a weight (the file still loads): rld eval,
    export and predict refuse it in one line instead of a traceback from load_state_dict; a byte that
    breaks the pickle is said in a few words, without torch's warning."""
    run, images, _ = run_and_images
    good = (run / "checkpoints" / "best.pt").read_bytes()
    at = good.index(b"layer2.0.downsample.0.weight") + len("layer2.0.downsample.0.we")
    renamed = tmp_path / "renamed.pt"
    renamed.write_bytes(_flip(good, at))
    for argv in (
        ["eval", str(renamed), "--device", "cpu"],
        ["export", str(renamed), "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")],
        ["predict", str(renamed), str(images / "00.png")],
    ):
        code = main(argv)
        err = capsys.readouterr().err
        assert_user_error(code, err, f"checkpoint {renamed}: its student weights do not fit resnet8 (1 missing keys")
        assert "the file is damaged or edited" in err
    assert not (tmp_path / "x.safetensors").exists()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(_flip(good, 100))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code = main(["eval", str(broken), "--device", "cpu"])
    assert_user_error(code, capsys.readouterr().err, "its pickle is damaged or holds more than tensors, numbers and")
    assert [w for w in seen if not issubclass(w.category, ResourceWarning)] == []  # (they would print on stderr)
