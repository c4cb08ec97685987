"""MLKD as a registered method with its own augmentation: the step's loss on both views against a
float64 brute force of the published equations, the strong view (RandAugment + Cutout) against PIL
and its determinism per (seed, epoch), training, exact resume, the refusals, presets and the table."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms as T

from conftest import assert_same_run_state, assert_user_error, load_last, metric_rows, run_rld
from rld.cli import main
from rld.config import list_presets, resolve
from rld.data import build_data
from rld.data.device_loader import DeviceLoader
from rld.data.pil import ArrayImageDataset
from rld.data.strong import OP_INDEX, OPS, StrongPlan, rand_augment
from rld.data.torch_loader import TorchLoader, TwoCrops
from rld.data.types import ArraySplit
from rld.engine import train
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.engine.sweep import stream_signature
from rld.engine.trainer import StudentAndMethod
from rld.errors import UserError
from rld.experiments import collect, plan_table, to_markdown
from rld.methods import StrongView, build_method, get_spec, logits_only, method_params
from rld.models import create_model

# The published training protocols, written out independently of the presets:
# Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/*.yaml (EPOCHS, LR) and, for the pairs
# it has no config for, sunshangquan/logit-standardization-KD configs/cifar100/mlkd/*.yaml.
CIFAR_PROTOCOL = {
    "resnet32x4-resnet8x4": (240, 0.025),
    "vgg13-vgg8": (240, 0.025),
    "wrn_40_2-wrn_40_1": (240, 0.025),
    "wrn_40_2-wrn_16_2": (240, 0.025),
    "resnet56-resnet20": (240, 0.025),
    "resnet110-resnet32": (240, 0.025),
    "resnet32x4-ShuffleV2": (960, 0.01),
    "vgg13-MobileNetV2": (480, 0.01),
    "ResNet50-MobileNetV2": (480, 0.01),
    "resnet110-resnet20": (480, 0.025),
    "resnet32x4-wrn_16_2": (480, 0.025),
    "resnet32x4-wrn_40_2": (480, 0.025),
    "wrn_40_2-resnet8x4": (480, 0.025),
    "wrn_40_2-MobileNetV2": (480, 0.005),
}
# configs/imagenet/r34_r18/kd_ours.yaml (lr 0.1) and r50_mv2/kd_ours.yaml (lr 0.2, taken for MobileNetV1)
IMAGENET_PROTOCOL = {"ResNet34-ResNet18": 0.1, "ResNet50-MobileNetV1": 0.2}
SMALL = ["data.image_size=16", "data.train_per_class=30", "train.batch_size=32", "data.eval_batch_size=512"]


# ----------------------------------------------------------------------------- the loss, brute force


def _softmax(row, t):
    m = max(v / t for v in row)
    e = [math.exp(v / t - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _kd(zs, zt, t):
    """t²·mean_b Σ_c p_t log(p_t / p_s), plain loops."""
    total = 0.0
    for rs, rt in zip(zs, zt):
        ps, pt = _softmax(rs, t), _softmax(rt, t)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt) if q > 0)
    return total / len(zs) * t * t


def _gram(p, transpose_first):
    n, c = len(p), len(p[0])
    if transpose_first:  # PᵀP (C, C)
        return [[sum(p[b][i] * p[b][j] for b in range(n)) for j in range(c)] for i in range(c)]
    return [[sum(p[i][k] * p[j][k] for k in range(c)) for j in range(n)] for i in range(n)]  # PPᵀ (B, B)


def _cc_bc(zs, zt, t):
    ps, pt = [_softmax(r, t) for r in zs], [_softmax(r, t) for r in zt]
    cs, ct = _gram(ps, True), _gram(pt, True)
    bs, bt = _gram(ps, False), _gram(pt, False)
    cc = sum((ct[i][j] - cs[i][j]) ** 2 for i in range(len(cs)) for j in range(len(cs))) / len(zs[0])
    bc = sum((bt[i][j] - bs[i][j]) ** 2 for i in range(len(bs)) for j in range(len(bs))) / len(zs)
    return cc, bc


def _zscore(z):
    out = []
    for row in z:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        out.append([(v - mean) / (1e-7 + std) for v in row])
    return out


def _ce(z, y):
    return sum(math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(z, y)) / len(z)


def brute_force_mlkd(sw, tw, ss, ts, y, *, temperature, ce_weight, kd_weight, standardize=False):
    """KD_ours.forward_train (mdistiller/distillers/KD_ours.py) written out: the masks are the fractions
    of samples / classes at or below np.percentile(…, 50) of the teacher's weak-view confidences."""
    pw = [_softmax(r, 1.0) for r in tw]
    conf = [max(r) for r in pw]
    m = float(np.mean(np.array(conf) <= np.percentile(conf, 50)))
    class_conf = [sum(r[c] for r in pw) for c in range(len(pw[0]))]
    m_c = float(np.mean(np.array(class_conf) <= np.percentile(class_conf, 50)))
    k_sw, k_tw, k_ss, k_ts = (_zscore(z) for z in (sw, tw, ss, ts)) if standardize else (sw, tw, ss, ts)
    temps = (temperature, 3.0, 5.0, 2.0, 6.0)
    kd_weak = m * sum(_kd(k_sw, k_tw, t) for t in temps)
    kd_strong = sum(_kd(k_ss, k_ts, t) for t in temps[:3]) + sum(_kd(k_sw, k_tw, t) for t in temps[3:])
    grams = [_cc_bc(sw, tw, t) for t in temps]
    cc, bc = m_c * sum(g[0] for g in grams), m * sum(g[1] for g in grams)
    parts = {
        "ce": ce_weight * (_ce(sw, y) + _ce(ss, y)),
        "kd_weak": kd_weight * kd_weak,
        "kd_strong": kd_weight * kd_strong,
        "cc": kd_weight * cc,
        "bc": kd_weight * bc,
    }
    return sum(parts.values()), parts


@pytest.mark.parametrize("standardize", [False, True])
def test_step_loss_equals_a_float64_brute_force_on_both_views(standardize):
    """Through the engine's module: the student runs on each view, the method gets both views' logits."""
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=7).double()
    over = ["method.logit_standardization=true"] if standardize else []
    cfg = resolve("demo/mlkd", over)
    params = method_params(cfg.method)
    # logit standardization as its published train.py sets it for MLKD: KD weight w = 9, T = b = 2
    expected = (2.0, 9.0) if standardize else (4.0, 0.9)
    assert (params["temperature"], params["kd_weight"], params["ce_weight"]) == (*expected, 0.1)
    module = StudentAndMethod(student, build_method(cfg.method), amp=False)
    weak, strong = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randn(6, 3, 16, 16, dtype=torch.float64)
    t_weak, t_strong = 3 * torch.randn(6, 7, dtype=torch.float64), 3 * torch.randn(6, 7, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 6])
    logits, total, parts = module(weak, t_weak, y, 1, None, strong=strong, teacher_strong=t_strong)
    with torch.no_grad():
        sw, ss = student(weak), student(strong)
    assert torch.equal(logits, sw.float())  # the prediction is the weak view's (the method gets float32 logits)

    def reference(sw, ss):
        return brute_force_mlkd(
            sw.tolist(),
            t_weak.tolist(),
            ss.tolist(),
            t_strong.tolist(),
            y.tolist(),
            temperature=expected[0],
            ce_weight=0.1,
            kd_weight=expected[1],
            standardize=standardize,
        )

    ref_total, ref_parts = reference(sw.float().double(), ss.float().double())
    assert total.item() == pytest.approx(ref_total, rel=1e-5)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(ref_parts, rel=1e-5, abs=1e-7)
    # the views are not interchangeable: swapping them changes the loss
    _, swapped, _ = module(strong, t_strong, y, 1, None, strong=weak, teacher_strong=t_weak)
    assert not math.isclose(swapped.item(), ref_total, rel_tol=1e-3)
    # the method itself on float64 Features computes in float64: equal to the brute force to 1e-9
    method = module.method
    got, got_parts = method(
        logits_only(sw), logits_only(t_weak), y, 1, strong=StrongView(logits_only(ss), logits_only(t_strong))
    )
    ref_total, ref_parts = reference(sw, ss)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(ref_total, rel=1e-9)
    assert {k: v.item() for k, v in got_parts.items()} == pytest.approx(ref_parts, rel=1e-9, abs=1e-12)


def test_the_method_refuses_a_step_without_the_strong_view():
    torch.manual_seed(0)
    module = StudentAndMethod(create_model("resnet8", num_classes=5), build_method({"name": "mlkd"}), amp=False)
    with pytest.raises(UserError, match=r"method 'mlkd' trains on a strongly augmented view too: its batches need"):
        module(torch.randn(4, 3, 16, 16), torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), 1, None)


# ----------------------------------------------------------------------------- the strong view


def _pil_op(image: Image.Image, name: str, v: float) -> Image.Image:
    """The operations of mdistiller/dataset/cifar100.py's augment_list, as PIL computes them."""
    affine = {
        "shear_x": (1, v, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, v, 1, 0),
        "translate_x": (1, 0, v * image.size[0], 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, v * image.size[1]),
    }
    if name in affine:
        return image.transform(image.size, Image.AFFINE, affine[name])
    return {
        "auto_contrast": lambda: ImageOps.autocontrast(image),
        "brightness": lambda: ImageEnhance.Brightness(image).enhance(v),
        "color": lambda: ImageEnhance.Color(image).enhance(v),
        "contrast": lambda: ImageEnhance.Contrast(image).enhance(v),
        "equalize": lambda: ImageOps.equalize(image),
        "identity": lambda: image,
        "posterize": lambda: ImageOps.posterize(image, max(1, int(v))),
        "rotate": lambda: image.rotate(v),
        "sharpness": lambda: ImageEnhance.Sharpness(image).enhance(v),
        "solarize": lambda: ImageOps.solarize(image, v),
    }[name]()


# pixels (of 8 images x 32 x 32 x 3) allowed to differ by more than 1 level: PIL's fixed-point arithmetic
# and its sampling grid round differently from float32 on a few pixels
TOLERANCE = {"rotate": 0.03, "sharpness": 0.01, "color": 0.01, "contrast": 0.01}


@pytest.mark.parametrize("name", [name for name, _, _ in OPS])
def test_each_operation_matches_pil(name):
    rng = np.random.default_rng(OP_INDEX[name])
    images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    images[:4, :, :, 0] //= 2  # a narrower range in some images (AutoContrast, Equalize)
    _, low, high = OPS[OP_INDEX[name]]
    values = low + (high - low) * rng.random(8)
    expected = np.stack([np.asarray(_pil_op(Image.fromarray(x), name, float(v))) for x, v in zip(images, values)])
    ops = torch.full((8, 2), OP_INDEX["identity"])
    ops[:, 0] = OP_INDEX[name]
    plan = StrongPlan(
        torch.zeros(8, dtype=torch.int64),
        ops,
        torch.tensor(np.stack([values, values], 1), dtype=torch.float32),
        torch.zeros(8, 3),  # no Cutout
    )
    got = rand_augment(torch.from_numpy(images).permute(0, 3, 1, 2).float(), plan).permute(0, 2, 3, 1).numpy()
    off = np.abs(got - expected.astype(np.float32)) > 1
    assert off.mean() <= TOLERANCE.get(name, 0.0), (name, off.mean())


def test_cutout_fills_the_published_square():
    # side 0.25·32 = 8 pixels; corner u = 0.5 -> np.random.uniform(32) = 32 + (1 - 32)·0.5 = 16.5, minus 4:
    # columns/rows 12 .. 20 inclusive (PIL's rectangle), filled with (125, 123, 114)
    plan = StrongPlan(
        torch.zeros(1, dtype=torch.int64),
        torch.full((1, 2), OP_INDEX["identity"]),
        torch.zeros(1, 2),
        torch.tensor([[0.25, 0.5, 0.5]]),
    )
    out = rand_augment(torch.zeros(1, 3, 32, 32), plan)
    filled = (out[0] != 0).all(dim=0)
    assert filled.sum() == 81 and filled[12:21, 12:21].all()
    assert out[0, :, 12, 12].tolist() == [125.0, 123.0, 114.0]


def _split(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=n))


def _loader(strong=True, seed=3, **kw):
    stats = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), flip=True)
    return DeviceLoader(_split(), 16, device="cpu", train=True, seed=seed, strong=strong, **stats, **kw)


def _epoch(loader, epoch, start=0):
    loader.set_epoch(epoch, start_batch=start)
    return list(loader)


def test_the_strong_view_is_a_function_of_seed_and_epoch_and_differs_from_the_weak_one():
    a, b = _loader(), _loader()
    e0, again = _epoch(a, 0), _epoch(b, 0)
    assert len(e0) == 3 and all(x.strong.shape == x.images.shape for x in e0)
    for x, y in zip(e0, again):  # the same (seed, epoch): the same images, bit for bit
        assert torch.equal(x.strong, y.strong) and torch.equal(x.images, y.images)
    # a resume inside the epoch (from batch 1) sees the same strong views of the remaining positions
    for x, y in zip(e0[1:], _epoch(b, 0, start=1)):
        assert torch.equal(x.strong, y.strong)
    # another epoch or another seed: other views
    assert not torch.equal(e0[0].strong, _epoch(a, 1)[0].strong)
    assert not torch.equal(e0[0].strong, _epoch(_loader(seed=4), 0)[0].strong)
    # different from the weak view of the same images, and the weak plan is the one without a strong view
    for x, plain in zip(e0, _epoch(_loader(strong=False), 0)):
        assert torch.equal(x.images, plain.images) and plain.strong is None
        differs = (x.strong - x.images).abs().flatten(1).amax(dim=1) > 1e-3
        assert differs.all()
    # evaluation batches carry no strong view
    test = DeviceLoader(_split(), 16, device="cpu", train=False, mean=(0.5,) * 3, std=(0.25,) * 3, flip=True)
    assert next(iter(test)).strong is None


def test_the_pil_pipeline_yields_the_strong_view_too(tiny_cifar):
    def epoch(start=0):
        torch.manual_seed(7)  # with num_workers=0 the crops draw from torch's global generator
        data = build_data(
            "cifar100", str(tiny_cifar), batch_size=48, device="cpu", seed=0, num_workers=0, pipeline="pil",
            strong_view=True,
        )  # fmt: skip
        data.train.set_epoch(2, start_batch=start)
        return list(data.train), data

    first, data = epoch()
    second, _ = epoch()
    assert (
        [b.strong.shape for b in first] == [b.images.shape for b in first] == [(48, 3, 32, 32)] * 2 + [(32, 3, 32, 32)]
    )
    assert all(torch.equal(a.strong, b.strong) for a, b in zip(first, second))
    assert all((a.strong - a.images).abs().amax() > 1e-3 for a in first)
    assert next(iter(data.test)).strong is None
    # without random crops, a resume inside the epoch gets the same strong views of the remaining positions
    stats = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    plain = T.Compose([T.ToTensor(), T.Normalize(**stats)])
    loader = TorchLoader(
        ArrayImageDataset(_split(), TwoCrops(plain)), 16, train=True, device="cpu", seed=3, num_workers=0,
        strong=(stats["mean"], stats["std"]),
    )  # fmt: skip
    whole = _epoch(loader, 1)
    assert len(whole) == 3 and all(torch.equal(a.strong, b.strong) for a, b in zip(whole[1:], _epoch(loader, 1, 1)))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("pipeline", ["device", "pil"])
def test_demo_preset_trains_two_epochs_with_a_falling_loss(pipeline, tmp_path, teacher_ckpt):
    over = ["train.epochs=2", "train.device=cpu", f"model.teacher_checkpoint={teacher_ckpt}", *SMALL]
    over += [f"data.pipeline={pipeline}", "data.num_workers=0"]
    train(resolve("demo/mlkd", over), tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    losses = [float(r["train_loss"]) for r in rows]
    assert all(map(math.isfinite, losses)) and losses[1] < 0.8 * losses[0], losses
    for row in rows:  # the logged parts are MLKD's and sum to the loss
        parts = [float(row[f"loss_{p}"]) for p in ("ce", "kd_weak", "kd_strong", "cc", "bc")]
        assert sum(parts) == pytest.approx(float(row["train_loss"]), rel=1e-4)


def test_a_crash_inside_an_epoch_then_resume_is_exact(tmp_path, teacher_ckpt, tiny_cifar):
    """Killed after step 5 (inside epoch 2; its position saved after step 4, the epoch's first): the
    resumed run, whose strong views continue from the saved position, ends with the uninterrupted
    run's state."""
    over = [
        "data.name=cifar100", f"data.path={tiny_cifar}", "train.batch_size=48", "train.epochs=3",
        f"model.teacher_checkpoint={teacher_ckpt}", "train.checkpoint_every_steps=1",
    ]  # fmt: skip
    train(resolve("demo/mlkd", over), tmp_path / "ref")
    out = tmp_path / "crashed"
    args = ["train", "demo/mlkd", *over, "--out", str(out), "--resume"]
    crashed = run_rld(*args, fault="after_step:5")
    assert crashed.returncode == FAULT_EXIT_STATUS, crashed.stderr[-2000:]
    assert load_last(out)["epoch"] == 1 and (out / "checkpoints" / "step.pt").is_file()
    assert main(args) == 0
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(out))
    assert metric_rows(tmp_path / "ref" / "metrics.csv") == metric_rows(out / "metrics.csv")


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "setting,message",
    [
        (
            "train.teacher_cache=lazy",
            "method 'mlkd' trains on a strongly augmented view drawn afresh every step, which the teacher-logit "
            "cache cannot hold: set train.teacher_cache=off",
        ),
        ("train.teacher_cache=full", "which the teacher-logit cache cannot hold"),
        (
            "train.static_step=on",
            "train.static_step=on cannot run a method that trains on a strongly augmented view (MLKD, CRLD)",
        ),
    ],
)
def test_refusals_are_one_line(setting, message, tmp_path, teacher_ckpt, capsys):
    args = ["train", "demo/mlkd", setting, *SMALL, f"model.teacher_checkpoint={teacher_ckpt}"]
    code = main([*args, "train.device=cpu", "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err.strip(), message)
    assert not (tmp_path / "run").exists()


def test_a_sweep_never_groups_mlkd_with_a_method_without_the_strong_view():
    kd, dkd, mlkd = (resolve(f"demo/{m}") for m in ("kd", "dkd", "mlkd"))
    assert stream_signature(kd) == stream_signature(dkd) != stream_signature(mlkd)
    assert get_spec("mlkd").views == ("weak", "strong") and get_spec("kd").views == ("weak",)


# ----------------------------------------------------------------------------- presets and table


def test_presets_are_listed_with_the_published_protocols(capsys):
    expected = {"demo/mlkd", *(f"cifar100/{p}/mlkd" for p in CIFAR_PROTOCOL)}
    expected |= {f"imagenet/{p}/mlkd" for p in IMAGENET_PROTOCOL}
    assert expected <= set(list_presets())
    assert main(["presets", "mlkd"]) == 0
    assert expected <= set(capsys.readouterr().out.split())
    for pair, (epochs, lr) in CIFAR_PROTOCOL.items():
        cfg = resolve(f"cifar100/{pair}/mlkd")
        t = cfg.train
        assert (t.epochs, t.lr, t.batch_size, t.lr_milestones, t.weight_decay) == (
            epochs,
            lr,
            64,
            [150, 180, 210],
            5e-4,
        )
        # mdistiller/engine/cfg.py: KD.TEMPERATURE 4, CE_WEIGHT 0.1, KD_WEIGHT 0.9
        assert method_params(cfg.method) == {
            "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "percentile": 50.0, "logit_standardization": False,
        }  # fmt: skip
    for pair, lr in IMAGENET_PROTOCOL.items():
        cfg = resolve(f"imagenet/{pair}/mlkd")
        assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.train.lr_step) == (100, lr, 512, 30)
        assert (cfg.method.temperature, cfg.method.ce_weight, cfg.method.kd_weight) == (1.0, 0.5, 0.5)
    demo = resolve("demo/mlkd")
    assert (demo.model.teacher, demo.model.student, demo.data.name, demo.train.epochs) == (
        "resnet20",
        "resnet8",
        "digits",
        10,
    )


def test_table_extra_marks_mlkd_as_a_different_protocol(tmp_path):
    plan = plan_table("table_extra", tmp_path, seeds=[0], pairs=["resnet56-resnet20"], methods=["mlkd"])
    (run,) = [r for r in plan.runs if r.method == "mlkd"]
    assert run.name == "cifar100/resnet56-resnet20/mlkd/seed0" and run.config().train.lr == 0.025
    markdown = to_markdown(collect(plan))
    assert "| Newer logit | MLKD (different protocol) | — |" in markdown
    assert "MLKD: different protocol (its own strong augmentation, RandAugment and Cutout" in markdown
