"""The one configuration schema of a run, presets, and the ``KEY=VALUE`` overrides.

A run's configuration is resolved once — schema defaults ← preset ← YAML file ← overrides —
validated, saved beside the run as ``config.yaml`` and passed down; nothing reads global state.

Presets live in ``rld/configs/*.yaml`` (package data). Each file describes one family
(``cifar100``, ``imagenet``, ``demo``): a ``base`` configuration, per-method defaults
(``methods``) and per-method training settings (``method_train``, for methods whose published
protocol differs), per-model and per-teacher adjustments (``models``, ``teachers``), the
teacher→student ``pairs`` and any explicitly named ``presets``. From them come the names
``FAMILY/MODEL/vanilla``, ``FAMILY/TEACHER-STUDENT/METHOD`` and ``FAMILY/NAME``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rld.errors import UserError


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar100 | imagefolder (alias imagenet)
    path: str | None = None  # CIFAR-100 folder / archive / .npz, or an ImageFolder root
    pipeline: str = "device"  # device (augmentation on the training device) | pil (DataLoader + transforms)
    num_workers: int = 4  # DataLoader workers (image folders and the pil pipeline)
    eval_batch_size: int = 256
    # Keep only the first N training images of each class (in the split's order: a fixed subset, the
    # same for every seed); the test split is unchanged. None keeps them all. Array data sets only.
    train_per_class: int | None = None
    image_size: int | None = None  # digits only: side of the upsampled images (default 32; 16 is 4× cheaper)


@dataclass
class ModelConfig:
    student: str = "resnet8"
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    dataset: str = "cifar100"  # architecture family: cifar100 (32×32 inputs) | imagenet (224×224)


@dataclass
class MethodConfig:
    """``name`` picks the method; every other field left ``None`` takes the method's default."""

    name: str = "vanilla"
    alpha: float | None = None
    beta: float | None = None
    temperature: float | None = None
    scd_temperature: float | None = None
    warmup_epochs: float | None = None
    mask: str | None = None
    logit_standardization: bool | None = None
    ls_temperature: float | None = None  # base temperature b of logit standardization (default 2)
    ls_weight: float | None = None  # its distillation weight w (default 9)
    ce_weight: float | None = None
    kd_weight: float | None = None
    rc_weight: float | None = None
    lambda1: float | None = None
    lambda2: float | None = None
    eta: float | None = None
    t_min: float | None = None  # CTKD: τ = t_min + t_range·sigmoid(θ)
    t_range: float | None = None
    ramp_epochs: float | None = None  # CTKD: epochs of the gradient-reversal ramp


@dataclass
class TrainConfig:
    epochs: int = 240
    batch_size: int = 64  # the global batch: divided among the processes under torchrun
    lr: float = 0.05
    lr_milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_step: int | None = None  # decay every lr_step epochs instead of at lr_milestones
    lr_decay: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 autocast of the student's forward (CPU and CUDA; opt-in, it changes results). The teacher's
    # classifier, the losses and every evaluation stay in float32.
    amp: bool = False
    channels_last: bool = True  # channels-last activations and weights (faster convolutions on CPU and GPU)
    deterministic: bool = True
    sync_bn: bool = True  # SyncBatchNorm under torchrun on CUDA (CPU/gloo: per-process statistics)
    # Teacher-logit cache (rld.fast.cache): the eval-mode teacher's logits per (image, augmentation view).
    teacher_cache: str = "off"  # off (teacher forward every step) | lazy (fill on first use) | full (build up front)
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/rld/teacher-logits (~/.cache/rld/teacher-logits)
    cache_precision: str = "float16"  # float16 | float32 storage of the cached logits
    # Whole-step execution (rld.engine.static): the step reads everything from device buffers and,
    # on CUDA, is replayed as CUDA graphs. auto = on for CUDA with the device-resident loader.
    static_step: str = "auto"  # auto | on | off


@dataclass
class RunConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- presets

FAMILIES = ("cifar100", "imagenet", "demo")


@cache
def _family(name: str) -> dict:
    text = resources.files("rld.configs").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text)


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


def _friendly(err: OmegaConfBaseException, where: str) -> UserError:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        valid = [k for k in _valid_keys() if k.startswith(section + ".")] if section else _valid_keys()
        return UserError(f"unknown config key {key!r} in {where}; valid keys: {', '.join(valid)}")
    return UserError(f"invalid value for {key or 'the configuration'} in {where}: {msg}")


def _parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise UserError(f"overrides must look like KEY=VALUE (e.g. method.beta=4), got {bad[0]!r}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise UserError(f"cannot parse overrides {overrides}: {str(err).splitlines()[0]}") from err


def load_yaml(path: Path) -> dict:
    """A YAML file holding a mapping (empty file: {}); UserError when unreadable or not a mapping."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data, model, method, train, seed)")
    return data


def _merged(layers: list[tuple[Any, str]]) -> DictConfig:
    cfg = OmegaConf.structured(RunConfig)
    for layer, where in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise _friendly(err, where) from err
    return cfg


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
        base = preset(user.pop("preset")) if "preset" in user else {}
        where = str(source)
    else:
        user, base, where = {}, preset(source), f"preset {source}"
    later = [(user, where), (_parse_overrides(list(overrides or [])), "the overrides")]
    cfg = _merged([(base, where), *later])
    if cfg.method.logit_standardization:
        from rld.methods import LS_TEMPERATURE, LS_WEIGHT, ls_adjustments

        b = LS_TEMPERATURE if cfg.method.ls_temperature is None else cfg.method.ls_temperature
        w = LS_WEIGHT if cfg.method.ls_weight is None else cfg.method.ls_weight
        base_method = _merged([(base, where)]).method
        base_method.name = cfg.method.name
        values = ls_adjustments(OmegaConf.to_container(base_method), b, w)
        adjusted = {"method": {**values, "ls_temperature": b, "ls_weight": w}}
        cfg = _merged([(base, where), (adjusted, "logit standardization"), *later])
    run = OmegaConf.to_object(cfg)
    validate(run)
    return run


def validate(cfg: RunConfig) -> None:
    """Value checks the types cannot express; raises UserError naming the key."""
    t = cfg.train
    # YAML reads on/off as booleans (and OmegaConf may keep them as "True"/"False")
    t.static_step = {"true": "on", "false": "off"}.get(str(t.static_step).lower(), t.static_step)
    checks = [
        (t.epochs > 0, "train.epochs must be > 0", t.epochs),
        (t.batch_size > 0, "train.batch_size must be > 0", t.batch_size),
        (t.lr > 0, "train.lr must be > 0", t.lr),
        (0 < t.lr_decay <= 1, "train.lr_decay must be in (0, 1]", t.lr_decay),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0", t.weight_decay),
        (0 <= t.momentum < 1, "train.momentum must be in [0, 1)", t.momentum),
        (t.lr_step is None or t.lr_step > 0, "train.lr_step must be > 0", t.lr_step),
        (all(m > 0 for m in t.lr_milestones), "train.lr_milestones must be positive epochs", t.lr_milestones),
        (cfg.seed >= 0, "seed must be >= 0", cfg.seed),
        (cfg.data.eval_batch_size > 0, "data.eval_batch_size must be > 0", cfg.data.eval_batch_size),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0", cfg.data.num_workers),
        (
            cfg.data.train_per_class is None or cfg.data.train_per_class > 0,
            "data.train_per_class must be > 0",
            cfg.data.train_per_class,
        ),
        # teacher-logit cache (rld.fast.cache)
        (t.teacher_cache in ("off", "lazy", "full"), "train.teacher_cache must be off, lazy or full", t.teacher_cache),
        (t.static_step in ("auto", "on", "off"), "train.static_step must be auto, on or off", t.static_step),
        (
            t.cache_precision in ("float16", "float32"),
            "train.cache_precision must be float16 or float32",
            t.cache_precision,
        ),
    ]
    for ok, what, value in checks:
        if not ok:
            raise UserError(f"{what}, got {value}")
    from rld.methods import method_params

    method_params(cfg.method)  # raises for unknown methods, parameters they do not take, bad values


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


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict) -> RunConfig:
    """A RunConfig from a saved ``config.yaml`` / checkpoint dictionary."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), data))
    except OmegaConfBaseException as err:
        raise _friendly(err, "the saved configuration") from err
