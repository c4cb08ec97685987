"""DIST, NKD and WTTM as registered methods: presets with the published values, training, the step's
loss against a float64 reference, logit standardization (refused), and ``rld reproduce table_extra``."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import torch

from conftest import assert_user_error
from rld.cli import main
from rld.config import key_help, list_presets, resolve
from rld.engine import train
from rld.engine.trainer import StudentAndMethod
from rld.errors import UserError
from rld.experiments import collect, plan_table, to_markdown
from rld.experiments.tables import SDD_ROWS, TABLE2_PAIRS, TABLE3_PAIRS, TABLE4_PAIRS
from rld.losses import DISTLoss, NKDLoss, WTTMLoss
from rld.methods import build_method, get_spec, ls_adjustments, method_params
from rld.models import create_model

NEWER = ("dist", "nkd", "wttm")
CIFAR_PAIRS = [*TABLE2_PAIRS, *TABLE3_PAIRS]  # the 14 CIFAR-100 pairs of the paper
IMAGENET_PAIRS = list(TABLE4_PAIRS)

# The published settings, written out independently of the method files.
CIFAR100 = {
    # hunto/image_classification_sota configs/strategies/distill/dist_cifar.yaml: ori_loss_weight 1,
    # kd_loss_weight 2, kd: dist_t4 -> DIST(beta=1, gamma=1, tau=4); one config for every pair
    "dist": {"beta": 1.0, "gamma": 1.0, "temperature": 4.0, "kd_weight": 2.0, "ce_weight": 1.0},
    # yzd-v/cls_KD configs/distillers/cifar100/res34_distill_res18_cifar.py: NKDLoss temp=3.0, gamma=3.5
    "nkd": {"gamma": 3.5, "temperature": 3.0, "ce_weight": 1.0},
    # zkxufo/TTM README's WTTM example (--ttm_l 0.2, weight 4; CE weight -r 1): a documented choice,
    # the paper's per-pair values being in its appendix only
    "wttm": {"gamma": 0.2, "beta": 4.0, "ce_weight": 1.0},
}
IMAGENET = {
    # hunto/image_classification_sota configs/strategies/distill/resnet_dist.yaml: kd: 'dist' -> tau 1
    "dist": {"beta": 1.0, "gamma": 1.0, "temperature": 1.0, "kd_weight": 2.0, "ce_weight": 1.0},
    # yzd-v/cls_KD configs/distillers/imagenet/res34_distill_res18_img.py, res50_distill_mv1_img.py
    "nkd": {"gamma": 1.5, "temperature": 1.0, "ce_weight": 1.0},
    "wttm": {"gamma": 0.2, "beta": 4.0, "ce_weight": 1.0},  # the same documented choice
}
LOSSES = {"dist": DISTLoss, "nkd": NKDLoss, "wttm": WTTMLoss}
PARTS = {"dist": ["ce", "inter", "intra"], "nkd": ["ce", "target", "non_target"], "wttm": ["ce", "wttm"]}


# ----------------------------------------------------------------------------- presets


def test_presets_resolve_and_are_listed(capsys):
    names = set(list_presets())
    for method in NEWER:
        expected = {
            f"demo/{method}",
            *(f"cifar100/{pair}/{method}" for pair in CIFAR_PAIRS),
            *(f"imagenet/{pair}/{method}" for pair in IMAGENET_PAIRS),
        }
        assert expected <= names
        for name in expected:
            cfg = resolve(name)
            assert cfg.method.name == method and cfg.model.teacher and cfg.model.student
        assert main(["presets", method]) == 0
        listed = set(capsys.readouterr().out.split())
        assert expected <= listed
    demo = resolve("demo/wttm")
    assert (demo.model.teacher, demo.model.student, demo.data.name) == ("resnet20", "resnet8", "digits")
    assert "dist:" in key_help()["method.gamma"] and "wttm:" in key_help()["method.gamma"]


@pytest.mark.parametrize("method", NEWER)
def test_published_values(method):
    params = {**CIFAR100[method], "logit_standardization": False}
    assert method_params(resolve(f"demo/{method}").method) == params
    for pair in CIFAR_PAIRS:  # no per-pair values published: every pair takes the defaults
        assert method_params(resolve(f"cifar100/{pair}/{method}").method) == params, pair
    for pair in IMAGENET_PAIRS:
        assert method_params(resolve(f"imagenet/{pair}/{method}").method) == {
            **IMAGENET[method],
            "logit_standardization": False,
        }
    # the registry's defaults are the CIFAR-100 ones
    assert get_spec(method).params == CIFAR100[method]
    # the published training protocols are the family's (dist_cifar.yaml: 240 epochs, lr 0.05, x0.1 at
    # 150/180/210 via a 120-epoch constant warm-up and 30-epoch steps; 0.01 for MobileNetV2/ShuffleNets)
    c = resolve(f"cifar100/resnet32x4-resnet8x4/{method}").train
    assert (c.epochs, c.batch_size, c.lr, c.lr_milestones, c.weight_decay) == (240, 64, 0.05, [150, 180, 210], 5e-4)
    assert resolve(f"cifar100/wrn_40_2-MobileNetV2/{method}").train.lr == 0.01


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("method", NEWER)
def test_demo_preset_trains_two_epochs_with_a_falling_loss(method, tmp_path, teacher_ckpt):
    # the demo preset at 16x16 on 30 images per class (10 steps an epoch), CPU
    small = ["data.image_size=16", "data.train_per_class=30", "train.batch_size=32", "data.eval_batch_size=512"]
    over = ["train.epochs=2", "train.device=cpu", f"model.teacher_checkpoint={teacher_ckpt}", *small]
    train(resolve(f"demo/{method}", over), tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    losses = [float(r["train_loss"]) for r in rows]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0], losses
    for row in rows:  # the logged parts are the method's and sum to the loss
        parts = [float(row[f"loss_{p}"]) for p in PARTS[method]]
        assert sum(parts) == pytest.approx(float(row["train_loss"]), rel=1e-4)


# ----------------------------------------------------------------------------- the step's loss


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _reference(method: str, p: dict, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The published loss in float64, written from the equations (sample by sample where it helps)."""
    s, t = s.double(), t.double()
    ce = p["ce_weight"] * torch.nn.functional.cross_entropy(s, y)
    if method == "dist":  # Huang et al. 2022, Eqs. 5-9: 1 - Pearson correlation, rows and columns
        tau = p["temperature"]
        ys, yt = torch.softmax(s / tau, 1), torch.softmax(t / tau, 1)
        inter = 1 - _pearson(ys, yt).mean()
        intra = 1 - _pearson(ys.T, yt.T).mean()
        return ce + p["kd_weight"] * tau**2 * (p["beta"] * inter + p["gamma"] * intra)
    if method == "nkd":  # Yang et al. 2023: t_y-weighted target term + gamma * tau^2 * normalized non-target CE
        tau, total = p["temperature"], torch.zeros((), dtype=torch.float64)
        for i in range(len(y)):
            k = int(y[i])
            rest = [j for j in range(s.shape[1]) if j != k]
            target = -torch.softmax(t[i], 0)[k] * torch.log_softmax(s[i], 0)[k]
            t_hat, log_s_hat = torch.softmax(t[i, rest] / tau, 0), torch.log_softmax(s[i, rest] / tau, 0)
            total = total + target - p["gamma"] * tau**2 * (t_hat * log_s_hat).sum()
        return ce + total / len(y)
    # WTTM, Zheng & Yang 2024: beta * mean U_gamma(p_t) * KL(p_t^gamma / U || softmax(s))
    powered = torch.softmax(t, 1) ** p["gamma"]
    u = powered.sum(1)
    q = powered / u[:, None]
    kl = (q * (q.log() - torch.log_softmax(s, 1))).sum(1)
    return ce + p["beta"] * (u * kl).mean()


@pytest.mark.parametrize(
    "method,overrides",
    [
        ("dist", []),
        ("dist", ["method.beta=2", "method.gamma=0.5", "method.temperature=2", "method.kd_weight=1.5"]),
        ("nkd", []),
        ("nkd", ["method.gamma=1.5", "method.temperature=1", "method.ce_weight=0.5"]),
        ("wttm", []),
        ("wttm", ["method.gamma=0.5", "method.beta=2"]),
    ],
)
def test_the_step_total_is_the_loss_module_and_the_published_equation(method, overrides):
    cfg = resolve(f"demo/{method}", overrides)
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10)
    model = StudentAndMethod(student, build_method(cfg.method), amp=False)
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    teacher = 3 * torch.randn(12, 10)
    logits, total, parts = model(x, teacher, y, torch.tensor(1.0), torch.arange(12))
    assert list(parts) == PARTS[method]
    torch.testing.assert_close(sum(parts.values()), total, rtol=0, atol=0)
    params = method_params(cfg.method)
    module_total, module_parts = LOSSES[method](**params)(logits, teacher, y)
    torch.testing.assert_close(total, module_total, rtol=0, atol=0)
    assert module_parts.keys() == parts.keys()
    reference = _reference(method, params, logits.detach(), teacher, y)
    torch.testing.assert_close(total.detach().double(), reference, rtol=1e-5, atol=1e-5)
    total.backward()  # the student is what the step trains
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_no_host_sync_in_a_step_plain_or_static(teacher_ckpt, tmp_path):
    """What a CUDA-graph step needs, proved on the CPU: the step of each method never reads the host."""
    from rld.data import build_data
    from rld.engine.distributed import World
    from rld.engine.loop import Member
    from rld.engine.static import StaticSteps
    from rld.engine.syncs import HostSyncCounter
    from rld.engine.teacher import build_teacher_fn
    from rld.engine.trainer import Run, prepare_out_dir
    from rld.losses import value_checks

    data = build_data("digits", None, batch_size=16, eval_batch_size=512, device="cpu", seed=0, image_size=16)
    batch = next(iter(data.train))
    for method in NEWER:
        cfg = resolve(f"demo/{method}", ["train.channels_last=false", f"model.teacher_checkpoint={teacher_ckpt}"])
        teacher_fn = build_teacher_fn(cfg, 10, torch.device("cpu"))
        runs = []
        for kind in ("plain", "static"):
            out = tmp_path / f"{method}-{kind}"
            prepare_out_dir(out, resume=False)
            runs.append(
                Run(cfg, out, world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None, resume=False)
            )
        plain, static_run = runs
        plain.begin_epoch(1)
        with value_checks(False), HostSyncCounter(fail=True):
            plain.step(batch, teacher_fn(batch), 1)
        static = StaticSteps([Member(static_run)], data.train, teacher_fn, capture=False)
        static_run.begin_epoch(1)
        static.start_epoch(1)
        counter = HostSyncCounter(fail=True)
        with value_checks(False), counter:
            static.step(static.batch_sizes()[0])
        assert (plain.steps, static_run.steps, counter.events) == (1, 1, []), method


# ----------------------------------------------------------------------------- logit standardization


@pytest.mark.parametrize("method", NEWER)
def test_logit_standardization_is_refused_as_the_published_code_does_not_define_it(method, capsys):
    # sunshangquan/logit-standardization-KD tools/train.py switches it on for KD, DKD and MLKD only
    assert get_spec(method).ls is None
    message = (
        f"method {method!r} with method.logit_standardization=true is not defined by the published code of logit "
        "standardization; switch it off (methods that take it: kd, dkd, rld, la, rc, ctkd"
    )
    with pytest.raises(UserError, match="switch it off") as err:
        resolve(f"demo/{method}", ["method.logit_standardization=true"])
    assert message in str(err.value) and method not in str(err.value).split("methods that take it:")[1]
    with pytest.raises(UserError, match="not defined by the published code"):
        ls_adjustments({"name": method})
    assert main(["train", f"demo/{method}", "method.logit_standardization=true", "--dry-run"]) == 2
    assert_user_error(2, capsys.readouterr().err, message)
    # off (the default, or said explicitly): the loss module gets the raw logits
    cfg = resolve(f"demo/{method}", ["method.logit_standardization=false"])
    assert method_params(cfg.method)["logit_standardization"] is False
    assert build_method(cfg.method).loss.logit_standardization is False


# ----------------------------------------------------------------------------- table_extra


def test_table_extra_dry_run_plans_the_newer_methods_beside_table3s(tmp_path, capsys):
    out, plan_file = tmp_path / "repro", tmp_path / "plan.json"
    # every run of the table, with Table 3's default seeds 0, 1, 2 (teachers: seed 0 only)
    full = plan_table("table_extra", out)
    assert full.seeds == (0, 1, 2) and len(full.runs) == 296
    distilled = [r for r in full.runs if r.roles == ["distill"]]
    methods = ["kd", "dkd", "rld", "dist", "nkd", "wttm", "mlkd", "crld", "abkd", "sd_kd", "sd_dkd", "sd_nkd", "sd_rld"]
    assert {(f"{r.teacher}-{r.student}", r.method, r.seed) for r in distilled} == set(
        itertools.product(TABLE3_PAIRS, methods, [0, 1, 2])
    )
    assert {r.seed for r in full.runs if "teacher" in r.roles} == {0}
    # the command's dry run lists the runs with their resolved parameters (one seed keeps it short)
    args = ["reproduce", "table_extra", "--dry-run", "--seeds", "0", "--json", str(plan_file), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "table_extra: 102 runs (5 teacher, 6 student, 91 distill)" in printed
    assert "cifar100/resnet56-resnet20/wttm/seed0  [gamma=0.2 beta=4.0 ce_weight=1.0]" in printed
    body = json.loads(plan_file.read_text())
    assert (body["table"], body["seeds"]) == ("table_extra", [0])
    for r in (r for r in body["runs"] if r["roles"] == ["distill"]):
        if r["method"] in NEWER:
            assert r["method_params"] == {**CIFAR100[r["method"]], "logit_standardization": False}
            assert (
                r["variant"] == r["method"] and r["preset"] == f"cifar100/{r['teacher']}-{r['student']}/{r['method']}"
            )
    cells = {(c["row"], c["column"]): c["runs"] for c in body["cells"]}
    rows = list(dict.fromkeys(row for row, _ in cells))
    assert rows == ["Teacher", "Student", "KD", "DKD", "RLD", "DIST", "NKD", "WTTM", "MLKD", "CRLD", "ABKD", *SDD_ROWS]
    columns = [column for row, column in cells if row == "MLKD"]
    labels = [pair.replace("-", " → ") for pair in TABLE3_PAIRS]
    assert columns == labels
    for method in ("wttm", "mlkd", "crld"):
        row = method.upper()
        assert all(
            cells[(row, label)] == [f"cifar100/{pair}/{method}/seed0"] for pair, label in zip(TABLE3_PAIRS, labels)
        )

    # the same runs as Table 3 for what the two tables share, with --epochs scaled the same way
    for epochs in (None, 2):
        pairs = ["vgg13-vgg8", "resnet56-resnet20"]
        extra = {r.name: r for r in plan_table("table_extra", out, epochs=epochs, pairs=pairs).runs}
        table3 = {r.name: r for r in plan_table("table3", out, epochs=epochs, pairs=pairs).runs}
        shared = {n for n, r in extra.items() if r.method in ("vanilla", "kd", "dkd", "rld")}
        assert shared == {n for n, r in table3.items() if r.method in ("vanilla", "kd", "dkd", "rld")}
        assert all(extra[n].overrides == table3[n].overrides for n in shared)
        wttm = extra["cifar100/vgg13-vgg8/wttm/seed1"]
        assert wttm.config().train.epochs == (240 if epochs is None else 2)
        assert wttm.config().train.lr_milestones == ([150, 180, 210] if epochs is None else [1, 2, 2])
        assert wttm.config().seed == 1

    # the table: rld's own runs, no paper numbers; MLKD's row marked as another protocol, and why
    markdown = to_markdown(collect(plan_table("table_extra", out, seeds=[0])))
    assert "the paper has no numbers for this table" in markdown
    assert "In brackets the paper's number" not in markdown and "(paper " not in markdown
    assert "MLKD: different protocol (its own strong augmentation" in markdown
    assert "| Newer logit | MLKD (different protocol) | — |" in markdown
    assert "| Newer logit | CRLD (different protocol) | — |" in markdown
    assert "not available" not in markdown and "feature-distillation" not in markdown
    assert [r.name for r in plan_table("table_extra", out, seeds=[0], methods=["mlkd"]).runs][-1] == (
        "cifar100/resnet110-resnet20/mlkd/seed0"
    )
    small = plan_table("table_extra", out, seeds=[0], pairs=["resnet56-resnet20"], methods=["nkd"])
    assert [r.name for r in small.runs] == ["cifar100/resnet56/vanilla/seed0", "cifar100/resnet56-resnet20/nkd/seed0"]
