"""The one configuration schema of a run, presets, and the ``KEY=VALUE`` overrides.

A run's configuration is resolved once — schema defaults ← preset ← YAML file ← overrides —
validated, saved beside the run as ``config.yaml`` and passed down; nothing reads global state.

Presets live in ``rld/configs/*.yaml`` (package data), with per-method fragments in
``rld/configs/FAMILY/*.yaml``. Each family (``cifar100``, ``imagenet``, ``demo``) has a ``base``
configuration, per-method defaults (``methods``) and per-method training settings
(``method_train``, for methods whose published protocol differs; ``pair_train``, where it differs
per teacher→student pair), per-model and per-teacher
adjustments (``models``, ``teachers``), the teacher→student ``pairs`` and any explicitly named
``presets``. From them come the names ``FAMILY/MODEL/vanilla``, ``FAMILY/TEACHER-STUDENT/METHOD``
and ``FAMILY/NAME``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rld.errors import UserError
from rld.method_config import MethodConfig


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar100 | imagefolder (alias imagenet) | hf (Hugging Face datasets)
    path: str | None = None  # CIFAR-100 folder / archive / .npz, or an ImageFolder root
    # auto | device (decoding of image files and augmentation on the training device) | pil (DataLoader
    # workers + torchvision transforms); auto: device, except image folders on a CPU, which use pil
    pipeline: str = "auto"
    num_workers: int = 4  # DataLoader workers (image folders: they read the files; the pil pipeline)
    decoder: str = "auto"  # image folders on the device pipeline: auto | torchvision | torchcodec
    eval_batch_size: int = 256
    # Keep only the first N training images of each class (in the split's order: a fixed subset, the
    # same for every seed); the test split is unchanged. None keeps them all. Array data sets only.
    train_per_class: int | None = None
    # side of the model's input: digits (upsampled, default 32; 16 is 4× cheaper) and image folders /
    # manifests / Hugging Face data (RandomResizedCrop / centre crop, default 224); not cifar100
    image_size: int | None = None
    val_fraction: float | None = None  # a single image folder / a manifest: the stratified validation part
    skip_bad_images: bool = False  # leave unreadable images out (counted in the log) instead of stopping
    image_column: str = "image"  # data.name=hf: the column of the images
    label_column: str = "label"  # data.name=hf: the column of the labels
    # Hold out this stratified fraction of the training split and evaluate on it instead of the test
    # split, which is then never built (rld tune's grid runs; rld.data.holdout). None: no hold-out.
    holdout: float | None = None
    holdout_seed: int = 0  # seed of the data.holdout split (the same held-out images for every run seed)


@dataclass
class ModelConfig:
    student: str = "resnet8"
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    dataset: str = "cifar100"  # architecture family: cifar100 (32×32 inputs) | imagenet (224×224)
    student_weights: str | None = None  # None (random) | default | a library weight name | a local file
    teacher_weights: str | None = None  # instead of teacher_checkpoint: library weights or a local file
    freeze_backbone: bool = False  # train only the student's classifier (linear probing)


LOGGERS = ("tensorboard", "mlflow", "wandb")
"""The experiment trackers ``train.loggers`` may name (:mod:`rld.trackers`)."""


@dataclass
class TrainConfig:
    epochs: int = 240
    batch_size: int = 64  # the global batch: divided among the processes under torchrun
    lr: float = 0.05
    lr_milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_step: int | None = None  # decay every lr_step epochs instead of at lr_milestones
    lr_decay: float = 0.1
    schedule: str = "step"  # step (lr_milestones / lr_step, lr_decay) | cosine (to 0 at the last epoch)
    warmup_epochs: float = 0.0  # linear learning-rate warm-up: lr·epoch/warmup_epochs for the first epochs
    optimizer: str = "sgd"  # sgd (momentum, nesterov) | adamw
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False
    # Clip each run's gradient to this total L2 norm before its optimizer step (None: no clipping;
    # the published SDD trainer clips at 40).
    grad_clip_norm: float | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 autocast of the student's forward (CPU and CUDA; opt-in, it changes results). The teacher's
    # classifier, the losses and every evaluation stay in float32.
    amp: bool = False
    channels_last: bool = True  # channels-last activations and weights (faster convolutions on CPU and GPU)
    deterministic: bool = True
    sync_bn: bool = True  # SyncBatchNorm under torchrun on CUDA (CPU/gloo: per-process statistics)
    # Teacher-logit cache (rld.fast.cache): the eval-mode teacher's logits per (image, augmentation view);
    # for image folders (rld.fast.store) per (epoch, sample) of the run's seed, filled by `rld cache`.
    teacher_cache: str = "off"  # off (teacher forward every step) | lazy (fill on first use) | full (build up front)
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/rld/teacher-logits (~/.cache/rld/teacher-logits)
    # storage form (rld.fast.forms): float16 | float32; image folders also int8 (per-row step) | topk
    cache_precision: str = "float16"
    cache_topk: int = 20  # the topk form: the k largest logits kept per sample (rld.fast.forms.TOPK_DEFAULT)
    cache_inexact: bool = False  # train on a stored form that rld.fast.forms measures inexact for the method
    # Whole-step execution (rld.engine.static): the step reads everything from device buffers and,
    # on CUDA, is replayed as CUDA graphs. auto = on for CUDA with the device-resident loader.
    # require: as on, and on CUDA a step that cannot be captured is an error, not an eager fallback.
    static_step: str = "auto"  # auto | on | off | require
    # Sweeps (rld.engine.batched): the students of one architecture in a lockstep group step as one
    # batched computation (torch.func.vmap); equal to their single runs up to float rounding.
    batch_students: str = "auto"  # auto (on CUDA) | on | off (one after another, bit-identical)
    # Faults (rld.engine.guard): stop at the epoch whose loss (or weights) went non-finite, keeping the
    # last finite checkpoint; save the exact position inside an epoch every N steps (0: at epoch ends only).
    stop_on_nonfinite: bool = True
    checkpoint_every_steps: int = 0
    # Experiment trackers (rld.trackers): tensorboard | mlflow | wandb; metrics.csv is always written.
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    experiment: str | None = None  # MLflow experiment / W&B project (default: the preset's family)


@dataclass
class RunConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- presets

FAMILIES = ("cifar100", "imagenet", "demo", "custom")


@cache
def _family(name: str) -> dict:
    """The family file ``configs/NAME.yaml``, deep-merged with its fragments ``configs/NAME/*.yaml``
    (one per method, in name order: a method's defaults, per-teacher and per-pair values and
    training settings beside the published configs they come from)."""
    root = resources.files("rld.configs")
    out = yaml.safe_load(root.joinpath(f"{name}.yaml").read_text())
    folder = root.joinpath(name)
    if folder.is_dir():
        for part in sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name):
            out = _merge(out, yaml.safe_load(part.read_text()) or {})
    return out


def _merge(*dicts: dict | None) -> dict:
    out: dict = {}
    for d in dicts:
        for key, value in (d or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _method_part(fam: dict, method: str, *owners: str) -> dict:
    """Method defaults of the family, then adjustments by teacher / pair (in that order)."""
    parts = [fam.get("methods", {}).get(method, {})]
    for owner in owners:
        parts.append((owner or {}).get(method, {}))
    return {"method": _merge({"name": method}, *parts)}


def _presets_of(family: str) -> dict[str, dict]:
    fam = _family(family)
    base, models, teachers = fam.get("base", {}), fam.get("models", {}), fam.get("teachers", {})
    out: dict[str, dict] = {}
    for model, adjust in models.items():
        out[f"{family}/{model}/vanilla"] = _merge(
            base, {"model": {"student": model}, "method": {"name": "vanilla"}}, (adjust or {}).get("train_cfg")
        )
    for pair, pair_adjust in (fam.get("pairs") or {}).items():
        teacher, student = pair.split("-")
        for method in fam.get("methods", {}):
            if method == "vanilla":
                continue
            out[f"{family}/{pair}/{method}"] = _merge(
                base,
                {"model": {"teacher": teacher, "student": student}},
                (models.get(student) or {}).get("train_cfg"),
                _method_part(fam, method, teachers.get(teacher), pair_adjust),
                (fam.get("method_train") or {}).get(method),
                ((fam.get("pair_train") or {}).get(pair) or {}).get(method),
            )
    for name, preset in (fam.get("presets") or {}).items():
        method = preset.get("method", {}).get("name", "vanilla")
        out[f"{family}/{name}"] = _merge(base, _method_part(fam, method), preset)
    return out


@cache
def list_presets() -> dict[str, dict]:
    """Every preset name → its (partial) configuration as a plain dict."""
    out: dict[str, dict] = {}
    for family in FAMILIES:
        out.update(_presets_of(family))
    return out


def _close_matches(name: str, options) -> str:
    import difflib

    near = difflib.get_close_matches(name, list(options), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def preset(name: str) -> dict:
    presets = list_presets()
    if name not in presets:
        raise UserError(f"unknown preset {name!r}{_close_matches(name, presets)}; `rld presets` lists them all")
    return copy.deepcopy(presets[name])


# ----------------------------------------------------------------------------- resolution


def _valid_keys(node: Any = None, prefix: str = "") -> list[str]:
    node = OmegaConf.structured(RunConfig) if node is None else node
    keys = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        keys.extend(_valid_keys(value, path + ".") if isinstance(value, DictConfig) else [path])
    return keys


def _list_keys() -> set[str]:
    return {key for key, (kind, _) in key_types().items() if kind.startswith("list")}


def _friendly(err: OmegaConfBaseException, where: str, method: str | None = None) -> UserError:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    unknown = "not in struct" in msg or "Key '" in msg and "not in" in msg
    if unknown and method is not None and key.startswith("method."):
        from rld.methods import get_spec

        spec = get_spec(method)
        takes = [*spec.params, *(("logit_standardization", "ls_temperature", "ls_weight") if spec.ls else ())]
        import difflib

        close = difflib.get_close_matches(key.removeprefix("method."), takes, n=3, cutoff=0.6)
        near = f" (did you mean {', '.join(f'method.{k}' for k in close)}?)" if close else ""
        if near:
            takes_text = ", ".join(takes)
            return UserError(f"unknown config key {key!r} in {where}{near}; method {method!r} takes: {takes_text}")
        return UserError(
            f"method {method!r} does not take {key.removeprefix('method.')} (it takes: {', '.join(takes)}; "
            f"set in {where})"
        )
    if unknown:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        valid = [k for k in _valid_keys() if k.startswith(section + ".")] if section else _valid_keys()
        near = _close_matches(key, _valid_keys())
        return UserError(f"unknown config key {key!r} in {where}{near}; valid keys: {', '.join(valid)}")
    if key in _list_keys():
        return UserError(f"{key} takes a list, e.g. {key}=[5,7] (in {where})")
    if key in key_types():
        kind = key_types()[key][0]
        return UserError(f"invalid value for {key} in {where}: it takes {kind} ({msg})")
    return UserError(f"invalid value for {key or 'the configuration'} in {where}: {msg}")


KEY_HELP = {
    "seed": "random seed of the run (weights, data order, augmentation)",
    "data.name": "digits (embedded) | cifar100 | imagefolder (alias imagenet) | hf (Hugging Face datasets)",
    "data.path": "CIFAR-100 folder / archive / .npz, an image folder or a CSV manifest (absolute once resolved)",
    "data.pipeline": "auto | device (decode and augment on the training device) | pil (DataLoader + transforms); "
    "auto: device, but pil for image folders on a CPU",
    "data.num_workers": "DataLoader workers (image folders: they read the files; the pil pipeline)",
    "data.decoder": "image folders on the device pipeline: auto (torchcodec if installed) | torchvision | torchcodec",
    "data.eval_batch_size": "batch size of evaluation",
    "data.train_per_class": "array data sets: train on the first N images of each class (a fixed subset)",
    "data.image_size": "input side: digits (upsampled, default 32), image folders / manifests / hf (default 224)",
    "data.val_fraction": "single image folder or CSV manifest: stratified, seeded validation fraction (split.json)",
    "data.skip_bad_images": "leave unreadable images out (counted in the log) instead of stopping",
    "data.image_column": "data.name=hf: the column holding the images",
    "data.label_column": "data.name=hf: the column holding the labels",
    "data.holdout": "evaluate on this stratified fraction of the training split (never on the test split); rld tune",
    "data.holdout_seed": "seed of the data.holdout split (the same held-out images for every run seed)",
    "model.student": "the model trained (a zoo name, torchvision:NAME or timm:NAME)",
    "model.teacher": "the frozen teacher's architecture (distillation methods)",
    "model.teacher_checkpoint": "the teacher's weights: a file (absolute once resolved), a URL[!/MEMBER][#sha256=HEX] "
    "or a named teacher (rld presets --teachers); --teacher",
    "model.dataset": "architecture family: cifar100 (32x32 inputs) | imagenet (224x224)",
    "model.student_weights": "initial student weights: default | a library weight name | a local .pth/.safetensors",
    "model.teacher_weights": "teacher weights instead of teacher_checkpoint: default | a weight name | a local file",
    "model.freeze_backbone": "train only the student's classifier (linear probing)",
    "method.name": "the method, by its registered name (key_help() lists them)",
    "method.alpha": "DKD, SD-DKD: TCKD weight; RLD, SD-RLD: SCD weight; ABKD: exponent alpha of the alpha-beta "
    "divergence",
    "method.beta": "DKD, SD-DKD: NCKD weight; RLD, SD-RLD: MCD weight; DIST: inter-class relation weight; "
    "WTTM: weight of its term; ABKD: exponent beta of the alpha-beta divergence",
    "method.temperature": "distillation temperature T",
    "method.scd_temperature": "RLD, SD-RLD: temperature of SCD (default: method.temperature)",
    "method.warmup_epochs": "DKD/RLD/ReviewKD/SD-DKD/SD-NKD/SD-RLD: linear warm-up of the distillation terms (epochs)",
    "method.mask": "RLD, SD-RLD: ge (M_ge, the paper's) | g (the ablation of Table 1)",
    "method.logit_standardization": "z-score the logits of the distillation terms and set b, w (Sun et al. 2024)",
    "method.ls_temperature": "logit standardization: base temperature b (default 2)",
    "method.ls_weight": "logit standardization: weight w (default 9)",
    "method.ce_weight": "weight of the cross-entropy term",
    "method.kd_weight": "KD/LA/RC/CTKD/SD-KD: weight of the KD term; DIST: weight of the whole DIST term; "
    "ABKD: weight of the alpha-beta divergence",
    "method.rc_weight": "RC: weight of the RC term",
    "method.scales": "SD-*: SDD's pooling grids, increasing from 1, each dividing the largest: [1,2,4] or [1,2] (--M)",
    "method.complementary_weight": "SD-*: weight of a region whose teacher prediction disagrees with the global one's",
    "method.lambda1": "LR: weight of the MSE on right samples",
    "method.lambda2": "LR: weight of the MSE towards revised targets",
    "method.eta": "LR: revision strength",
    "method.t_min": "CTKD: lowest learned temperature (tau = t_min + t_range*sigmoid(theta))",
    "method.t_range": "CTKD: range of the learned temperature",
    "method.ramp_epochs": "CTKD: epochs of the gradient-reversal ramp",
    "train.epochs": "number of epochs (--epochs N also scales the schedule)",
    "train.batch_size": "global batch size (divided among torchrun processes)",
    "train.lr": "initial (peak) learning rate",
    "train.lr_milestones": "epochs after which the learning rate decays, e.g. [150,180,210]",
    "train.lr_step": "decay every lr_step epochs instead of at lr_milestones",
    "train.lr_decay": "factor of each decay",
    "train.schedule": "step (milestones or lr_step) | cosine (to 0 at the last epoch)",
    "train.warmup_epochs": "linear learning-rate warm-up over the first epochs (lr·epoch/warmup_epochs)",
    "train.optimizer": "sgd (momentum, nesterov; the papers') | adamw (fine-tuning)",
    "train.weight_decay": "weight decay (decoupled for adamw)",
    "train.momentum": "SGD momentum",
    "train.nesterov": "Nesterov momentum",
    "train.grad_clip_norm": "clip each step's gradient to this total L2 norm (empty: none; SDD's published code: 40)",
    "train.device": "auto | cpu | cuda | cuda:N; --device",
    "train.amp": "bf16 autocast of the student (opt-in; teacher logits and evaluation stay float32)",
    "train.channels_last": "channels-last layout (faster convolutions)",
    "train.deterministic": "deterministic algorithms (exact resume)",
    "train.sync_bn": "SyncBatchNorm under torchrun on CUDA",
    "train.teacher_cache": "off | lazy | full: the teacher-logit cache",
    "train.cache_dir": "where teacher-logit caches live (default ~/.cache/rld/teacher-logits)",
    "train.cache_precision": "float16 | float32 storage of cached logits; image folders also int8 | topk",
    "train.cache_topk": "the topk storage form: logits kept per sample (the other classes filled; image folders)",
    "train.cache_inexact": "train on a storage form measured inexact for the method (int8 for lr; topk for any)",
    "train.static_step": "auto | on | off | require: whole-step execution (CUDA graphs on CUDA; require: no fallback)",
    "train.batch_students": "auto | on | off: step a sweep's students of one architecture together (auto: on CUDA)",
    "train.stop_on_nonfinite": "stop (exit status 3) at an epoch whose loss or weights went non-finite; keep last.pt",
    "train.checkpoint_every_steps": "also save the exact position inside an epoch every N steps (step.pt; 0: off)",
    "train.loggers": "experiment trackers, e.g. [tensorboard,mlflow,wandb] (metrics.csv is always written)",
    "train.experiment": "MLflow experiment / W&B project of the tracked runs (default: the preset's family)",
}


@cache
def key_types() -> dict[str, tuple[str, Any]]:
    """Every configuration key → (its type as text, its default).

    The ``method.*`` keys are those of every method (each takes its own, :mod:`rld.methods`); a key
    several methods take with different defaults has the default None here."""
    import typing

    from rld.methods import METHODS

    out: dict[str, tuple[str, Any]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.")
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            text = str(kind).replace("typing.", "").replace("<class '", "").replace("'>", "")
            key = f"{prefix}{f.name}"
            if key in out and out[key][1] != default:
                default = None
            if key == "method.name":
                default = "vanilla"
            out[key] = (text.replace("NoneType", "None"), default)

    walk(RunConfig, "")
    for spec in METHODS.values():
        walk(spec.config, "method.")
    return out


def key_help() -> dict[str, str]:
    """Every configuration key → its one-line help: :data:`KEY_HELP`, and for a method's own keys
    the ``help`` metadata of their fields."""
    from rld.methods import METHODS

    out = dict(KEY_HELP)
    out["method.name"] = " | ".join(METHODS)
    for spec in METHODS.values():
        for f in dataclasses.fields(spec.config):
            text = f.metadata.get("help")
            key = f"method.{f.name}"
            if text and key not in KEY_HELP:
                out[key] = f"{out[key]}; {spec.name}: {text}" if key in out else f"{spec.name}: {text}"
    return out


SECTIONS = ("data", "model", "method", "train")
_KEY_SYNTAX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def example_value(key: str) -> str:
    """A valid ``KEY=VALUE`` for ``key``: its default, or a value of its type."""
    if key in SECTIONS:
        return f"{key}.{next(k for k in key_types() if k.startswith(key + '.')).split('.', 1)[1]}=…"
    kind, default = key_types().get(key, ("", None))
    if isinstance(default, bool):
        value = str(default).lower()
    elif isinstance(default, list):
        value = f"[{','.join(map(str, default))}]" if default else "[5,7]"
    elif default not in (None, ""):
        value = str(default)
    elif kind.startswith("list"):
        value = "[5,7]"
    else:
        value = next((v for t, v in (("bool", "true"), ("int", "1"), ("float", "0.5")) if kind.startswith(t)), "NAME")
    return f"{key}={value}"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong in a YAML value, in a few words."""
    context = getattr(err, "context", None) or ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]  # a reader's error has neither
    if "flow sequence" in context or "flow node" in context and "'['" not in problem:
        return "unclosed '['"
    if "flow mapping" in context:
        return "unclosed '{'"
    if "quoted scalar" in context:
        return "unclosed quote"
    if "directive" in context:
        return "'%' cannot start a value (quote the value)"
    if "undefined alias" in problem:
        return "'*' marks a YAML alias (quote the value)"
    if "cannot start any token" in problem:
        return "a character that cannot start a value (quote the value)"
    if "constructor" in problem:
        return "a YAML tag ('!!…') is not a value"
    return f"{context + ': ' if context else ''}{problem}"


def _check_kind(override: str, key: str, value: Any) -> None:
    """Refuse a map or list given where ``key`` takes a single value (and a scalar or list where a
    section or map is expected), naming the key, what it takes and a valid example."""
    if key in SECTIONS:
        if not isinstance(value, dict):
            raise UserError(f"{override!r}: {key} is a section, not a value; set its keys, e.g. {example_value(key)}")
        for name, item in value.items():
            _check_kind(override, f"{key}.{name}", item)
        return
    if key not in key_types():
        return  # unknown keys are refused by the merge, with the keys that are close
    kind = key_types()[key][0]
    got = "a map" if isinstance(value, dict) else "a list" if isinstance(value, list) else None
    if got is None or kind.startswith("list") and isinstance(value, list):
        return
    takes = "a list" if kind.startswith("list") else "a name" if kind.startswith("str") else f"a {kind.split(' ')[0]}"
    raise UserError(f"{override!r}: {key} takes {takes}, not {got}; e.g. {example_value(key)}")


def _parse_override(override: str) -> DictConfig:
    """One ``KEY=VALUE`` as a config: the key's syntax, the value's YAML and its kind checked."""
    key, _, text = override.partition("=")
    key = key.strip()
    if not _KEY_SYNTAX.fullmatch(key):
        raise UserError(
            f"{override!r}: {key!r} is not a configuration key (keys look like train.lr; rld config-keys lists them)"
        )
    try:
        node = OmegaConf.from_dotlist([f"{key}={text}"])
    except yaml.YAMLError as err:
        raise UserError(f"{override!r} is not a valid value: {_yaml_problem(err)}; e.g. {example_value(key)}") from err
    except (OmegaConfBaseException, ValueError, TypeError, IndexError) as err:
        raise UserError(f"cannot read override {override!r}: {str(err).splitlines()[0]}") from err
    value = OmegaConf.to_container(node, resolve=False)
    for part in key.split("."):
        value = value[part]
    _check_kind(override, key, value)
    return node


def _parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise UserError(f"overrides must look like KEY=VALUE (e.g. method.beta=4), got {bad[0]!r}")
    nodes = [_parse_override(o) for o in overrides]
    try:
        return OmegaConf.merge(*nodes) if nodes else OmegaConf.create({})
    except (OmegaConfBaseException, ValueError, TypeError) as err:  # a key set as a value and as a section
        raise UserError(
            f"the overrides {' '.join(overrides)} contradict each other: {str(err).splitlines()[0]}"
        ) from err


def load_yaml(path: Path) -> dict:
    """A YAML file holding a mapping (empty file: {}); UserError when unreadable or not a mapping."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data, model, method, train, seed)")
    dotted = [k for k in data if isinstance(k, str) and "." in k]
    if dotted:
        section, _, name = dotted[0].partition(".")
        raise UserError(
            f"config file {path}: {dotted[0]!r} is a dotted key; write nested sections "
            f"({section}: {{{name}: …}}) or give it as a KEY=VALUE override"
        )
    return data


def _method_name(layers: list[tuple[Any, str]]) -> tuple[str, int]:
    """The method the layers pick (the last ``method.name`` given; vanilla if none) and the index of
    the layer that names it (-1 if none)."""
    name, at = "vanilla", -1
    for i, (layer, where) in enumerate(layers):
        try:
            method = layer.get("method") if hasattr(layer, "get") else None
            given = method.get("name") if hasattr(method, "get") else None
        except OmegaConfBaseException as err:
            raise _friendly(err, where) from err
        if given is not None:
            if not isinstance(given, str):
                raise UserError(f"method.name takes a method name, e.g. method.name=kd; got {given!r} in {where}")
            name, at = given, i
    return name, at


def _without_foreign_method_keys(layer: Any, keys: set[str]) -> Any:
    """``layer`` without the ``method`` keys outside ``keys`` (a layer under another method's name)."""
    if isinstance(layer, DictConfig):
        layer = OmegaConf.to_container(layer)
    method = layer.get("method") if isinstance(layer, dict) else None
    if not isinstance(method, dict):
        return layer
    return {**layer, "method": {k: v for k, v in method.items() if k in keys}}


def _schema(method: str) -> DictConfig:
    """The schema of a run of ``method``: its ``method`` section is the method's own typed class."""
    return copy.deepcopy(_shared_schema(method))


@cache
def _shared_schema(method: str) -> DictConfig:
    """:func:`_schema`, made once per method (building it is slow); merges copy it, never change it."""
    from rld.methods import method_config

    return OmegaConf.structured(RunConfig(method=method_config(method)()))


def _merged(layers: list[tuple[Any, str]]) -> DictConfig:
    """The layers merged into the schema of the method they pick. The ``method`` keys of layers
    before the one naming the method belong to another method (``method.name=kd`` over an RLD
    preset): those the picked method does not take are left out."""
    method, at = _method_name(layers)
    cfg = _shared_schema(method) if layers else _schema(method)  # OmegaConf.merge returns a new config
    keys = set(cfg.method.keys())
    layers = [
        (_without_foreign_method_keys(layer, keys) if i < at else layer, w) for i, (layer, w) in enumerate(layers)
    ]
    for layer, where in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise _friendly(err, where, method) from err
    try:  # interpolations (${oc.env:NAME}, ${train.lr}) are resolved now, not when a value is first read
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "a value"
        raise UserError(
            f"cannot resolve the interpolation in {key}: {str(err).splitlines()[0]}; give a plain value, "
            f"e.g. {example_value(key)}"
        ) from err
    _refuse_literal_interpolations(OmegaConf.to_container(cfg, resolve=False))
    return cfg


def _refuse_literal_interpolations(node: Any, key: str = "") -> None:
    """A resolved value still holding ``${`` (an escaped ``\\${…}``, a path given by a flag, an
    environment variable's text) would be read as an interpolation by every later reader of the
    configuration (its config.yaml, its checkpoints): refused, naming the key."""
    if isinstance(node, dict):
        for name, item in node.items():
            _refuse_literal_interpolations(item, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for item in node:
            _refuse_literal_interpolations(item, key)
    elif isinstance(node, str) and "${" in node:
        raise UserError(
            f"{key}={node}: a value cannot hold '${{' (a configuration reads '${{…}}' as an interpolation); "
            "rename the file or folder, or give a plain value"
        )


def resolve(source: str, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a preset name or YAML path plus ``KEY=VALUE`` overrides into a validated config.

    A YAML file may name a preset to start from with a top-level ``preset: NAME`` key.
    With ``method.logit_standardization`` on, the preset's method values are first adjusted as
    the published code does (:func:`rld.methods.ls_adjustments`, with ``method.ls_temperature``
    and ``method.ls_weight`` from any layer); values set in the YAML file or the overrides win
    over that. The resolved base temperature and weight are stored in the configuration.
    """
    if source.endswith((".yaml", ".yml")) or Path(source).is_file():
        user = load_yaml(Path(source))
        named = "preset" in user
        name = user.pop("preset", None)
        if named and not isinstance(name, str):
            raise UserError(f"config file {source}: preset takes a preset name (e.g. preset: demo/rld), got {name!r}")
        base = preset(name) if named else {}
        where = str(source)
    else:
        user, base, where = {}, preset(source), f"preset {source}"
    later = [(user, where), (_parse_overrides(list(overrides or [])), "the overrides")]
    cfg = _merged([(base, where), *later])
    if cfg.method.logit_standardization:
        from rld.methods import LS_TEMPERATURE, LS_WEIGHT, ls_adjustments

        b = LS_TEMPERATURE if cfg.method.ls_temperature is None else cfg.method.ls_temperature
        w = LS_WEIGHT if cfg.method.ls_weight is None else cfg.method.ls_weight
        base_method = OmegaConf.to_container(_merged([(base, where)]).method)
        values = ls_adjustments({**base_method, "name": cfg.method.name}, b, w)
        adjusted = {"method": {**values, "ls_temperature": b, "ls_weight": w}}
        cfg = _merged([(base, where), (adjusted, "logit standardization"), *later])
    run = OmegaConf.to_object(cfg)
    validate(run)
    return run


DEVICE_SYNTAX = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
"""The devices rld trains and evaluates on (``train.device``, ``--device``)."""


def validate(cfg: RunConfig) -> None:
    """Value checks the types cannot express; raises UserError naming the key."""
    t = cfg.train
    # YAML reads on/off as booleans (and OmegaConf may keep them as "True"/"False")
    on_off = {"true": "on", "false": "off"}
    t.static_step = on_off.get(str(t.static_step).lower(), t.static_step)
    t.batch_students = on_off.get(str(t.batch_students).lower(), t.batch_students)
    t.teacher_cache = {"false": "off"}.get(str(t.teacher_cache).lower(), t.teacher_cache)
    checks = [
        (t.epochs > 0, "train.epochs must be > 0", t.epochs),
        (t.batch_size > 0, "train.batch_size must be > 0", t.batch_size),
        (t.lr > 0, "train.lr must be > 0", t.lr),
        (0 < t.lr_decay <= 1, "train.lr_decay must be in (0, 1]", t.lr_decay),
        (t.schedule in ("step", "cosine"), "train.schedule must be step or cosine", t.schedule),
        (0 <= t.warmup_epochs < t.epochs, "train.warmup_epochs must be >= 0 and < train.epochs", t.warmup_epochs),
        (t.optimizer in ("sgd", "adamw"), "train.optimizer must be sgd or adamw", t.optimizer),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0", t.weight_decay),
        (t.grad_clip_norm is None or t.grad_clip_norm > 0, "train.grad_clip_norm must be > 0", t.grad_clip_norm),
        (0 <= t.momentum < 1, "train.momentum must be in [0, 1)", t.momentum),
        (t.lr_step is None or t.lr_step > 0, "train.lr_step must be > 0", t.lr_step),
        (all(m > 0 for m in t.lr_milestones), "train.lr_milestones must be positive epochs", t.lr_milestones),
        (cfg.seed >= 0, "seed must be >= 0", cfg.seed),
        (cfg.data.eval_batch_size > 0, "data.eval_batch_size must be > 0", cfg.data.eval_batch_size),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0", cfg.data.num_workers),
        (
            cfg.data.val_fraction is None or 0 < cfg.data.val_fraction < 1,
            "data.val_fraction must be in (0, 1)",
            cfg.data.val_fraction,
        ),
        (
            cfg.data.holdout is None or 0 < cfg.data.holdout < 1,
            "data.holdout must be in (0, 1)",
            cfg.data.holdout,
        ),
        (cfg.data.holdout_seed >= 0, "data.holdout_seed must be >= 0", cfg.data.holdout_seed),
        (
            cfg.data.train_per_class is None or cfg.data.train_per_class > 0,
            "data.train_per_class must be > 0",
            cfg.data.train_per_class,
        ),
        # teacher-logit cache (rld.fast.cache)
        (t.teacher_cache in ("off", "lazy", "full"), "train.teacher_cache must be off, lazy or full", t.teacher_cache),
        (
            t.static_step in ("auto", "on", "off", "require"),
            "train.static_step must be auto, on, off or require",
            t.static_step,
        ),
        (
            t.batch_students in ("auto", "on", "off"),
            "train.batch_students must be auto, on or off",
            t.batch_students,
        ),
        (t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be >= 0", t.checkpoint_every_steps),
        (DEVICE_SYNTAX.fullmatch(t.device) is not None, "train.device must be auto, cpu, cuda or cuda:N", t.device),
        (
            t.cache_precision in CACHE_FORMS,
            f"train.cache_precision must be {', '.join(CACHE_FORMS[:-1])} or {CACHE_FORMS[-1]}",
            t.cache_precision,
        ),
        (t.cache_topk >= 1, "train.cache_topk must be >= 1", t.cache_topk),
    ]
    for ok, what, value in checks:
        if not ok:
            raise UserError(f"{what}, got {value}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{what} and finite, got {value}")
    unknown = [name for name in t.loggers if name not in LOGGERS]
    if unknown or len(set(t.loggers)) != len(t.loggers):
        what = f"unknown logger {unknown[0]!r}" if unknown else "a logger named twice"
        raise UserError(
            f"train.loggers: {what}; choose from {', '.join(LOGGERS)}, e.g. train.loggers=[tensorboard,mlflow]"
        )
    from rld.methods import get_spec, method_params

    method_params(cfg.method)  # raises for unknown methods, parameters they do not take, bad values
    _refuse_nonfinite(cfg)
    # paths are stored absolute, so a copied run or a command from another folder still finds them
    from rld.models.sources import is_remote, named_teacher

    for section, key in (("data", "path"), ("model", "teacher_checkpoint")):  # (weights may be names, not paths)
        value = getattr(getattr(cfg, section), key)
        remote = key == "teacher_checkpoint" and is_remote(value)  # a URL or a named teacher
        if value and not remote and not Path(value).expanduser().is_absolute():
            setattr(getattr(cfg, section), key, str(Path(value).expanduser().resolve()))
    named = named_teacher(cfg.model.teacher_checkpoint) if cfg.model.teacher_checkpoint else None
    if named is not None and cfg.model.teacher and named.architecture != cfg.model.teacher:
        raise UserError(
            f"the named teacher {named.name} is a {named.architecture}, but model.teacher is {cfg.model.teacher}; "
            f"use a {cfg.model.teacher} teacher (rld presets --teachers), or a preset with a "
            f"{named.architecture} teacher"
        )
    # inputs that would be ignored are refused
    if cfg.data.name == "digits" and cfg.data.path:
        raise UserError(f"the digits data set is embedded and takes no path (--data / data.path={cfg.data.path})")
    spec = get_spec(cfg.method.name)
    if t.teacher_cache != "off" and spec.teacher_features:
        raise UserError(
            f"method {cfg.method.name!r} reads the teacher's features, which the teacher-logit cache does not hold: "
            "set train.teacher_cache=off"
        )
    if t.teacher_cache != "off" and spec.strong_view:
        raise UserError(
            f"method {cfg.method.name!r} trains on a strongly augmented view drawn afresh every step, which the "
            "teacher-logit cache cannot hold: set train.teacher_cache=off"
        )
    _check_cache_form(cfg, spec.needs_teacher)
    if (cfg.model.teacher_checkpoint or cfg.model.teacher_weights) and not spec.needs_teacher:
        raise UserError(
            f"method {cfg.method.name!r} trains without a teacher: --teacher / model.teacher_checkpoint / "
            "model.teacher_weights would be ignored; use a distillation preset (rld presets)"
        )


CACHE_FORMS = ("float32", "float16", "int8", "topk")
"""The storage forms of teacher outputs (:data:`rld.fast.forms.FORMS`); the array data sets' cache
takes the first two."""
FOLDER_DATA = ("imagefolder", "imagenet", "hf")
"""Data sets of image files: their teacher outputs are stored per (epoch, sample) (:mod:`rld.fast.store`)."""


def _check_cache_form(cfg: RunConfig, needs_teacher: bool) -> None:
    """The storage form suits the data set, the mode and the method (:func:`rld.fast.forms.check_method`)."""
    t = cfg.train
    if cfg.data.name.lower() not in FOLDER_DATA:
        if t.cache_precision not in ("float16", "float32"):
            raise UserError(
                f"train.cache_precision={t.cache_precision} is a storage form of image-folder stores; the "
                f"teacher-logit cache of {cfg.data.name} stores float16 or float32"
            )
        return
    if t.teacher_cache == "lazy":
        raise UserError(
            "train.teacher_cache=lazy is for the array data sets (digits, cifar100); for image folders fill the store "
            "once with `rld cache PRESET … --epochs E` and train with train.teacher_cache=full"
        )
    if t.teacher_cache == "full" and needs_teacher:
        from rld.fast.forms import check_method

        check_method(t.cache_precision, cfg.method.name, t.cache_inexact)


def _refuse_nonfinite(cfg: RunConfig) -> None:
    """NaN and ±inf make no sense for any float key (weights, temperatures, learning rates,
    fractions, epochs): refused, with the key's valid range where the method states it."""
    for section in ("data", "model", "method", "train"):
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                key = f"{section}.{f.name}"
                raise UserError(f"{key} must be a finite number, got {value} (e.g. {example_value(key)})")


# How the teacher's logits are computed, by whether its body runs under bf16 autocast.
TEACHER_PRECISIONS = {False: "float32", True: "bf16-body+float32-classifier"}


def precision_summary(cfg: RunConfig) -> dict[str, str]:
    """What runs in which precision under ``cfg.train.amp`` (losses are always float32)."""
    amp = bool(cfg.train.amp)
    return {
        "student": "bf16 autocast" if amp else "float32",
        "teacher_logits": "float32 (CUDA: bf16 body, float32 classifier)" if amp else "float32",
        "losses": "float32",
        "evaluation": "float32",
    }


# ----------------------------------------------------------------------------- command-line flags

# The command-line flags that are shorthands of configuration keys.
FLAG_KEYS = {
    "train.epochs": "--epochs",
    "seed": "--seed",
    "model.teacher_checkpoint": "--teacher",
    "data.path": "--data",
    "train.device": "--device",
}
# Values that --epochs scales with the epoch count (the learning-rate schedule, warm-ups, ramps).
SCALED_BY_EPOCHS = (
    "train.lr_milestones",
    "train.lr_step",
    "train.warmup_epochs",
    "method.warmup_epochs",
    "method.ramp_epochs",
)


def override_key(override: str) -> str:
    if "=" not in override or not override.split("=", 1)[0].strip():
        raise UserError(f"overrides must look like KEY=VALUE (e.g. method.beta=4), got {override!r}")
    return override.split("=", 1)[0].strip()


def _yaml_quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that reads back as exactly ``text``: printable ASCII
    as it is, ``"`` and ``\\`` escaped, every other character as ``\\uXXXX`` / ``\\UXXXXXXXX``."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def text_override(key: str, value: Any) -> str:
    """``KEY=VALUE`` that sets ``key`` to the text of ``value`` as it is, whatever it holds: a path or
    name given by a flag (``--data``, ``--teacher``, ``--device``, ``--cache-dir``) is never read as
    YAML (``[x]``, ``{a}``, ``*t.pt``, ``a #b``, ``a: b``) nor as an interpolation (``${…}``). Quoted
    only where YAML would read it otherwise (``data.path=/data/cifar`` stays as it is)."""
    text = str(value)
    if "${" not in text and _plain_yaml(text) == text:
        return f"{key}={text}"
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)  # OmegaConf's escape
    return f"{key}={_yaml_quoted(text)}"


@cache
def _plain_yaml(text: str) -> Any:
    """What YAML reads ``text`` as (None when it cannot: then it needs quoting)."""
    try:
        return OmegaConf.from_dotlist([f"x={text}"]).x
    except Exception:  # noqa: BLE001 - any failure to read means: quote it
        return None


def with_flags(overrides: list[str], flags: dict[str, Any]) -> list[str]:
    """``overrides`` plus ``KEY=VALUE`` for every flag given (``flags``: key → value or None); a flag's
    value is taken as it is (text, or a number for ``seed``), never read as YAML (:func:`text_override`).

    A flag and an override of the same key is an error (neither silently wins)."""
    given = {override_key(o) for o in overrides}
    for key, value in flags.items():
        if value is not None and key in given:
            raise UserError(f"{FLAG_KEYS.get(key, key)} and {key}=… both set {key}; give one of them")
    return [
        *overrides,
        *(f"{k}={v}" if isinstance(v, int) else text_override(k, v) for k, v in flags.items() if v is not None),
    ]


def schedule_overrides(cfg: RunConfig, epochs: int, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``--epochs N``: ``train.epochs=N`` and, scaled by N / ``cfg.train.epochs``, the learning-rate
    milestones (or step), the warm-up and CTKD's reversal ramp — except the keys in ``keep``
    (values the user set explicitly). ``train.epochs=N`` as an override changes only the count."""
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    from rld.methods import get_spec

    out = [f"train.epochs={epochs}"]
    scale = epochs / cfg.train.epochs
    if scale == 1:
        return out
    scaled: dict[str, str] = {}
    if cfg.train.lr_step:
        scaled["train.lr_step"] = str(max(1, round(cfg.train.lr_step * scale)))
    elif cfg.train.lr_milestones:
        scaled["train.lr_milestones"] = f"[{','.join(str(max(1, round(m * scale))) for m in cfg.train.lr_milestones)}]"
    if cfg.train.warmup_epochs:
        scaled["train.warmup_epochs"] = f"{cfg.train.warmup_epochs * scale:.6g}"
    params = get_spec(cfg.method.name).params
    for key in ("warmup_epochs", "ramp_epochs"):  # DKD/RLD/ReviewKD warm-up, CTKD's reversal ramp
        value = getattr(cfg.method, key, None)
        if value and key in params:
            scaled[f"method.{key}"] = f"{value * scale:.6g}"
    return out + [f"{k}={v}" for k, v in scaled.items() if k not in keep]


def resolve_with_flags(
    source: str, overrides: list[str], flags: dict[str, Any] | None = None, epochs: int | None = None
) -> RunConfig:
    """:func:`resolve` for a command line: ``overrides``, the shorthand ``flags`` (conflicts are
    errors) and ``--epochs`` (scaling the schedule, see :func:`schedule_overrides`)."""
    overrides = with_flags(list(overrides), dict(flags or {}))
    if epochs is None:
        return resolve(source, overrides)
    keys = {override_key(o) for o in overrides}
    if "train.epochs" in keys:
        raise UserError("--epochs and train.epochs=… both set train.epochs; give one of them")
    base = resolve(source, overrides)
    return resolve(source, [*overrides, *schedule_overrides(base, epochs, keep=keys)])


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict) -> RunConfig:
    """A RunConfig from a saved ``config.yaml`` / checkpoint dictionary.

    A ``method`` section saved before each method had its own parameters (every method's keys, the
    others' ``null``) is read too: the ``null`` keys the method does not take are dropped."""
    from rld.methods import method_config

    method = dict(data.get("method") or {})
    name = method.get("name") or "vanilla"
    try:
        keys = {f.name for f in dataclasses.fields(method_config(name))}
        method = {k: v for k, v in method.items() if k in keys or v is not None}
        return OmegaConf.to_object(OmegaConf.merge(_shared_schema(name), {**data, "method": method}))
    except OmegaConfBaseException as err:
        raise _friendly(err, "the saved configuration", name) from err
