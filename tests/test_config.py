"""Every rule of ``rld.config.validate`` (and ``_refuse_nonfinite``): a bad value for each, refused
with its whole message, and the values at the edge of each rule, accepted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rld.config import RunConfig, _refuse_nonfinite, resolve, validate
from rld.errors import UserError
from rld.methods.kd import KDConfig

# (overrides of demo/rld, the whole message)
REFUSED = [
    (["train.epochs=0"], "train.epochs must be > 0, got 0"),
    (["train.batch_size=0"], "train.batch_size must be > 0, got 0"),
    (["train.lr=0"], "train.lr must be > 0, got 0.0"),
    (["train.lr=inf"], "train.lr must be > 0 and finite, got inf"),
    (["train.lr=nan"], "train.lr must be > 0, got nan"),
    (["train.lr_decay=0"], "train.lr_decay must be in (0, 1], got 0.0"),
    (["train.lr_decay=1.5"], "train.lr_decay must be in (0, 1], got 1.5"),
    (["train.schedule=linear"], "train.schedule must be step or cosine, got linear"),
    (["train.warmup_epochs=-1"], "train.warmup_epochs must be >= 0 and < train.epochs, got -1.0"),
    (["train.epochs=2", "train.warmup_epochs=2"], "train.warmup_epochs must be >= 0 and < train.epochs, got 2.0"),
    (["train.optimizer=adam"], "train.optimizer must be sgd or adamw, got adam"),
    (["train.weight_decay=-1"], "train.weight_decay must be >= 0, got -1.0"),
    (["train.weight_decay=inf"], "train.weight_decay must be >= 0 and finite, got inf"),
    (["train.grad_clip_norm=0"], "train.grad_clip_norm must be > 0, got 0.0"),
    (["train.grad_clip_norm=inf"], "train.grad_clip_norm must be > 0 and finite, got inf"),
    (["train.momentum=1"], "train.momentum must be in [0, 1), got 1.0"),
    (["train.momentum=-0.1"], "train.momentum must be in [0, 1), got -0.1"),
    (["train.lr_step=0"], "train.lr_step must be > 0, got 0"),
    (["train.lr_milestones=[3,0]"], "train.lr_milestones must be positive epochs, got [3, 0]"),
    (["seed=-1"], "seed must be >= 0, got -1"),
    (["data.eval_batch_size=0"], "data.eval_batch_size must be > 0, got 0"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0, got -1"),
    (["data.val_fraction=0"], "data.val_fraction must be in (0, 1), got 0.0"),
    (["data.val_fraction=1"], "data.val_fraction must be in (0, 1), got 1.0"),
    (["data.holdout=0"], "data.holdout must be in (0, 1), got 0.0"),
    (["data.holdout=1"], "data.holdout must be in (0, 1), got 1.0"),
    (["data.holdout_seed=-1"], "data.holdout_seed must be >= 0, got -1"),
    (["data.train_per_class=0"], "data.train_per_class must be > 0, got 0"),
    (["train.teacher_cache=maybe"], "train.teacher_cache must be off, lazy or full, got maybe"),
    (["train.static_step=sometimes"], "train.static_step must be auto, on, off or require, got sometimes"),
    (["train.batch_students=x"], "train.batch_students must be auto, on or off, got x"),
    (["train.checkpoint_every_steps=-1"], "train.checkpoint_every_steps must be >= 0, got -1"),
    (["train.cache_precision=bfloat16"], "train.cache_precision must be float32, float16, int8 or topk, got bfloat16"),
    (
        ["train.loggers=[tb]"],
        "train.loggers: unknown logger 'tb'; choose from tensorboard, mlflow, wandb, "
        "e.g. train.loggers=[tensorboard,mlflow]",
    ),
    (
        ["train.loggers=[mlflow,tb,mlflow]"],
        "train.loggers: unknown logger 'tb'; choose from tensorboard, mlflow, wandb, "
        "e.g. train.loggers=[tensorboard,mlflow]",
    ),
    (
        ["train.loggers=[mlflow,mlflow]"],
        "train.loggers: a logger named twice; choose from tensorboard, mlflow, wandb, "
        "e.g. train.loggers=[tensorboard,mlflow]",
    ),
    (["method.beta=inf"], "method 'rld': beta must be a finite number >= 0, got inf"),
    (["data.path=/tmp/x"], "the digits data set is embedded and takes no path (--data / data.path=/tmp/x)"),
    (
        ["train.teacher_cache=lazy", "method.name=fitnet"],
        "method 'fitnet' reads the teacher's features, which the teacher-logit cache does not hold: "
        "set train.teacher_cache=off",
    ),
    (
        ["train.teacher_cache=full", "method.name=mlkd"],
        "method 'mlkd' trains on a strongly augmented view drawn afresh every step, which the teacher-logit "
        "cache cannot hold: set train.teacher_cache=off",
    ),
    (
        ["method.name=vanilla", "model.teacher_checkpoint=/tmp/t.pt"],
        "method 'vanilla' trains without a teacher: --teacher / model.teacher_checkpoint / model.teacher_weights "
        "would be ignored; use a distillation preset (rld presets)",
    ),
    (
        ["method.name=vanilla", "model.teacher_weights=default"],
        "method 'vanilla' trains without a teacher: --teacher / model.teacher_checkpoint / model.teacher_weights "
        "would be ignored; use a distillation preset (rld presets)",
    ),
    (
        ["model.teacher=resnet8", "model.teacher_checkpoint=cifar100:resnet56"],
        "the named teacher cifar100:resnet56 is a resnet56, but model.teacher is resnet8; use a resnet8 teacher "
        "(rld presets --teachers), or a preset with a resnet56 teacher",
    ),
]


@pytest.mark.parametrize("overrides,message", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_every_rule_refuses_a_bad_value_with_its_message(overrides, message):
    with pytest.raises(UserError) as err:
        resolve("demo/rld", overrides)
    assert str(err.value) == message


# values on the edge of each rule, accepted as they are
ACCEPTED = [
    ("train.lr_decay=1", ("train", "lr_decay"), 1.0),
    ("train.warmup_epochs=0", ("train", "warmup_epochs"), 0.0),
    ("train.warmup_epochs=1.5", ("train", "warmup_epochs"), 1.5),  # < train.epochs (2 in demo/rld)
    ("train.weight_decay=0", ("train", "weight_decay"), 0.0),
    ("train.momentum=0", ("train", "momentum"), 0.0),
    ("train.lr_step=1", ("train", "lr_step"), 1),
    ("train.lr_milestones=[]", ("train", "lr_milestones"), []),
    ("train.lr_milestones=[1]", ("train", "lr_milestones"), [1]),
    ("train.grad_clip_norm=0.001", ("train", "grad_clip_norm"), 0.001),
    ("train.schedule=cosine", ("train", "schedule"), "cosine"),
    ("train.optimizer=adamw", ("train", "optimizer"), "adamw"),
    ("seed=0", ("seed",), 0),
    ("data.num_workers=0", ("data", "num_workers"), 0),
    ("data.eval_batch_size=1", ("data", "eval_batch_size"), 1),
    ("data.val_fraction=0.999", ("data", "val_fraction"), 0.999),
    ("data.holdout=0.001", ("data", "holdout"), 0.001),
    ("data.holdout_seed=0", ("data", "holdout_seed"), 0),
    ("data.train_per_class=1", ("data", "train_per_class"), 1),
    ("train.teacher_cache=full", ("train", "teacher_cache"), "full"),
    ("train.teacher_cache=lazy", ("train", "teacher_cache"), "lazy"),
    ("train.cache_precision=float32", ("train", "cache_precision"), "float32"),
    ("train.static_step=require", ("train", "static_step"), "require"),
    ("train.static_step=true", ("train", "static_step"), "on"),  # YAML's on/off read as booleans
    ("train.static_step=false", ("train", "static_step"), "off"),
    ("train.batch_students=true", ("train", "batch_students"), "on"),
    ("train.batch_students=false", ("train", "batch_students"), "off"),
    ("train.checkpoint_every_steps=0", ("train", "checkpoint_every_steps"), 0),
    ("train.batch_size=1", ("train", "batch_size"), 1),
    ("train.loggers=[]", ("train", "loggers"), []),
    ("train.loggers=[tensorboard,mlflow,wandb]", ("train", "loggers"), ["tensorboard", "mlflow", "wandb"]),
]


@pytest.mark.parametrize("override,where,value", ACCEPTED, ids=[a for a, _, _ in ACCEPTED])
def test_values_on_the_edge_of_a_rule_are_accepted(override, where, value):
    cfg = resolve("demo/rld", [override])
    got = cfg
    for attr in where:
        got = getattr(got, attr)
    assert got == value and type(got) is type(value)


def test_on_off_spelled_as_booleans_or_their_text_become_on_and_off():
    cfg = resolve("demo/rld")
    for given, want in ((True, "on"), (False, "off"), ("True", "on"), ("FALSE", "off"), ("auto", "auto")):
        cfg.train.static_step, cfg.train.batch_students = given, given
        validate(cfg)
        assert (cfg.train.static_step, cfg.train.batch_students) == (want, want)


def test_relative_paths_become_absolute_and_names_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve("demo/rld", ["data.name=cifar100", "data.path=d/x.npz", "model.teacher_checkpoint=t.pt"])
    assert (cfg.data.path, cfg.model.teacher_checkpoint) == (str(tmp_path / "d/x.npz"), str(tmp_path / "t.pt"))
    # a path under ~ is found from any folder: kept as written
    cfg = resolve("demo/rld", ["data.name=cifar100", "data.path=~/x.npz", "model.teacher_checkpoint=~/t.pt"])
    assert (cfg.data.path, cfg.model.teacher_checkpoint) == ("~/x.npz", "~/t.pt")
    for remote in ("cifar100:resnet56", "https://example.org/t.pth"):
        cfg = resolve("demo/rld", ["model.teacher=resnet56", f"model.teacher_checkpoint={remote}"])
        assert cfg.model.teacher_checkpoint == remote
    absolute = str(Path(tmp_path / "abs.pt"))
    assert resolve("demo/rld", [f"model.teacher_checkpoint={absolute}"]).model.teacher_checkpoint == absolute


# (section, key, a non-finite value, the example the message gives: the key's default, or a value of
# its type where the methods' defaults differ)
NONFINITE = [
    ("data", "val_fraction", math.inf, "data.val_fraction=0.5"),
    ("method", "temperature", -math.inf, "method.temperature=0.5"),
    ("train", "lr", math.nan, "train.lr=0.05"),
]


@pytest.mark.parametrize("section,key,value,example", NONFINITE)
def test_refuse_nonfinite_names_the_key_and_an_example(section, key, value, example):
    """The last guard for float keys no rule above covers: every float of every section."""
    cfg = RunConfig(method=KDConfig())
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(UserError) as err:
        _refuse_nonfinite(cfg)
    assert str(err.value) == f"{section}.{key} must be a finite number, got {value} (e.g. {example})"
    setattr(getattr(cfg, section), key, 0.5)
    _refuse_nonfinite(cfg)  # finite again: accepted
