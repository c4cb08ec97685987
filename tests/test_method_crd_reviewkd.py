"""CRD and ReviewKD: the methods against independent recomputations from the pure losses, the
published per-model values, the sampler of negatives, exact resume (memory banks, Z and the RNG
included), the static step, and the presets."""

from __future__ import annotations

import math
import signal

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_run_state, load_last, metric_rows, rld_processes
from rld.cli import main
from rld.config import list_presets, resolve, resolve_with_flags
from rld.engine.distributed import World
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.engine.loop import Member
from rld.engine.static import StaticSteps
from rld.engine.syncs import HostSyncCounter
from rld.engine.teacher import build_teacher_fn
from rld.engine.trainer import Run, build_run_data, method_inputs, prepare_out_dir
from rld.errors import UserError
from rld.experiments.tables import TABLE2_PAIRS, TABLE3_PAIRS, TABLE4_PAIRS
from rld.losses import crd_nce_loss, crd_scores, hcl_loss, value_checks
from rld.methods import MethodContext, build_method, get_spec
from rld.methods.base import probe_features
from rld.methods.reviewkd import review_layout
from rld.models import create_model
from rld.models.features import Features

# The demo presets on 200 training images (20 per class) at 16x16, batch 32: 7 steps per epoch,
# the last one a partial batch of 8.
SMALL = ["data.image_size=16", "data.train_per_class=20", "train.batch_size=32"]
CIFAR_PAIRS = [*TABLE2_PAIRS, *TABLE3_PAIRS]  # the 14 CIFAR-100 pairs of the paper
IMAGENET_PAIRS = list(TABLE4_PAIRS)


def _context(labels: torch.Tensor, num_classes: int, student: str = "resnet8", teacher: str = "resnet8"):
    return MethodContext(
        student=create_model(student, num_classes=num_classes),
        teacher=create_model(teacher, num_classes=num_classes),
        num_classes=num_classes,
        input_shape=(3, 16, 16),
        num_samples=len(labels),
        train_targets=labels,
        seed=0,
    )


def _pooled_features(batch: int, dim: int, num_classes: int) -> Features:
    return Features(logits=torch.randn(batch, num_classes), feats=[], preact_feats=[], pooled=torch.randn(batch, dim))


# ----------------------------------------------------------------------------- CRD


def test_crd_negatives_are_uniform_draws_from_the_other_classes():
    torch.manual_seed(0)
    sizes = (5, 15, 20)  # unequal classes, shuffled so that no class is a contiguous block
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])[torch.randperm(sum(sizes))]
    crd = build_method({"name": "crd", "nce_k": 6000, "feat_dim": 8}, _context(labels, 3))
    assert get_spec("crd").uses_rng
    index = torch.tensor([0, 7, 19, 33, 39])
    target = labels[index]
    torch.manual_seed(1)
    contrast = crd.contrast_indices(index, target)
    assert contrast.shape == (5, 6001) and contrast.dtype == torch.int64
    assert torch.equal(contrast[:, 0], index)  # the positive: the sample itself
    assert (labels[contrast[:, 1:]] != target[:, None]).all()  # negatives: other classes only
    for row, y in zip(contrast[:, 1:], target):
        others = (labels != y).nonzero().flatten()
        counts = torch.bincount(row, minlength=len(labels))[others].double()
        expected = 6000 / len(others)  # uniform over every sample of the other classes
        assert counts.sum() == 6000 and counts.min() > 0.6 * expected and counts.max() < 1.4 * expected
    torch.manual_seed(1)  # drawn from the global generator: the same state, the same draws
    assert torch.equal(crd.contrast_indices(index, target), contrast)


def _crd_reference(crd, memory_s, memory_t, s: Features, t: Features, target, contrast, z=None):
    """CRD's total from the pure functions, in float64: embeddings, gathers from the memories as they
    were before the step, scores, Z (estimated when not given), the two NCE terms, CE."""
    d = torch.float64

    def embed(e, x):
        return F.normalize(x.to(d) @ e.linear.weight.detach().to(d).t() + e.linear.bias.detach().to(d), dim=1)

    v_s, v_t = embed(crd.embed_s, s.pooled), embed(crd.embed_t, t.pooled)
    scores_s = crd_scores(v_s, memory_t.to(d)[contrast], 0.07)  # student against the teacher's memory
    scores_t = crd_scores(v_t, memory_s.to(d)[contrast], 0.07)
    n = memory_s.shape[0]
    if z is None:
        z = (scores_s.mean() * n, scores_t.mean() * n)
    nce = crd_nce_loss(scores_s / z[0], n) + crd_nce_loss(scores_t / z[1], n)
    ce = F.cross_entropy(s.logits.to(d), target)
    return ce + 0.8 * nce, z, (v_s, v_t)


def _published_update(memory: torch.Tensor, v: torch.Tensor, index, momentum: float) -> torch.Tensor:
    """crd/memory.py: rows ← momentum·row + (1 − momentum)·v, divided by their L2 norm."""
    rows = memory[index].double() * momentum + v * (1 - momentum)
    expected = memory.double().clone()
    expected[index] = rows / rows.pow(2).sum(dim=1, keepdim=True).sqrt()
    return expected


def test_crd_step_equals_the_pure_functions_and_updates_the_memory_as_published(monkeypatch):
    torch.manual_seed(0)
    labels = torch.arange(30) % 3
    assert get_spec("crd").params == {
        "ce_weight": 1.0,
        "feat_weight": 0.8,
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_momentum": 0.5,
    }
    crd = build_method({"name": "crd", "nce_k": 50, "feat_dim": 16, "nce_momentum": 0.7}, _context(labels, 3))
    bound = 1 / math.sqrt(16 / 3)  # the published initialisation: uniform in ±1/sqrt(dim/3)
    for memory in (crd.memory_s, crd.memory_t):
        assert memory.shape == (30, 16) and memory.abs().max() <= bound
        assert memory.min() < -0.9 * bound and memory.max() > 0.9 * bound and abs(memory.mean()) < 0.05 * bound
    assert not torch.equal(crd.memory_s, crd.memory_t) and (crd.z < 0).all()
    drawn = []
    draw = crd.contrast_indices
    monkeypatch.setattr(crd, "contrast_indices", lambda i, y: drawn.append(draw(i, y)) or drawn[-1])
    z_first = None
    for step, index in enumerate((torch.tensor([3, 14, 0, 27, 8, 22]), torch.tensor([1, 5, 9, 13, 17, 21]))):
        s, t = _pooled_features(6, 64, 3), _pooled_features(6, 64, 3)
        target = labels[index]
        before = (crd.memory_s.clone(), crd.memory_t.clone())
        total, parts = crd(s, t, target, 1, index)
        expected, z, (v_s, v_t) = _crd_reference(crd, *before, s, t, target, drawn[-1], z_first)
        assert set(parts) == {"ce", "crd"} and parts["ce"] + parts["crd"] == total
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
        if step == 0:  # Z set once, on the first batch, as the published memory does
            z_first = z
            assert crd.z.tolist() == pytest.approx([z[0].item(), z[1].item()], rel=1e-5)
            z_kept = crd.z.clone()
        else:  # then kept, whatever the batch
            assert torch.equal(crd.z, z_kept)
            assert _crd_reference(crd, *before, s, t, target, drawn[-1])[1][0] != pytest.approx(z_first[0].item())
        for memory, old, v in ((crd.memory_s, before[0], v_s), (crd.memory_t, before[1], v_t)):
            torch.testing.assert_close(memory.double(), _published_update(old, v, index, 0.7), rtol=1e-6, atol=1e-7)
            untouched = torch.ones(30, dtype=torch.bool)
            untouched[index] = False
            assert torch.equal(memory[untouched], old[untouched])
        total.backward()
        assert crd.embed_s.linear.weight.grad is not None and crd.embed_t.linear.weight.grad is not None
    assert {k for k, _ in crd.named_buffers()} >= {"memory_s", "memory_t", "z"}
    assert set(crd.state_dict()) == {
        "memory_s",
        "memory_t",
        "z",
        *(f"embed_{w}.linear.{p}" for w in "st" for p in ("weight", "bias")),
    }


def test_crd_refuses_a_batch_without_indices_and_a_data_set_without_labels():
    labels = torch.arange(12) % 3
    crd = build_method({"name": "crd", "nce_k": 8}, _context(labels, 3))
    s, t = _pooled_features(4, 64, 3), _pooled_features(4, 64, 3)
    with pytest.raises(ValueError, match="crd needs each sample's index in the training set"):
        crd(s, t, labels[:4], 1, None)
    unlabelled = _context(labels, 3)
    unlabelled.train_targets = None
    with pytest.raises(UserError, match="method 'crd': .* needs the training labels"):
        build_method({"name": "crd"}, unlabelled)
    with pytest.raises(UserError, match="every training sample has the same label"):
        build_method({"name": "crd"}, _context(torch.zeros(6, dtype=torch.int64), 3))
    with pytest.raises(UserError, match="nce_momentum must be in"):
        resolve("demo/crd", ["method.nce_momentum=1"])


# ----------------------------------------------------------------------------- ReviewKD

# mdistiller's per-model values (SHAPES and OUT_SHAPES deepest first, IN_CHANNELS and OUT_CHANNELS
# shallowest first), which rld derives from the models' features.
PUBLISHED_LAYOUTS = {
    # mdistiller mdistiller/engine/cfg.py, REVIEWKD defaults (its configs/cifar100/reviewkd.yaml is this pair)
    ("resnet32x4", "resnet8x4"): ([1, 8, 16, 32], [1, 8, 16, 32], [64, 128, 256, 256], [64, 128, 256, 256]),
    # dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py, build_review_kd ('wrn', r = 2); the same in
    # ZaberKo/GDKD configs/cifar100/reviewkd/wrn40_2_wrn_16_2.yaml (an mdistiller fork)
    ("wrn_40_2", "wrn_16_2"): ([1, 8, 16, 32], [1, 8, 16, 32], [32, 64, 128, 128], [32, 64, 128, 128]),
    # build_review_kd 'vgg'; GDKD configs/cifar100/reviewkd/vgg13_vgg8.yaml
    ("vgg13", "vgg8"): ([1, 4, 4, 8, 16], [1, 4, 4, 8, 16], [128, 256, 512, 512, 512], [128, 256, 512, 512, 512]),
    # build_review_kd 'shufflev2'; GDKD configs/cifar100/reviewkd/res32x4_shuv2.yaml
    ("resnet32x4", "ShuffleV2"): ([1, 4, 8, 16], [1, 8, 16, 32], [116, 232, 464, 1024], [64, 128, 256, 256]),
    # build_review_kd 'shufflev1'; GDKD res32x4_shuv1.yaml, wrn40_2_shuv1.yaml
    ("resnet32x4", "ShuffleV1"): ([1, 4, 8, 16], [1, 8, 16, 32], [240, 480, 960, 960], [64, 128, 256, 256]),
    ("wrn_40_2", "ShuffleV1"): ([1, 4, 8, 16], [1, 8, 16, 32], [240, 480, 960, 960], [32, 64, 128, 128]),
    # build_review_kd 'wrn' (r = 1, the teacher's out_channels fixed to wrn_40_2's); GDKD wrn40_2_wrn_40_1.yaml
    ("wrn_40_2", "wrn_40_1"): ([1, 8, 16, 32], [1, 8, 16, 32], [16, 32, 64, 64], [32, 64, 128, 128]),
    # GDKD res56_res20.yaml, res110_res32.yaml (build_review_kd 'resnet')
    ("resnet56", "resnet20"): ([1, 8, 16, 32], [1, 8, 16, 32], [16, 32, 64, 64], [16, 32, 64, 64]),
    ("resnet110", "resnet32"): ([1, 8, 16, 32], [1, 8, 16, 32], [16, 32, 64, 64], [16, 32, 64, 64]),
    # build_review_kd 'mobile' (vgg and ResNet50 teachers); GDKD vgg13_mv2.yaml, res50_mv2.yaml
    ("vgg13", "MobileNetV2"): ([1, 2, 4, 8, 16], [1, 4, 4, 8, 16], [12, 16, 48, 160, 1280], [128, 256, 512, 512, 512]),
    ("ResNet50", "MobileNetV2"): (
        [1, 2, 4, 8, 16],
        [1, 4, 8, 16, 32],
        [12, 16, 48, 160, 1280],
        [256, 512, 1024, 2048, 2048],
    ),
}


def _as_published(layout):
    return (
        [h for h, _ in reversed(layout.shapes)],
        [h for h, _ in reversed(layout.out_shapes)],
        list(layout.in_channels),
        list(layout.out_channels),
    )


@pytest.mark.parametrize("pair", list(PUBLISHED_LAYOUTS), ids="-".join)
def test_reviewkd_layout_derived_from_the_models_equals_the_published_one(pair):
    teacher, student = (create_model(name, num_classes=100) for name in pair)
    layout = review_layout(probe_features(student, (3, 32, 32), 1), probe_features(teacher, (3, 32, 32), 1))
    assert all(h == w for h, w in (*layout.shapes, *layout.out_shapes))  # square maps, as the configs write them
    assert _as_published(layout) == PUBLISHED_LAYOUTS[pair]
    assert layout.mid_channels == min(512, layout.in_channels[-1])  # mdistiller ReviewKD.__init__


def test_reviewkd_layout_on_imagenet_equals_the_published_configs():
    models = {n: create_model(n, num_classes=1000, dataset="imagenet") for n in ("ResNet18", "ResNet34", "MobileNetV1")}
    models["ResNet50"] = create_model("ResNet50", num_classes=1000, dataset="imagenet")
    f = {n: probe_features(m, (3, 224, 224), 1) for n, m in models.items()}
    # mdistiller configs/imagenet/r34_r18/reviewkd.yaml (STU_PREACT True)
    r18 = review_layout(f["ResNet18"], f["ResNet34"], stu_preact=True)
    channels = [64, 128, 256, 512, 512]
    assert _as_published(r18) == ([1, 7, 14, 28, 56], [1, 7, 14, 28, 56], channels, channels)
    assert r18.mid_channels == 512
    # configs/imagenet/r50_mv1/reviewkd.yaml (MAX_MID_CHANNEL 256, ReviewKD ImageNet/models/reviewkd.py)
    mv1 = review_layout(f["MobileNetV1"], f["ResNet50"], stu_preact=True, max_mid_channels=256)
    assert _as_published(mv1) == (
        [1, 7, 14, 28, 56],
        [1, 7, 14, 28, 56],
        [128, 256, 512, 1024, 1024],
        [256, 512, 1024, 2048, 2048],
    )
    assert mv1.mid_channels == 256
    for pair, max_mid in (("ResNet34-ResNet18", 512), ("ResNet50-MobileNetV1", 256)):
        m = resolve(f"imagenet/{pair}/reviewkd").method
        assert (m.stu_preact, m.warmup_epochs, m.max_mid_channels) == (True, 1.0, max_mid)


def _bn(x, bn):
    return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)


def _abf(abf, x, residual, out_size):
    """The published ABF.forward written with functional operations and the module's weights."""
    x = _bn(F.conv2d(x, abf.conv1[0].weight), abf.conv1[1])
    if residual is not None:
        residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
        att = torch.sigmoid(F.conv2d(torch.cat([x, residual], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
        x = x * att[:, 0:1] + residual * att[:, 1:2]
    if x.shape[-2:] != out_size:
        x = F.interpolate(x, size=out_size, mode="nearest")
    return _bn(F.conv2d(x, abf.conv2[0].weight, padding=1), abf.conv2[1]), x


# At 16x16 inputs. vgg8 -> resnet20: 5 student levels against 4 (the deepest 4 are paired), fused
# maps enlarged to the teacher's sizes. resnet8 -> ShuffleV2 (student pre-activation): fused maps
# shrunk to the teacher's, then the residual enlarged to the next student level.
REVIEW_CASES = {
    ("vgg8", "resnet20", False): (
        ((256, 512, 512, 512), (16, 32, 64, 64), 512),
        (((4, 4), (2, 2), (2, 2), (1, 1)), ((16, 16), (8, 8), (4, 4), (1, 1))),
    ),
    ("resnet8", "ShuffleV2", True): (
        ((16, 32, 64, 64), (116, 232, 464, 1024), 64),
        (((16, 16), (8, 8), (4, 4), (1, 1)), ((8, 8), (4, 4), (2, 2), (1, 1))),
    ),
}


@pytest.mark.parametrize("case", list(REVIEW_CASES), ids=lambda c: f"{c[0]}-from-{c[1]}")
def test_reviewkd_total_equals_the_abf_chain_and_hcl_with_its_warmup(case):
    student_name, teacher_name, preact = case
    torch.manual_seed(0)
    ctx = _context(torch.arange(10), 10, student=student_name, teacher=teacher_name)
    method = build_method({"name": "reviewkd", "feat_weight": 5.0, "stu_preact": preact}, ctx)
    lay = method.layout
    channels, sizes = REVIEW_CASES[case]
    assert ((lay.in_channels, lay.out_channels, lay.mid_channels), (lay.shapes, lay.out_shapes)) == (channels, sizes)
    x = torch.randn(6, 3, 16, 16)
    s = ctx.student.forward_features(x)
    with torch.no_grad():
        t = ctx.teacher.forward_features(x)
    target = torch.randint(0, 10, (6,))
    student_levels = [*(s.preact_feats if preact else s.feats)[1:], s.pooled[:, :, None, None]][-4:]
    teacher_levels = [*t.preact_feats[1:], t.pooled[:, :, None, None]][-4:]
    with torch.no_grad():
        out, residual = _abf(method.abfs[3], student_levels[3], None, (1, 1))
        fused = [out]
        for i in (2, 1, 0):
            out, residual = _abf(method.abfs[i], student_levels[i], residual, teacher_levels[i].shape[-2:])
            fused.insert(0, out)
        hcl = hcl_loss(fused, teacher_levels)
        ce = F.cross_entropy(s.logits, target)
    for epoch, factor in ((5, 0.25), (torch.tensor(30.0), 1.0), (torch.tensor(2.0), 0.1)):
        total, parts = method(s, t, target, epoch, None)
        assert set(parts) == {"ce", "review"} and parts["ce"] + parts["review"] == total
        assert parts["review"].item() == pytest.approx(5.0 * factor * hcl.item(), rel=1e-5)
        assert total.item() == pytest.approx(ce.item() + 5.0 * factor * hcl.item(), rel=1e-5)
    total.backward()
    assert all(p.grad is not None for p in method.abfs.parameters())


def test_reviewkd_refuses_models_without_stage_features():
    pytest.importorskip("torchvision")
    ctx = _context(torch.arange(10), 10)
    ctx.student = create_model("torchvision:resnet18", num_classes=10)
    with pytest.raises(
        UserError, match=r"ReviewKD reads the student's stage features .* 'torchvision:resnet18' has none"
    ):
        build_method({"name": "reviewkd"}, ctx)
    ctx = _context(torch.arange(10), 10)
    ctx.teacher = create_model("torchvision:resnet18", num_classes=10)
    with pytest.raises(UserError, match=r"ReviewKD reads the teacher's stage features \(Features.preact_feats\)"):
        build_method({"name": "reviewkd", "stu_preact": True}, ctx)


def test_epochs_flag_scales_the_reviewkd_warmup():
    cfg = resolve_with_flags("cifar100/resnet32x4-resnet8x4/reviewkd", [], epochs=24)
    assert (cfg.train.epochs, cfg.method.warmup_epochs, cfg.train.lr_milestones) == (24, 2.0, [15, 18, 21])
    kept = resolve_with_flags("cifar100/resnet32x4-resnet8x4/reviewkd", ["method.warmup_epochs=10"], epochs=24)
    assert kept.method.warmup_epochs == 10.0
    assert resolve_with_flags("demo/reviewkd", [], epochs=2).method.warmup_epochs == pytest.approx(0.6)


# ----------------------------------------------------------------------------- training


def _small(method: str, teacher_ckpt):
    return resolve_with_flags(f"demo/{method}", [*SMALL, f"model.teacher_checkpoint={teacher_ckpt}"], epochs=2)


@pytest.mark.parametrize("method", ["crd", "reviewkd"])
def test_a_step_reads_nothing_on_the_host(method, teacher_ckpt, tmp_path):
    """Plain and static steps (the epoch as a device scalar) without a host synchronisation."""
    cfg = _small(method, teacher_ckpt)
    cpu = torch.device("cpu")
    data = build_run_data(cfg, cpu, World())
    teacher_fn = build_teacher_fn(cfg, data.num_classes, cpu)
    prepare_out_dir(tmp_path / "r", resume=False)
    run = Run(
        cfg,
        tmp_path / "r",
        world=World(),
        device=cpu,
        num_classes=10,
        resume_from=None,
        resume=False,
        **method_inputs(cfg, data, teacher_fn),
    )
    batch = next(iter(data.train))
    run.begin_epoch(1)
    static = StaticSteps([Member(run)], data.train, teacher_fn, capture=False)
    static.start_epoch(1)
    with value_checks(False), HostSyncCounter(fail=True):
        run.step(batch, teacher_fn(batch, features=True), 1)
        static.step(32)
    assert run.steps == 2


def _train_args(method: str, teacher_ckpt, out, *extra: str) -> list[str]:
    return [
        "train",
        f"demo/{method}",
        *SMALL,
        "--epochs",
        "2",
        "--teacher",
        str(teacher_ckpt),
        "--out",
        str(out),
        *extra,
    ]


# run -> (method, the test that reads it, RLD_FAULT): killed after step 9 (inside epoch 2, 7 steps per
# epoch), or preempted there (SIGTERM: the position inside the epoch is saved as step.pt)
KILLED_RUNS = {
    "crd": ("crd", "test_crd_trains_resumes_exactly_and", "after_step:9"),
    "crd-preempted": ("crd", "test_crd_trains_resumes_exactly_and", "sigterm_after_step:9"),
    "reviewkd": ("reviewkd", "test_reviewkd_trains_with_a_falling", "after_step:9"),
}


@pytest.fixture(scope="module")
def killed_runs(request, tmp_path_factory, teacher_ckpt):
    """The demo runs of :data:`KILLED_RUNS` stopped by their RLD_FAULT, in processes started together
    for the selected tests (most of a process's time is its imports)."""
    root = tmp_path_factory.mktemp("killed")
    names = {item.originalname for item in request.session.items}
    jobs = {
        run: (_train_args(method, teacher_ckpt, root / run), fault)
        for run, (method, test, fault) in KILLED_RUNS.items()
        if any(name.startswith(test) for name in names)
    }
    with rld_processes(root, jobs) as procs:
        yield root, procs


def _assert_killed_run_resumes_exactly(run: str, teacher_ckpt, killed_runs, ref) -> None:
    root, procs = killed_runs
    proc, _ = procs[run]
    preempted = KILLED_RUNS[run][2].startswith("sigterm")
    expected = 128 + signal.SIGTERM if preempted else FAULT_EXIT_STATUS
    assert proc.wait(timeout=300) == expected, (root / f"{run}.log").read_text()[-2000:]
    out = root / run
    assert load_last(out)["epoch"] == 1
    if preempted:  # saved after step 2 of epoch 2
        position = torch.load(out / "checkpoints" / "step.pt", weights_only=True)["position"]
        assert (position["epoch"], position["step"]) == (2, 2)
    assert main([*_train_args(KILLED_RUNS[run][0], teacher_ckpt, out), "--resume"]) == 0
    assert metric_rows(ref / "metrics.csv") == metric_rows(out / "metrics.csv")
    assert_same_run_state(load_last(ref), load_last(out))


def test_crd_trains_resumes_exactly_and_its_static_step_equals_the_plain_loop(tmp_path, teacher_ckpt, killed_runs):
    """demo/crd for 2 epochs. Its NCE term rises while the memory banks, random at first, fill with
    the networks' embeddings (the published memory does the same; it falls once the embeddings
    separate the classes, after a few epochs of the demo): here the CE part falls, the NCE term
    stays finite. A run killed inside epoch 2 (resumed from epoch 1) and one preempted there (resumed
    from that step) end bit-identical (memories, Z, RNG); the static step trains as the plain loop."""
    ref = tmp_path / "ref"
    assert main(_train_args("crd", teacher_ckpt, ref)) == 0
    assert resolve_with_flags("demo/crd", [], epochs=2).method.nce_k == 256
    rows = metric_rows(ref / "metrics.csv")
    assert [int(r["steps"]) for r in rows] == [7, 7]
    assert float(rows[1]["loss_ce"]) < float(rows[0]["loss_ce"])
    assert all(math.isfinite(float(r["loss_crd"])) and float(r["loss_crd"]) > 0 for r in rows)
    state = load_last(ref)["method"]
    assert (state["z"] > 0).all() and state["memory_s"].shape == (200, 128)
    torch.testing.assert_close(state["memory_s"].norm(dim=1), torch.ones(200))  # every row updated: unit length

    _assert_killed_run_resumes_exactly("crd", teacher_ckpt, killed_runs, ref)
    _assert_killed_run_resumes_exactly("crd-preempted", teacher_ckpt, killed_runs, ref)  # from step.pt

    static = tmp_path / "static"
    assert main(_train_args("crd", teacher_ckpt, static, "train.static_step=on")) == 0
    assert metric_rows(ref / "metrics.csv") == metric_rows(static / "metrics.csv")
    assert_same_run_state(load_last(ref), load_last(static), ignore_config=("train.static_step",))


def test_reviewkd_trains_with_a_falling_loss_and_resumes_exactly(tmp_path, teacher_ckpt, killed_runs):
    ref = tmp_path / "ref"
    assert main(_train_args("reviewkd", teacher_ckpt, ref)) == 0
    rows = metric_rows(ref / "metrics.csv")
    assert 0 < float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert 0 < float(rows[1]["loss_review"]) < float(rows[0]["loss_review"])
    _assert_killed_run_resumes_exactly("reviewkd", teacher_ckpt, killed_runs, ref)


# ----------------------------------------------------------------------------- presets


def test_presets_list_every_pair_and_resolve(capsys):
    assert main(["presets"]) == 0
    listed = set(capsys.readouterr().out.split())
    for method in ("crd", "reviewkd"):
        names = {f"cifar100/{p}/{method}" for p in CIFAR_PAIRS} | {f"imagenet/{p}/{method}" for p in IMAGENET_PAIRS}
        assert names | {f"demo/{method}"} <= listed
        assert {n for n in list_presets() if n.endswith(f"/{method}")} == names | {f"demo/{method}"}
        for name in sorted(names | {f"demo/{method}"}):
            resolve(name)
    crd = resolve("cifar100/resnet32x4-ShuffleV2/crd")
    assert (crd.method.feat_weight, crd.method.nce_k, crd.method.nce_t, crd.train.lr) == (0.8, 16384, 0.07, 0.01)
    assert resolve("cifar100/vgg13-vgg8/crd").train.lr == 0.05
    weights = {p: resolve(f"cifar100/{p}/reviewkd").method.feat_weight for p in CIFAR_PAIRS}
    assert weights["resnet32x4-resnet8x4"] == 5.0 and weights["resnet32x4-ShuffleV2"] == 8.0
    assert (weights["resnet56-resnet20"], weights["resnet110-resnet32"]) == (0.6, 1.0)
    for pair in IMAGENET_PAIRS:
        for method in ("crd", "reviewkd"):
            c = resolve(f"imagenet/{pair}/{method}")
            assert (c.train.batch_size, c.train.lr, c.train.epochs, c.train.lr_step) == (256, 0.1, 100, 30)
    assert resolve("imagenet/ResNet50-MobileNetV1/reviewkd").method.feat_weight == 8.0
    assert resolve("imagenet/ResNet34-ResNet18/reviewkd").method.feat_weight == 1.0
