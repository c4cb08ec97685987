"""What rld.config says and writes, compared whole: the messages of refused values, overrides and
files, the examples it gives, the quoting of text values, the schedule `--epochs` scales, the
precision summary, and saved configurations read back."""

from __future__ import annotations

import pytest
import yaml

from rld.config import (
    _close_matches,
    _without_foreign_method_keys,
    example_value,
    from_dict,
    key_help,
    load_yaml,
    precision_summary,
    resolve,
    schedule_overrides,
    text_override,
    to_yaml,
)
from rld.errors import UserError

TRAIN_KEYS = (
    "train.epochs, train.batch_size, train.lr, train.lr_milestones, train.lr_step, train.lr_decay, train.schedule, "
    "train.warmup_epochs, train.optimizer, train.weight_decay, train.momentum, train.nesterov, train.grad_clip_norm, "
    "train.device, train.amp, train.channels_last, train.deterministic, train.sync_bn, train.teacher_cache, "
    "train.cache_dir, train.cache_precision, train.cache_topk, train.cache_inexact, train.static_step, "
    "train.batch_students, train.stop_on_nonfinite, train.checkpoint_every_steps, train.loggers, train.experiment"
)
KD_TAKES = "temperature, ce_weight, kd_weight, logit_standardization, ls_temperature, ls_weight"


def refusal(source: str, overrides: list[str]) -> str:
    with pytest.raises(UserError) as err:
        resolve(source, overrides)
    return str(err.value)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("[a", "unclosed '['"),
        ("{a", "unclosed '{'"),
        ('"abc', "unclosed quote"),
        ("%x", "'%' cannot start a value (quote the value)"),
        ("*x", "'*' marks a YAML alias (quote the value)"),
        ("@x", "a character that cannot start a value (quote the value)"),
        ("`x", "a character that cannot start a value (quote the value)"),
        ("!!python/object:os.system x", "a YAML tag ('!!…') is not a value"),
        ("a: b: c", "mapping values are not allowed in this context"),
        ("]", "while parsing a block node: did not find expected node content"),
        ("[a, [b", "unclosed '['"),
        ("a\x07b", "unacceptable character #x0007: control characters are not allowed"),
    ],
)
def test_a_value_yaml_cannot_read_is_refused_with_what_is_wrong(value, problem):
    assert refusal("demo/kd", [f"model.student={value}"]) == (
        f"{f'model.student={value}'!r} is not a valid value: {problem}; e.g. model.student=resnet8"
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["method.temprature=2"],
            "unknown config key 'method.temprature' in the overrides (did you mean method.temperature, "
            f"method.ls_temperature?); method 'kd' takes: {KD_TAKES}",
        ),
        (["method.xyz=2"], f"method 'kd' does not take xyz (it takes: {KD_TAKES}; set in the overrides)"),
        (
            ["method.logit_standardisation=true"],
            "unknown config key 'method.logit_standardisation' in the overrides (did you mean "
            f"method.logit_standardization?); method 'kd' takes: {KD_TAKES}",
        ),
        (
            ["method.lsweight=2"],
            "unknown config key 'method.lsweight' in the overrides (did you mean method.ls_weight, "
            f"method.kd_weight, method.ce_weight?); method 'kd' takes: {KD_TAKES}",
        ),
        (
            ["train.lrr=1"],
            "unknown config key 'train.lrr' in the overrides (did you mean train.lr, train.lr_step, train.loggers?); "
            f"valid keys: {TRAIN_KEYS}",
        ),
        (
            ["train.x.y=1"],
            "unknown config key 'train.x' in the overrides (did you mean train.lr, train.amp, train.epochs?); "
            f"valid keys: {TRAIN_KEYS}",
        ),
        (
            ["method.name=rkd", "method.ee_weight=1"],
            "unknown config key 'method.ee_weight' in the overrides (did you mean method.ce_weight, "
            "method.feat_weight, method.angle_weight?); method 'rkd' takes: ce_weight, feat_weight, distance_weight, "
            "angle_weight",
        ),
        (  # four names are close: the three closest are offered
            ["method.name=rc", "method.e_weight=1"],
            "unknown config key 'method.e_weight' in the overrides (did you mean method.ce_weight, method.rc_weight, "
            "method.ls_weight?); method 'rc' takes: temperature, ce_weight, kd_weight, rc_weight, "
            "logit_standardization, ls_temperature, ls_weight",
        ),
        (["=4"], "overrides must look like KEY=VALUE (e.g. method.beta=4), got '=4'"),
        (["train.lr=1", " =4=5"], "overrides must look like KEY=VALUE (e.g. method.beta=4), got ' =4=5'"),
        (
            ["train.lr_milestones=5"],
            "train.lr_milestones takes a list, e.g. train.lr_milestones=[5,7] (in the overrides)",
        ),
        (
            ["train.epochs=abc"],
            "invalid value for train.epochs in the overrides: it takes int "
            "(Value 'abc' of type 'str' could not be converted to Integer)",
        ),
        (["data=5"], "'data=5': data is a section, not a value; set its keys, e.g. data.name=…"),
    ],
)
def test_refused_keys_and_values_name_what_is_valid(overrides, message):
    assert refusal("demo/kd", overrides) == message


def test_a_method_without_logit_standardization_does_not_offer_its_keys():
    assert refusal("demo/at", ["method.ls_wieght=2"]) == (
        "unknown config key 'method.ls_wieght' in the overrides (did you mean method.ce_weight, "
        "method.feat_weight?); method 'at' takes: ce_weight, feat_weight, p"
    )
    assert refusal("demo/at", ["method.zzz=1"]) == (
        "method 'at' does not take zzz (it takes: ce_weight, feat_weight, p; set in the overrides)"
    )


def test_a_saved_configuration_is_read_back_and_old_method_sections_too():
    saved = yaml.safe_load(to_yaml(resolve("demo/kd", ["method.temperature=3"])))
    assert from_dict(saved) == resolve("demo/kd", ["method.temperature=3"])
    # a section saved when every method held every key: the others' keys are null and are dropped
    old = {**saved, "method": {**saved["method"], "alpha": None, "beta": None}}
    assert from_dict(old).method == resolve("demo/kd", ["method.temperature=3"]).method
    # ... but a value set for a key the method does not take is refused
    wrong = {**saved, "method": {**saved["method"], "alpha": 1.0}}
    with pytest.raises(UserError) as err:
        from_dict(wrong)
    assert str(err.value) == f"method 'kd' does not take alpha (it takes: {KD_TAKES}; set in the saved configuration)"
    # null for a key the method takes is a value, and a wrong one
    null = {**saved, "method": {**saved["method"], "temperature": None}}
    with pytest.raises(UserError) as err:
        from_dict(null)
    assert str(err.value) == (
        "invalid value for method.temperature in the saved configuration: it takes float "
        "(Incompatible value 'None' for field of type 'float')"
    )
    for method in ({}, None):
        plain = {**saved, "method": method}
        assert from_dict(plain).method.name == "vanilla"
        assert from_dict(plain).train == resolve("demo/kd", []).train
    nameless = {**saved, "method": {"ce_weight": 0.5, "temperature": None}}
    assert from_dict(nameless).method.name == "vanilla"
    assert from_dict(nameless).method.ce_weight == 0.5


def test_foreign_method_keys_are_dropped_from_a_layer_of_any_kind():
    from omegaconf import OmegaConf

    layer = {"train": {"lr": 0.1}, "method": {"name": "kd", "alpha": 1, "temperature": 2}}
    expected = {"train": {"lr": 0.1}, "method": {"name": "kd", "temperature": 2}}
    assert _without_foreign_method_keys(layer, {"name", "temperature"}) == expected
    assert _without_foreign_method_keys(OmegaConf.create(layer), {"name", "temperature"}) == expected
    assert _without_foreign_method_keys({"train": {"lr": 0.1}}, {"name"}) == {"train": {"lr": 0.1}}
    assert _without_foreign_method_keys(["a"], {"name"}) == ["a"]


@pytest.mark.parametrize(
    "key, example",
    [
        ("data", "data.name=…"),
        ("model", "model.student=…"),
        ("method", "method.name=…"),
        ("train", "train.epochs=…"),
        ("train.amp", "train.amp=false"),
        ("train.nesterov", "train.nesterov=false"),
        ("train.lr_milestones", "train.lr_milestones=[150,180,210]"),
        ("train.loggers", "train.loggers=[tensorboard]"),
        ("train.epochs", "train.epochs=240"),
        ("train.lr", "train.lr=0.05"),
        ("data.name", "data.name=digits"),
        ("train.lr_step", "train.lr_step=1"),
        ("train.grad_clip_norm", "train.grad_clip_norm=0.5"),
        ("data.path", "data.path=NAME"),
        ("method.name", "method.name=vanilla"),
        ("seed", "seed=0"),
        ("no.such.key", "no.such.key=NAME"),
    ],
)
def test_example_values_follow_the_type_and_default(key, example):
    assert example_value(key) == example


def test_an_empty_list_default_is_shown_with_an_example_list(monkeypatch):
    import rld.config as config

    types = {**config.key_types(), "x.empty": ("list[int]", []), "x.none": ("list[int] | None", None)}
    monkeypatch.setattr(config, "key_types", lambda: types)
    assert example_value("x.empty") == "x.empty=[5,7]"
    assert example_value("x.none") == "x.none=[5,7]"
    types["x.blank"] = ("str", "")
    assert example_value("x.blank") == "x.blank=NAME"
    types["x.flag"] = ("bool | None", None)
    assert example_value("x.flag") == "x.flag=true"


def test_close_matches_are_the_three_nearest():
    assert _close_matches("abcd", ["abce", "abcf", "abcg", "abch", "abcx"]) == " (did you mean abcx, abch, abcg?)"
    assert _close_matches("abcd", ["abce"]) == " (did you mean abce?)"
    assert _close_matches("zzzz", ["abce"]) == ""
    assert _close_matches("abcdefgh", ["abcdwxyz"]) == ""  # ratio 0.5, under the 0.6 cut-off
    assert _close_matches("abcdefghij", ["abcdefgxyz"]) == " (did you mean abcdefgxyz?)"  # 0.7


def test_key_help_lists_the_methods_and_joins_the_help_of_each_method():
    from rld.methods import METHODS

    helps = key_help()
    assert helps["method.name"] == " | ".join(METHODS)
    assert helps["method.name"].startswith("vanilla | kd | dkd | rld | ")
    assert helps["seed"] == "random seed of the run (weights, data order, augmentation)"
    # a method's own key without a shared help: each method's text, by method name, in method order
    assert helps["method.p"] == "at: exponent of the attention maps (mean_c f^p)"
    assert helps["method.feat_weight"].startswith(
        "fitnet: weight of the hint (MSE) term; at: weight of the attention-map term; rkd: weight of the "
    )
    assert helps["method.feat_weight"].count("; ") == 7
    # the shared help of a key is kept as it is
    assert helps["method.ls_weight"] == "logit standardization: weight w (default 9)"
    assert all(v for v in helps.values())


@pytest.mark.parametrize(
    "text, quoted",
    [
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        (" ~", '" ~"'),
        ("\x1f", '"\\u001f"'),
        ("\x7f", '"\\u007f"'),
        ("é", '"\\u00e9"'),
        ("\uffff", '"\\uffff"'),
        ("\U00010000", '"\\U00010000"'),
        ("aXb", '"aXb"'),
    ],
)
def test_text_values_are_quoted_so_that_yaml_reads_them_back_exactly(text, quoted):
    from rld.config import _yaml_quoted

    assert _yaml_quoted(text) == quoted
    assert yaml.safe_load(quoted) == text


@pytest.mark.parametrize(
    "value, override",
    [
        ("/data/cifar", "data.path=/data/cifar"),
        ("[x]", 'data.path="[x]"'),
        ("a #b", 'data.path="a #b"'),
        ("${x}", 'data.path="\\\\${x}"'),
        ("é/x", "data.path=é/x"),
        ('a"${x}', 'data.path="a\\"\\\\${x}"'),
    ],
)
def test_text_overrides_quote_only_what_yaml_would_read_otherwise(value, override):
    assert text_override("data.path", value) == override


@pytest.mark.parametrize("text", ["${x}", "a\\${x}", "a\\\\${x}${y}", '"q${y}z', "a: b", "[x]", "plain", "7"])
def test_text_overrides_read_back_as_the_text_itself(text):
    from omegaconf import OmegaConf

    override = text_override("data.path", text)
    assert OmegaConf.from_dotlist([override]).data.path == text


def test_epochs_scale_the_schedule_warm_ups_and_ramps_except_what_is_kept():
    rld = resolve("cifar100/resnet32x4-resnet8x4/rld", [])
    assert (rld.train.epochs, rld.train.lr_milestones, rld.method.warmup_epochs) == (240, [150, 180, 210], 20.0)
    assert schedule_overrides(rld, 24) == [
        "train.epochs=24",
        "train.lr_milestones=[15,18,21]",
        "method.warmup_epochs=2",
    ]
    assert schedule_overrides(rld, 1) == [
        "train.epochs=1",
        "train.lr_milestones=[1,1,1]",
        "method.warmup_epochs=0.0833333",
    ]
    assert schedule_overrides(rld, 240) == ["train.epochs=240"]
    assert schedule_overrides(rld, 480) == [
        "train.epochs=480",
        "train.lr_milestones=[300,360,420]",
        "method.warmup_epochs=40",
    ]
    assert schedule_overrides(rld, 24, keep={"method.warmup_epochs"}) == [
        "train.epochs=24",
        "train.lr_milestones=[15,18,21]",
    ]
    ctkd = resolve("cifar100/resnet32x4-resnet8x4/ctkd", [])
    assert schedule_overrides(ctkd, 24) == ["train.epochs=24", "train.lr_milestones=[15,18,21]", "method.ramp_epochs=1"]
    stepped = resolve("demo/kd", ["train.lr_step=30", "train.warmup_epochs=5"])
    assert stepped.train.epochs == 10
    assert schedule_overrides(stepped, 30) == ["train.epochs=30", "train.lr_step=90", "train.warmup_epochs=15"]
    assert schedule_overrides(stepped, 1) == ["train.epochs=1", "train.lr_step=3", "train.warmup_epochs=0.5"]
    short = resolve("demo/kd", ["train.lr_step=3"])
    assert schedule_overrides(short, 1) == ["train.epochs=1", "train.lr_step=1"]  # never below 1
    # a method without a warm-up: its (absent) key is not scaled
    kd = resolve("cifar100/resnet32x4-resnet8x4/kd", [])
    assert schedule_overrides(kd, 24) == ["train.epochs=24", "train.lr_milestones=[15,18,21]"]
    for bad in (0, -3):
        with pytest.raises(UserError) as err:
            schedule_overrides(rld, bad)
        assert str(err.value) == f"--epochs must be >= 1, got {bad}"


def test_the_precision_summary_names_each_part():
    assert precision_summary(resolve("demo/kd", [])) == {
        "student": "float32",
        "teacher_logits": "float32",
        "losses": "float32",
        "evaluation": "float32",
    }
    assert precision_summary(resolve("demo/kd", ["train.amp=true"])) == {
        "student": "bf16 autocast",
        "teacher_logits": "float32 (CUDA: bf16 body, float32 classifier)",
        "losses": "float32",
        "evaluation": "float32",
    }


def test_config_files_that_cannot_be_used_are_refused_with_the_reason(tmp_path):
    def refused(name: str, content: bytes | None) -> str:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(UserError) as err:
            load_yaml(path)
        return str(err.value).replace(str(tmp_path), "DIR")

    assert refused("a.yaml", b"train:\n  lr: [1,\n") == (
        "config file DIR/a.yaml is not valid YAML at line 3, column 1: expected the node content, but found "
        "'<stream end>'"
    )
    assert refused("f.yaml", b"a: !!python/name:os.system\n") == (
        "config file DIR/f.yaml is not valid YAML at line 1, column 4: could not determine a constructor for "
        "the tag 'tag:yaml.org,2002:python/name:os.system'"
    )
    assert refused("b.yaml", b"- 1\n- 2\n") == (
        "config file DIR/b.yaml must hold a mapping of sections (data, model, method, train, seed)"
    )
    assert refused("c.yaml", b"train.lr.x: 1\n") == (
        "config file DIR/c.yaml: 'train.lr.x' is a dotted key; write nested sections (train: {lr.x: …}) or give it "
        "as a KEY=VALUE override"
    )
    assert refused("missing.yaml", None) == "cannot read config file DIR/missing.yaml: No such file or directory"
    assert refused("e.yaml", b"\xff\xfe") == "config file DIR/e.yaml is not UTF-8 text (byte 0: invalid start byte)"
    assert refused("g.yaml", b"train:\n  x: a\x07b\n") == (  # a reader's error: no line, no column
        "config file DIR/g.yaml is not valid YAML: unacceptable character #x0007: special characters are not allowed"
    )
    (tmp_path / "empty.yaml").write_bytes(b"")
    assert load_yaml(tmp_path / "empty.yaml") == {}


def test_storage_forms_suit_the_data_set_the_cache_mode_and_the_method(tmp_path):
    folder = ["data.name=ImageFolder", f"data.path={tmp_path}"]  # the name in any case
    lazy = "train.teacher_cache=lazy is for the array data sets (digits, cifar100); for image folders fill the store "
    lazy += "once with `rld cache PRESET … --epochs E` and train with train.teacher_cache=full"
    assert refusal("demo/kd", [*folder, "train.teacher_cache=lazy"]) == lazy
    inexact = (
        "teacher outputs stored as {form} change the loss or gradient of method '{method}' by more than 0.001 / 0.01 "
        "relative (benchmarks/logit_forms.py): store them as float16, or set train.cache_inexact=true to train on "
        "them anyway"
    )
    full = [*folder, "train.teacher_cache=full"]
    assert refusal("demo/kd", [*full, "train.cache_precision=int8", "method.name=lr"]) == inexact.format(
        form="int8", method="lr"
    )
    assert refusal("demo/kd", [*full, "train.cache_precision=topk"]) == inexact.format(form="topk", method="kd")
    assert resolve("demo/kd", [*full, "train.cache_precision=int8"]).train.cache_precision == "int8"
    assert resolve("demo/kd", [*full, "train.cache_precision=topk", "train.cache_inexact=true"]).train.cache_inexact
    # no teacher, or no stored outputs read: nothing to check
    assert resolve("demo/vanilla", [*full, "train.cache_precision=topk"]).train.teacher_cache == "full"
    assert resolve("demo/kd", [*folder, "train.cache_precision=topk"]).train.teacher_cache == "off"
    for data in (["data.name=digits"], ["data.name=cifar100", f"data.path={tmp_path}"]):
        name = data[0].split("=")[1]
        assert refusal("demo/kd", [*data, "train.cache_precision=int8"]) == (
            f"train.cache_precision=int8 is a storage form of image-folder stores; the teacher-logit cache of {name} "
            "stores float16 or float32"
        )


@pytest.mark.parametrize(
    "override, key",
    [("method.beta=4", "method.beta"), (" train.lr = 0.1", "train.lr"), ("data.path=a=b", "data.path"), ("a==", "a")],
)
def test_the_key_of_an_override_is_what_comes_before_the_first_equals_sign(override, key):
    from rld.config import override_key

    assert override_key(override) == key


@pytest.mark.parametrize("override", ["method.beta", "=4", " =4", ""])
def test_an_override_without_a_key_is_refused(override):
    from rld.config import override_key

    with pytest.raises(UserError) as err:
        override_key(override)
    assert str(err.value) == f"overrides must look like KEY=VALUE (e.g. method.beta=4), got {override!r}"


def test_flags_become_overrides_of_their_keys_and_clash_with_the_same_key():
    from rld.config import resolve_with_flags, with_flags

    assert with_flags(["method.beta=4"], {"seed": 3, "data.path": "a b", "train.device": None}) == [
        "method.beta=4",
        "seed=3",
        "data.path=a b",
    ]
    assert with_flags([], {"data.path": "7"}) == ['data.path="7"']  # text, never a number
    for key, flag in (("seed", "--seed"), ("data.path", "--data"), ("other.key", "other.key")):
        with pytest.raises(UserError) as err:
            with_flags([f"{key}=1"], {key: "2"})
        assert str(err.value) == f"{flag} and {key}=… both set {key}; give one of them"
    with pytest.raises(UserError) as err:
        resolve_with_flags("demo/kd", ["train.epochs=3"], epochs=4)
    assert str(err.value) == "--epochs and train.epochs=… both set train.epochs; give one of them"
    scaled = resolve_with_flags("cifar100/resnet32x4-resnet8x4/rld", ["method.alpha=2"], {"seed": 5}, epochs=24)
    assert (scaled.seed, scaled.method.alpha, scaled.train.epochs, scaled.train.lr_milestones) == (
        5,
        2.0,
        24,
        [15, 18, 21],
    )
    assert scaled.method.warmup_epochs == 2.0
    kept = resolve_with_flags("cifar100/resnet32x4-resnet8x4/rld", ["method.warmup_epochs=7"], epochs=24)
    assert kept.method.warmup_epochs == 7.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train={lr: [1,2]}", "'train={lr: [1,2]}': train.lr takes a float, not a list; e.g. train.lr=0.05"),
        (
            "train={lr_step: [1,2]}",
            "'train={lr_step: [1,2]}': train.lr_step takes a int, not a list; e.g. train.lr_step=1",
        ),
        ("train.lr_step={a: 1}", "'train.lr_step={a: 1}': train.lr_step takes a int, not a map; e.g. train.lr_step=1"),
        ("train.amp=[1]", "'train.amp=[1]': train.amp takes a bool, not a list; e.g. train.amp=false"),
        (
            "model.student=[a]",
            "'model.student=[a]': model.student takes a name, not a list; e.g. model.student=resnet8",
        ),
        (
            "model={student: {a: 1}}",
            "'model={student: {a: 1}}': model.student takes a name, not a map; e.g. model.student=resnet8",
        ),
        ("method.name=5", "method.name takes a method name, e.g. method.name=kd; got 5 in the overrides"),
        (
            "train.lr=${train.nope}",
            "cannot resolve the interpolation in train.lr: Interpolation key 'train.nope' not found; give a plain "
            "value, e.g. train.lr=0.05",
        ),
        (
            "train.loggers=[tensorboard, '\\${x}']",
            "train.loggers=${x}: a value cannot hold '${' (a configuration reads '${…}' as an interpolation); rename "
            "the file or folder, or give a plain value",
        ),
    ],
)
def test_values_of_the_wrong_kind_are_refused_naming_the_nested_key(override, message):
    assert refusal("demo/kd", [override]) == message


def test_an_override_keeps_every_equals_sign_after_the_first():
    assert resolve("demo/kd", ["train.experiment=a=b"]).train.experiment == "a=b"


def test_a_method_named_by_an_override_takes_only_its_own_keys_from_that_override():
    # the preset's keys of another method are dropped; the overrides' are the user's: refused
    assert resolve("demo/kd", ["method.name=dkd", "method.alpha=3"]).method.alpha == 3.0
    assert refusal("demo/kd", ["method.name=dkd", "method.kd_weight=1"]) == (
        "unknown config key 'method.kd_weight' in the overrides (did you mean method.ls_weight, method.ce_weight?); "
        "method 'dkd' takes: alpha, beta, temperature, warmup_epochs, ce_weight, logit_standardization, "
        "ls_temperature, ls_weight"
    )


def test_logit_standardization_adjusts_the_values_of_the_method_finally_named():
    dkd = resolve("cifar100/resnet32x4-resnet8x4/kd", ["method.name=dkd", "method.logit_standardization=true"]).method
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.ce_weight) == (9.0, 72.0, 2.0, 0.1)
    assert (dkd.ls_temperature, dkd.ls_weight) == (2.0, 9.0)
    kd = resolve("cifar100/resnet32x4-resnet8x4/kd", ["method.logit_standardization=true", "method.ls_weight=3"]).method
    assert (kd.temperature, kd.kd_weight, kd.ls_temperature, kd.ls_weight) == (2.0, 3.0, 2.0, 3.0)
    kd = resolve("cifar100/resnet32x4-resnet8x4/kd", ["method.logit_standardization=true", "method.ls_temperature=3"])
    assert (kd.method.temperature, kd.method.kd_weight, kd.method.ls_temperature, kd.method.ls_weight) == (
        3.0,
        9.0,
        3.0,
        9.0,
    )


def test_config_files_by_extension_or_by_being_a_file(tmp_path):
    (tmp_path / "a.yml").write_text("preset: demo/kd\ntrain: {lr: 0.2}\n")
    a = resolve(str(tmp_path / "a.yml"))
    assert (a.train.lr, a.method.name) == (0.2, "kd")
    (tmp_path / "noext").write_text("preset: demo/kd\ntrain: {lr: 0.3}\n")
    assert resolve(str(tmp_path / "noext")).train.lr == 0.3
    (tmp_path / "b.yaml").write_text("train: {lr: 0.2}\n")  # no preset: the defaults
    b = resolve(str(tmp_path / "b.yaml"))
    assert (b.method.name, b.model.student, b.train.lr) == ("vanilla", "resnet8", 0.2)
    for name in ("missing.yaml", "missing.yml"):
        assert refusal(str(tmp_path / name), []) == (
            f"cannot read config file {tmp_path / name}: No such file or directory"
        )
    (tmp_path / "c.yaml").write_text("preset: 5\n")
    assert refusal(str(tmp_path / "c.yaml"), []) == (
        f"config file {tmp_path / 'c.yaml'}: preset takes a preset name (e.g. preset: demo/rld), got 5"
    )
    (tmp_path / "d.yaml").write_text("preset: demo/kd\ntrain: {lr: abc}\n")
    assert refusal(str(tmp_path / "d.yaml"), []) == (
        f"invalid value for train.lr in {tmp_path / 'd.yaml'}: it takes float (Value 'abc' of type 'str' could not "
        "be converted to Float)"
    )


def test_a_preset_is_a_copy_that_the_caller_may_change():
    from rld.config import preset

    first = preset("demo/kd")
    first["train"]["lr"] = 99.0
    first["method"]["temperature"] = 99.0
    assert preset("demo/kd")["train"]["lr"] != 99.0
    assert preset("demo/kd")["method"]["temperature"] == 4.0


def test_methods_that_cannot_use_a_cache_train_without_one():
    assert resolve("demo/fitnet", []).train.teacher_cache == "off"
    assert resolve("demo/mlkd", []).train.teacher_cache == "off"
    assert resolve("demo/crld", []).train.teacher_cache == "off"
    assert refusal("demo/kd", ["train.cache_topk=0"]) == "train.cache_topk must be >= 1, got 0"
    assert resolve("demo/kd", ["train.cache_topk=1"]).train.cache_topk == 1


def test_vanilla_presets_start_from_the_family_and_the_students_settings():
    c = resolve("cifar100/resnet8x4/vanilla")
    assert (c.model.student, c.model.teacher, c.method.name, c.data.name) == ("resnet8x4", None, "vanilla", "cifar100")
    assert (c.train.epochs, c.train.lr, c.train.batch_size, c.train.lr_milestones) == (240, 0.05, 64, [150, 180, 210])
    shuffle = resolve("cifar100/ShuffleV1/vanilla")
    assert (shuffle.model.student, shuffle.train.lr, shuffle.train.epochs) == ("ShuffleV1", 0.01, 240)
    imagenet = resolve("imagenet/ResNet18/vanilla")
    assert (imagenet.data.name, imagenet.train.lr, imagenet.train.epochs, imagenet.train.batch_size) == (
        "imagenet",
        0.2,
        100,
        512,
    )


def test_epochs_scale_what_the_overrides_make_of_the_run():
    from rld.config import resolve_with_flags

    # the method an override names is the one whose warm-up is scaled
    assert (
        resolve_with_flags("cifar100/resnet32x4-resnet8x4/kd", ["method.name=rld"], epochs=24).method.warmup_epochs == 2
    )
    none = resolve("cifar100/resnet32x4-resnet8x4/rld", ["method.warmup_epochs=0"])
    assert schedule_overrides(none, 24) == ["train.epochs=24", "train.lr_milestones=[15,18,21]"]


def test_pair_presets_name_their_teacher_and_student_and_take_each_layer():
    from rld.config import list_presets, preset

    pairs = [n for n in list_presets() if n.count("/") == 2 and "-" in n.split("/")[1]]
    assert len(pairs) > 300
    for name in pairs:
        family, pair, method = name.split("/")
        teacher, student = pair.split("-")
        p = preset(name)
        assert (p["model"]["teacher"], p["model"]["student"], p["method"]["name"]) == (teacher, student, method), name
        assert p["model"]["dataset"] == family
        assert "epochs" in p["train"] and "batch_size" in p["train"], name
    for name in [n for n in list_presets() if n.endswith("/vanilla") and n.count("/") == 2 and "/few/" not in n]:
        assert preset(name)["model"]["student"] == name.split("/")[1], name
    # the layers, latest winning: the student's settings, the method's, the pair's for the method
    assert resolve("cifar100/resnet32x4-ShuffleV2/kd").train.lr == 0.01  # ShuffleV2's train_cfg
    assert resolve("cifar100/resnet32x4-resnet8x4/sd_kd").train.grad_clip_norm == 40.0  # method_train
    mlkd = resolve("cifar100/resnet32x4-resnet8x4/mlkd").train
    assert (mlkd.epochs, mlkd.lr) == (240, 0.025)  # method_train
    mlkd = resolve("cifar100/resnet32x4-ShuffleV2/mlkd").train
    assert (mlkd.epochs, mlkd.lr) == (960, 0.01)  # pair_train over method_train and the student's
    assert resolve("cifar100/resnet32x4-resnet8x4/kd").train.grad_clip_norm is None


def test_a_saved_section_that_is_not_a_section_is_refused():
    saved = yaml.safe_load(to_yaml(resolve("demo/kd", [])))
    with pytest.raises(UserError) as err:
        from_dict({**saved, "train": 5})
    assert str(err.value) == (
        "invalid value for the configuration in the saved configuration: Merge error: int is not a subclass of "
        "TrainConfig. value: 5"
    )
    with pytest.raises(UserError) as err:
        from_dict({**saved, "seed": "x"})
    assert str(err.value) == (
        "invalid value for seed in the saved configuration: it takes int (Value 'x' of type 'str' could not be "
        "converted to Integer)"
    )


@pytest.mark.parametrize("value", ["${", "${a"])
def test_an_override_omegaconf_cannot_read_is_refused_with_its_first_line(value):
    assert refusal("demo/kd", [f"model.student={value}"]) == (
        f"cannot read override 'model.student={value}': no viable alternative at input '{value}'"
    )


def test_overrides_that_contradict_each_other_are_refused_together():
    assert refusal("demo/kd", ["train.loggers=[a]", "train.loggers.x=1"]) == (
        "the overrides train.loggers=[a] train.loggers.x=1 contradict each other: Cannot merge incompatible "
        "container types"
    )
