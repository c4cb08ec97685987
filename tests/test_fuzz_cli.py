"""Bad input never ends in a traceback: generated ``KEY=VALUE`` overrides, flags, command lines and
damaged files run through the ``rld`` entry point in-process. Every case must end in a documented
exit status (0 with nothing on stderr, or 2 with one line on stderr; 3 for a sweep that diverged),
raise nothing, print no warning, and leave the folder it was pointed at as it was: the same files,
bytes, inodes and modification times (a file written again with the same bytes is a change too).

* 2,000 override and flag cases of ``rld train --dry-run``;
* an eighth of that each: config files, run folders' config.yaml and checkpoints of any bytes;
  command lines of the other commands; CSV manifests and split.json;
* a twentieth: the commands that train (rld sweep, tune, demo, cache, plot) with generated mistakes,
  most refused before training, the others training a tiny run;
* a fortieth each: damaged exports and run checkpoints (cut short, bytes flipped or overwritten)
  read by rld predict, eval, export and train --resume, and damaged teacher checkpoints;
  teacher-logit caches with a damaged file used by rld cache and by runs with train.teacher_cache
  full or lazy;
* an eightieth: files that are not images in the image folders or manifests a run trains on and in
  the images rld predict reads.

The cases are derandomized (the same ones on every run, in CI too) and no example database is
written; ``RLD_FUZZ_EXAMPLES=N`` runs N override cases (and the same fractions of the others)
instead of 2,000; ``RLD_FUZZ_SHRINK=0`` reports failures as found, without looking for the smallest
(quicker while fixing them); ``RLD_FUZZ_RANDOM=1`` draws other cases on every run (exploring beyond
the fixed ones)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import folder_snapshot
from rld.cli import main
from rld.config import key_types
from rld.methods import list_methods

FUZZ = settings(
    max_examples=int(os.environ.get("RLD_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    derandomize=os.environ.get("RLD_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[p for p in Phase if p != Phase.shrink or os.environ.get("RLD_FUZZ_SHRINK") != "0"],
)

SECTIONS = ["seed", "data", "model", "method", "train"]
KEYS = st.one_of(
    st.sampled_from(sorted(key_types())),
    st.sampled_from(sorted(k for k, (kind, _) in key_types().items() if "float" in kind)),
    st.sampled_from(SECTIONS),
    st.from_regex(r"[a-z_.\[\]${}0-9]{1,12}", fullmatch=True),
)
SPECIAL = [
    "nan", "inf", "-inf", ".nan", ".inf", "-.inf", "NaN", "1e999", "-1e999", "true", "null", "~", "[]", "{}",
    "[1,2", "{a: 1}", "{name: kd}", "[[1]]", "${oc.env:NOPE}", "${oc.env:HOME}", "${train.lr}", "${seed}",
    "${", "???", "%s", '"', "'", "!!python/object:os.system", "&a", "*a", "|", ">", "- 1", "? x", "@x", "`x`",
    "1:2", "a: b", "#", "0x10", "1_000", "+1", "-0", "1.5", "0.5", "2", "0", "-1", "yes", "off", "on",
]  # fmt: skip
WORDS = [*list_methods(), "cpu", "auto", "sgd", "adamw", "cosine", "step", "lazy", "full", "ge", "digits", "cifar100"]
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.sampled_from(WORDS),
    st.text(alphabet="[]{}:,'\"%$!&*#|>-?@ 0123456789.eE+_\\naif", max_size=12),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-5, 300), max_size=4).map(lambda xs: "[" + ",".join(map(str, xs)) + "]"),
)
OVERRIDES = st.lists(st.tuples(KEYS, VALUES).map("=".join), min_size=1, max_size=2)
FLAG_VALUES = st.one_of(st.integers(-3, 30).map(str), st.sampled_from(["x", "", "1.5", "nan", "cpu", "cuda:9", "-"]))
FLAGS = st.lists(
    st.tuples(st.sampled_from(["--epochs", "--seed", "--device", "--teacher", "--data"]), FLAG_VALUES), max_size=2
)
PRESETS = st.sampled_from(
    ["demo/rld", "demo/kd", "demo/dkd", "demo/vanilla", "cifar100/resnet56-resnet20/ctkd", "demo/nope"]
)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: its exit status (SystemExit included), stdout and stderr. A warning
    that the ``rld`` process would print (Python's default filters) counts as stderr output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", hidden)
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own exits (status 2 for bad arguments)
            code = stop.code if isinstance(stop.code, int) else 1
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in seen)
    return code, out.getvalue(), shown + err.getvalue()


def assert_documented(code: int, out: str, err: str, statuses: tuple[int, ...] = (0, 2)) -> None:
    """Done (status 0, nothing on stderr, no NaN or infinity accepted) or a user error (status 2,
    one line ``rld…: error: …``; 3, a run that diverged, says so in one line too)."""
    assert code in statuses, (code, err)
    if code == 0:
        assert err == "", err
        assert not re.search(r"(?i)[-+]?\.(inf|nan)\b", out), out
        return
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("rld: error: ") or (lines[0].startswith("rld ") and ": error: " in lines[0]), err


@FUZZ
@given(preset=PRESETS, overrides=OVERRIDES, flags=FLAGS)
def test_generated_overrides_and_flags_end_in_a_documented_status(preset, overrides, flags):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        before = folder_snapshot(Path(tmp))
        argv = ["train", preset, *overrides, *[x for flag in flags for x in flag], "--out", str(out), "--dry-run"]
        code, out, err = run_cli(argv)
        assert_documented(code, out, err)
        assert folder_snapshot(Path(tmp)) == before  # a dry run writes nothing


YAML_TEXT = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.:-[]{}#&*!|>'\"%@`, \n\t0123456789", max_size=60),
    st.lists(st.tuples(st.sampled_from([*SECTIONS, "preset", "method.beta", "x"]), VALUES), max_size=3).map(
        lambda kvs: "".join(f"{k}: {v}\n" for k, v in kvs)
    ),
    st.lists(st.tuples(KEYS, VALUES), max_size=3).map(
        lambda kvs: "".join(f"{k.split('.')[0]}:\n  {k.split('.', 1)[-1]}: {v}\n" for k, v in kvs)
    ),
)
FILE_BYTES = st.one_of(st.binary(max_size=200), YAML_TEXT.map(str.encode), st.just(b"PK\x03\x04" + b"\x00" * 40))


@settings(FUZZ, max_examples=FUZZ.max_examples // 8)
@given(
    text=YAML_TEXT,
    blob=FILE_BYTES,
    command=st.sampled_from(["yaml", "yaml-bytes", "resume", "eval", "export", "predict"]),
)
def test_corrupted_files_end_in_a_documented_status(text, blob, command):
    """A config file, a run folder's config.yaml, a checkpoint or an export holding anything."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "run").mkdir()
        if command.startswith("yaml"):
            (root / "c.yaml").write_bytes(blob if command == "yaml-bytes" else text.encode())
            argv = ["train", str(root / "c.yaml"), "--out", str(root / "out"), "--dry-run"]
        elif command == "resume":
            (root / "run" / "config.yaml").write_text(text)
            argv = ["train", "--resume", "--out", str(root / "run"), "--dry-run"]
        else:
            (root / "run" / "last.pt").write_bytes(blob)
            ckpt = str(root / "run" / "last.pt")
            argv = {
                "eval": ["eval", ckpt, "--device", "cpu"],
                "export": ["export", ckpt, "--format", "safetensors", "--out", str(root / "run" / "m.safetensors")],
                "predict": ["predict", ckpt, ckpt],
            }[command]
        before = folder_snapshot(root)
        code, out, err = run_cli(argv)
        assert_documented(code, out, err)
        if code:
            assert folder_snapshot(root) == before


WORD = st.one_of(
    st.sampled_from(["", "-", "--", "x", "0", "-1", "nan", "cpu", "cuda:9", "=", "a=b"]), st.text(max_size=8)
)
PATH = st.sampled_from(["file", "folder", "run", "missing", "missing/deeper", "file/below"])


@settings(FUZZ, max_examples=FUZZ.max_examples // 8)
@given(
    command=st.sampled_from(["eval", "predict", "export", "presets", "runs", "report"]),
    paths=st.lists(PATH, min_size=1, max_size=3),
    words=st.lists(WORD, max_size=3),
    flags=st.lists(
        st.sampled_from(["--device", "--top-k", "--format", "--out", "--data", "--teacher", "--json", "--filter"]),
        max_size=3,
    ),
    blob=FILE_BYTES,
)
def test_generated_command_lines_end_in_a_documented_status(command, paths, words, flags, blob):
    """Other commands with paths to files of random bytes, folders, missing paths and random words."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "file").write_bytes(blob)
        (root / "folder").mkdir()
        (root / "run" / "checkpoints").mkdir(parents=True)
        (root / "run" / "checkpoints" / "last.pt").write_bytes(blob)
        (root / "run" / "config.yaml").write_bytes(blob)
        args = [str(root / p) for p in paths]
        for i, flag in enumerate(flags):
            args += [flag, *([words[i]] if i < len(words) else [])]
        argv = [command, *args, *words[len(flags) :]]
        before = folder_snapshot(root)
        code, out, err = run_cli(argv)
        assert_documented(code, out, err)
        if code:
            assert folder_snapshot(root) == before, argv


@settings(FUZZ, max_examples=FUZZ.max_examples // 8)
@given(
    rows=st.lists(st.lists(st.one_of(st.sampled_from(["a.png", "cat", "train", "val", ""]), st.text(max_size=6)))),
    header=st.sampled_from(["path,label", "path,label,split", "label", ""]),
    blob=FILE_BYTES,
)
def test_damaged_manifests_and_split_files_raise_user_errors(rows, header, blob):
    """A CSV manifest with bad rows, and a split.json edited by hand or of random bytes."""
    from rld.data.sources import Split, manifest_split
    from rld.errors import UserError

    with tempfile.TemporaryDirectory() as tmp:
        manifest, split = Path(tmp) / "m.csv", Path(tmp) / "split.json"
        manifest.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
        split.write_bytes(blob)
        for read in (lambda: manifest_split(manifest, 0.5, 0), lambda: Split.read(split)):
            try:
                read()
            except UserError:
                pass


# ----------------------------------------------------------------------------- damaged files a run reads

TINY_IMAGES = [  # a run on six 12x12 images of two classes, 16x16 inputs: a fraction of a second
    "model.student=resnet8",
    "model.dataset=cifar100",
    "model.student_weights=null",
    "data.image_size=16",
    "data.num_workers=0",
    "data.eval_batch_size=8",
    "train.batch_size=4",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.loggers=[]",
    "--device",
    "cpu",
]
CLASSES = ("a", "b")


def _image_bytes(fmt: str, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """The start of a PNG claiming ``width x height`` pixels (its data missing)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def damaged(data: bytes, how: str, offset: int, payload: bytes) -> bytes:
    """``data`` cut short, with bytes flipped, overwritten or appended, emptied, or kept."""
    at = min(offset, len(data))
    if how == "truncate":
        return data[:at]
    if how == "flip":
        pattern = payload or b"\x01"
        return (
            data[:at]
            + bytes(b ^ (p or 1) for b, p in zip(data[at : at + len(pattern)], pattern))
            + data[at + len(pattern) :]
        )
    if how == "overwrite":
        return data[:at] + payload + data[at + len(payload) :]
    if how == "append":
        return data + payload
    if how == "empty":
        return b""
    return data


DAMAGE = st.tuples(
    st.sampled_from(["truncate", "flip", "overwrite", "append", "empty", "keep"]),
    st.one_of(st.integers(0, 64), st.integers(0, 4096), st.integers(0, 1 << 20)),
    st.binary(max_size=16),
)
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP", "tiff": "TIFF"}
BAD_IMAGE = st.one_of(
    st.tuples(st.sampled_from(sorted(IMAGE_FORMATS)), DAMAGE),
    st.tuples(st.just("random"), st.binary(max_size=200)),
    st.tuples(st.just("text"), st.text(max_size=40)),
    st.tuples(st.just("large"), st.sampled_from([(1, 10**5), (20000, 20000), (10**4, 10**4), (0, 0)])),
    st.tuples(st.just("folder"), st.none()),
)


def _write_bad_image(path: Path, bad) -> None:
    kind, how = bad
    if kind == "folder":
        path.mkdir()
    elif kind == "random":
        path.write_bytes(how)
    elif kind == "text":
        path.write_text(how)
    elif kind == "large":
        path.write_bytes(_png_header(*how))
    else:
        path.write_bytes(damaged(_image_bytes(IMAGE_FORMATS[kind]), *how))


def _image_set(root: Path, layout: str, bad, suffix: str) -> list[str]:
    """Three good PNG images per class and one damaged file ``bad.SUFFIX`` in class a, laid out as a
    single folder, a CSV manifest or train/ and val/ folders; the run's data arguments."""
    for split in ("train", "val") if layout == "trainval" else ("",):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}.png").write_bytes(_image_bytes("PNG", seed=10 * c + i))
    _write_bad_image(root / ("train" if layout == "trainval" else "") / "a" / f"bad.{suffix}", bad)
    if layout == "manifest":
        rows = [f"{name}/{i}.png,{name},{'val' if i == 0 else 'train'}" for name in CLASSES for i in range(3)]
        (root / "labels.csv").write_text("\n".join(["path,label,split", *rows, f"a/bad.{suffix},a,train"]) + "\n")
        return ["--data", str(root / "labels.csv")]
    return ["--data", str(root), *(["data.val_fraction=0.5"] if layout == "folder" else [])]


@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 80))
@given(
    layout=st.sampled_from(["folder", "manifest", "trainval", "predict"]),
    bad=BAD_IMAGE,
    suffix=st.sampled_from(["jpg", "png", "jpeg", "gif", "webp"]),
    skip=st.booleans(),
)
def test_image_files_that_are_not_images_end_in_a_documented_status(shipped, layout, bad, suffix, skip):
    """An image folder, a CSV manifest or train/ and val/ folders that a run trains on, or the images
    rld predict reads, holding a file that is not an image (random bytes, a truncated or damaged image
    of any format, text, an empty file, a header of an enormous image, a folder named like an image)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        argv_data = _image_set(data, "folder" if layout == "predict" else layout, bad, suffix)
        out = Path(tmp) / "run"
        if layout == "predict":
            argv = [
                "predict",
                str(shipped / "exports" / "m.safetensors"),
                str(data / "a"),
                *(["--json"] if skip else []),
            ]
        else:
            argv = ["train", "custom/teacher", *argv_data, *TINY_IMAGES, "--out", str(out)]
            argv += ["data.skip_bad_images=true"] if skip else []
        before = folder_snapshot(data)
        code, _, err = run_cli(argv)
        assert_documented(code, "", err)
        assert folder_snapshot(data) == before
        if code:
            assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # a refused run leaves no folder


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, teacher) -> Path:
    """A finished tiny digits run (``run/``), its student exported in every format (``exports/``),
    a complete teacher-logit cache of a tiny distilled run (``cache/``) and that run (``kd/``)."""
    root = tmp_path_factory.mktemp("shipped")
    argv = ["train", "demo/vanilla", *TINY_DIGITS, "--out", str(root / "run")]
    assert run_cli(argv)[0] == 0
    (root / "exports").mkdir()
    for fmt, name in (("safetensors", "m.safetensors"), ("onnx", "m.onnx"), ("torchscript", "m.ts")):
        code, _, err = run_cli(["export", str(root / "run"), "--format", fmt, "--out", str(root / "exports" / name)])
        assert code == 0, err
    code, _, err = run_cli(["cache", "demo/kd", *TINY_DIGITS, *_teacher(teacher), "--cache-dir", str(root / "cache")])
    assert code == 0, err
    code, _, err = run_cli(["train", "demo/kd", *TINY_DIGITS, *_teacher(teacher), "--out", str(root / "kd")])
    assert code == 0, err
    (root / "images").mkdir()
    (root / "images" / "0.png").write_bytes(_image_bytes("PNG"))
    return root


TINY_DIGITS = [  # a run on 20 digits of 16x16, evaluated on 10 held-out training images
    "data.train_per_class=2",
    "data.holdout=0.5",
    "data.image_size=16",
    "train.batch_size=10",
    "train.epochs=1",
    "train.loggers=[]",
    "--device",
    "cpu",
]


def _teacher(path: Path) -> list[str]:
    return ["model.teacher=resnet8", "--teacher", str(path)]


EXPORTS = {"safetensors": "exports/m.safetensors", "onnx": "exports/m.onnx", "torchscript": "exports/m.ts"}


@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 40))
@given(
    what=st.sampled_from([*EXPORTS, "best.pt", "last.pt", "teacher"]),
    damage=DAMAGE,
    command=st.sampled_from(["predict", "eval", "export", "resume", "train"]),
)
def test_damaged_exports_and_checkpoints_end_in_a_documented_status(shipped, teacher, what, damage, command):
    """An export (safetensors, ONNX, TorchScript) or a run checkpoint cut short, with bytes flipped
    or overwritten, or emptied, read by rld predict, eval, export, train --resume; a damaged teacher
    checkpoint given to rld train --teacher."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(shipped / "run", root / "run")
        shutil.copytree(shipped / "exports", root / "exports")
        shutil.copy(teacher, root / "teacher.pt")
        path = {"best.pt": "run/checkpoints/best.pt", "last.pt": "run/checkpoints/last.pt"}.get(what)
        path = root / (path or EXPORTS.get(what) or "teacher.pt")
        path.write_bytes(damaged(path.read_bytes(), *damage))
        image = shipped / "images" / "0.png"
        if what == "teacher":
            argv = ["train", "demo/kd", *TINY_DIGITS, *_teacher(root / "teacher.pt"), "--out", str(root / "new")]
        elif what in EXPORTS or command == "predict":
            argv = ["predict", str(path), str(image), "--top-k", "3"]
        else:
            argv = {
                "eval": ["eval", str(path), "--device", "cpu"],
                "export": ["export", str(path), "--format", "safetensors", "--out", str(root / "new.safetensors")],
                "resume": ["train", "--resume", "--out", str(root / "run"), "train.epochs=2", "--device", "cpu"],
                "train": ["train", "--resume", "--out", str(root / "run"), "--device", "cpu"],
            }[command]
        before = folder_snapshot(root)
        code, out, err = run_cli(argv)
        assert_documented(code, out, err)
        if code:
            assert folder_snapshot(root) == before, argv


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.lists(st.integers(-2, 200), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
INDEX_ARRAYS = st.tuples(
    st.sampled_from(["as is", "empty and consistent", "wrong shape", "int", "scalar", "missing"]),
    st.sampled_from(["as is", "wrong length", "nan", "negative", "huge", "text", "missing"]),
)
CACHE_DAMAGE = st.one_of(
    st.tuples(st.sampled_from(["logits.npy", "index.npz", "meta.json", "flush.lock"]), st.just("bytes"), DAMAGE),
    st.tuples(
        st.sampled_from(["logits.npy", "index.npz", "meta.json", "flush.lock"]),
        st.sampled_from(["remove", "folder"]),
        st.none(),
    ),
    st.tuples(
        st.just("meta.json"),
        st.just("edit"),
        st.tuples(
            st.sampled_from(["key", "shape", "chunk_images", "precision", "format", "teacher", "root"]),
            st.one_of(st.just("remove"), JSON_VALUES),
        ),
    ),
    st.tuples(st.just("index.npz"), st.just("arrays"), INDEX_ARRAYS),
    st.tuples(
        st.just("logits.npy"),
        st.just("array"),
        st.sampled_from(["float32", "float64", "int16", "other shape", "fortran", "object"]),
    ),
)


def _damage_cache(folder: Path, damage) -> None:
    import json

    import numpy as np

    from rld.fast.cache import _crc

    name, how, what = damage
    path = folder / name
    if how == "bytes":
        path.write_bytes(damaged(path.read_bytes() if path.exists() else b"", *what))
    elif how == "remove":
        path.unlink(missing_ok=True)
    elif how == "folder":
        path.unlink(missing_ok=True)
        path.mkdir()
    elif how == "edit":
        meta = json.loads(path.read_text())
        key, value = what
        if key == "root":
            meta = [meta] if value == "remove" else value
        elif value == "remove":
            meta.pop(key, None)
        else:
            meta[key] = value
        path.write_text(json.dumps(meta))
    elif how == "arrays":
        with np.load(path) as index:
            filled, crcs = index["filled"], index["crc32"]
        fill_how, crc_how = what
        if fill_how == "empty and consistent":
            filled = np.zeros_like(filled)
            crcs = np.array([_crc(None, filled)], dtype=np.uint32)
        filled = {"wrong shape": filled[:-1], "int": filled.astype(np.int64), "scalar": np.array(True)}.get(
            fill_how, filled
        )
        crcs = {
            "wrong length": np.concatenate([crcs, crcs]),
            "nan": np.full(crcs.shape, np.nan),
            "negative": -crcs.astype(np.int64) - 1,
            "huge": crcs.astype(np.int64) + 2**40,
            "text": np.array(["x"] * len(crcs)),
        }.get(crc_how, crcs)
        arrays = {"filled": filled, "crc32": crcs}
        arrays = {k: v for k, v in arrays.items() if (fill_how, crc_how)[k == "crc32"] != "missing"}
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    else:
        values = np.load(path)
        other = {
            "float32": values.astype(np.float32),
            "float64": values.astype(np.float64),
            "int16": values.astype(np.int16),
            "other shape": values[:, :-1],
            "fortran": np.asfortranarray(values),
            "object": values.astype(object),
        }[what]
        np.save(path, other, allow_pickle=True)


@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 40))
@given(damage=CACHE_DAMAGE, command=st.sampled_from(["cache", "full", "lazy"]))
def test_damaged_teacher_logit_caches_end_in_a_documented_status(shipped, teacher, damage, command):
    """A complete teacher-logit cache with a damaged file (logits.npy, index.npz, meta.json cut short,
    with bytes flipped, of random bytes, removed, edited, holding other arrays), used by rld cache and
    by runs with train.teacher_cache=full or lazy: one line and status 2 leave the cache and the run
    folder as they were."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(shipped / "cache", root / "cache")
        (folder,) = (root / "cache").iterdir()
        _damage_cache(folder, damage)
        common = ["demo/kd", *TINY_DIGITS, *_teacher(teacher)]
        if command == "cache":
            argv = ["cache", *common, "--cache-dir", str(root / "cache")]
        else:
            cache = [f"train.teacher_cache={command}", f"train.cache_dir={root / 'cache'}"]
            argv = ["train", *common, *cache, "--out", str(root / "run")]
        before = folder_snapshot(root)
        code, out, err = run_cli(argv)
        assert_documented(code, out, err)
        if code:
            assert folder_snapshot(root) == before, argv


# ----------------------------------------------------------------------------- commands that train

TRAINING_KEYS = st.one_of(  # keys that change what a run builds and trains, and any key
    st.sampled_from(
        [
            "train.epochs", "train.batch_size", "train.lr", "train.device", "train.amp", "train.static_step",
            "train.teacher_cache", "train.checkpoint_every_steps", "train.batch_students", "train.channels_last",
            "train.warmup_epochs", "train.lr_milestones", "data.train_per_class", "data.image_size",
            "data.pipeline", "data.num_workers", "data.holdout", "data.eval_batch_size", "model.student",
            "model.teacher", "model.student_weights", "method.name", "method.temperature", "seed",
        ]
    ),
    KEYS,
)  # fmt: skip
NUMBERS = st.one_of(st.integers(-2, 60).map(str), st.sampled_from(["", "x", "1.5", "nan", "1e9", "0,1", "-"]))
SEEDS_TEXT = st.sampled_from(["0", "0,1", "0,x", "", ",", "-1", "1e3", "0,,1", "a,b", "0 1", "[0]"])
DEVICES = st.sampled_from(["cpu", "cuda", "cuda:9", "meta", "mps", "x", "", "[x]", "auto,cpu"])
GRIDS = st.one_of(
    st.sampled_from(
        [
            "method.temperature=2,4",
            "train.lr=0.1,nan",
            "train.device=cpu,cuda",
            "train.device=cpu,meta",
            "data.train_per_class=2,1000",
            "model.teacher_checkpoint={teacher},{missing}",
            "model.teacher_checkpoint={teacher},{garbage}",
            "model.student=resnet8,nope",
            "model.student_weights=null,{missing}",
            "method.name=kd,vanilla",
            "method.name=kd,fitnet",
            "train.teacher_cache=off,full",
            "data.image_size=16,0",
            "train.batch_size=10,0",
            "train.epochs=1,0",
            "seed=0,-1",
            "train.lr_milestones=[1],[x",
        ]
    ),
    st.tuples(KEYS, st.lists(VALUES, min_size=2, max_size=2)).map(lambda kv: f"{kv[0]}={','.join(kv[1])}"),
)


def _paths(text: str, root: Path, teacher: Path) -> str:
    garbage = root / "garbage.pt"
    if not garbage.exists():
        garbage.write_bytes(b"PK\x03\x04" + bytes(range(60)))
    for name, path in (("teacher", teacher), ("missing", root / "missing.pt"), ("garbage", garbage)):
        text = text.replace("{" + name + "}", str(path))
    return text


def _damaged_copy(shipped: Path, to: Path, config: bytes | None = None) -> None:
    """A copy of the shipped run at ``to``: its last.pt cut short, or its config.yaml replaced."""
    shutil.copytree(shipped / "run", to)
    if config is None:
        last = to / "checkpoints" / "last.pt"
        last.write_bytes(last.read_bytes()[:200])
    else:
        (to / "config.yaml").write_bytes(config)


SURE_MISTAKES = {  # per command: a mistake that is never valid (placed by _training_command)
    "tune": st.sampled_from(["grid", "val-fraction", "seeds", "split-seed", "existing"]),
    "demo": st.sampled_from(["seeds", "device", "override", "out is a file", "teacher", "student"]),
    "plot": st.sampled_from(["run", "flag"]),
}
BAD_GRIDS = st.sampled_from(  # never valid for rld tune
    ["method.temperature=2", "method.nope=1,2", "train.lr=0.1,nan", "seed=0,1", "method.temperature=2,x", "x=1,2"]
)
BAD_SEEDS = st.sampled_from(["0,x", ",", "-1", "a,b", "0 1", "[0]", "1e3"])
BAD_DEVICES = st.sampled_from(["cuda:9", "meta", "mps", "x", "[x]", "auto,cpu", "cpu:0"])
BAD_OVERRIDES = st.sampled_from(
    ["train.epochs=0", "data.train_per_class=1000", "model.student=nope", "train.lr=nan", "data.image_size=-1"]
)


def _training_command(data, command: str, root: Path, shipped: Path, teacher: Path) -> list[str]:
    """A command line of ``command`` that is valid and tiny, but for its generated mistakes: one case
    in six has none for sweep and cache (whose valid runs take a fraction of a second), one in twenty
    for tune, demo and plot, whose other cases hold at least one mistake that is never valid (and
    generated ones: overrides, grids, flags, paths named like YAML, folders holding runs)."""
    odds = 6 if command in ("sweep", "cache") else 20
    choices = [True] * (odds // 2) + [False] + [True] * (odds - 1 - odds // 2)  # (False is not the first)
    mistakes = data.draw(st.sampled_from(choices), label="mistakes")
    sure = data.draw(SURE_MISTAKES[command], label="sure mistake") if mistakes and command in SURE_MISTAKES else None
    overrides = data.draw(st.lists(st.tuples(TRAINING_KEYS, VALUES).map("=".join), max_size=1), label="overrides")
    overrides = overrides if mistakes else []
    out = root / data.draw(st.sampled_from(["out", "[o]", "o #1", "out/deeper"]), label="out")
    digits = ["demo/kd", "data.train_per_class=2", "data.image_size=16", "train.batch_size=10", "train.epochs=1"]
    digits += ["train.loggers=[]", "model.teacher=resnet8", "--teacher", str(teacher)]
    digits += [] if any(o.startswith("train.device=") for o in overrides) else ["--device", "cpu"]
    valid_grid = "method.temperature=2,4"
    if command == "sweep":
        grid = _paths(data.draw(GRIDS, label="grid") if mistakes else valid_grid, root, teacher)
        argv = ["sweep", *digits, "data.holdout=0.5", f"train.cache_dir={root / 'cache'}", grid, *overrides]
        argv += ["--out", str(out)]
        existing = data.draw(st.sampled_from(["none", "finished", "truncated", "edited"])) if mistakes else "none"
        if existing != "none":  # the last planned run's folder holds a run already
            key, values = grid.split("=", 1)
            to = out / f"{key}={values.rsplit(',', 1)[-1]},seed=0"
            if existing == "finished":
                shutil.copytree(shipped / "run", to)
            else:
                _damaged_copy(shipped, to, b"train: {epochs: [" if existing == "edited" else None)
        extra = data.draw(st.lists(st.sampled_from(["--seeds", "--epochs", "--resume", "--json"]), max_size=2))
    elif command == "tune":
        grid = _paths(data.draw(BAD_GRIDS) if sure == "grid" else valid_grid, root, teacher)
        argv = ["tune", *digits, *overrides, "--grid", grid, "--out", str(out)]
        argv += ["--val-fraction", data.draw(st.sampled_from(["0", "1", "nan", "-0.1", "x", "1e-9"]))]
        if sure != "val-fraction":
            argv[-1] = "0.5"
        if sure in ("seeds", "split-seed"):
            argv += [f"--{sure}", data.draw(BAD_SEEDS if sure == "seeds" else st.sampled_from(["-1", "x", "1.5"]))]
        if sure == "existing":  # a grid run's folder holds a damaged run
            _damaged_copy(shipped, out / "grid" / "method.temperature=4,seed=0", None)
            argv += data.draw(st.sampled_from([[], ["--resume"]]))
        extra = data.draw(st.lists(st.sampled_from(["--split-seed", "--seeds", "--epochs"]), max_size=1))
    elif command == "demo":
        argv = ["demo", "--out", str(out), "--seeds", "0", "--device", "cpu", "train.epochs=1"]
        argv += ["data.train_per_class=1", "data.image_size=8", "train.loggers=[]", *overrides]
        if sure in ("seeds", "device"):
            argv[argv.index(f"--{sure}") + 1] = data.draw(BAD_SEEDS if sure == "seeds" else BAD_DEVICES)
        elif sure == "override":
            argv.append(data.draw(BAD_OVERRIDES))
        elif sure == "out is a file":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(b"x")
        elif sure is not None:  # the teacher's, or a student's, folder holds a damaged run
            where = "teacher" if sure == "teacher" else data.draw(st.sampled_from(["vanilla", "kd", "dkd", "rld"]))
            config = data.draw(st.sampled_from([None, b"seed: [", b"train: {epochs: 99}\n"]))
            _damaged_copy(shipped, out / where / ("" if where == "teacher" else "seed0"), config)
        extra = data.draw(st.lists(st.sampled_from(["--seeds", "--device"]), max_size=1))
    elif command == "cache":
        argv = ["cache", *digits, "data.holdout=0.5", *overrides, "--cache-dir", str(out)]
        extra = data.draw(st.lists(st.sampled_from(["--teacher", "--device", "--data"]), max_size=2))
    else:
        kind = data.draw(st.sampled_from(["tsne", "logit-diff", "time-vs-acc", "class-corr"]), label="kind")
        good = "kd" if kind in ("logit-diff", "class-corr") else data.draw(st.sampled_from(["run", "kd"]))
        runs = [good]
        if sure == "run":
            runs.insert(data.draw(st.integers(0, 1)), data.draw(st.sampled_from(["missing", "empty", "file", "bare"])))
        for name in runs:
            if name in ("run", "kd", "bare"):
                shutil.copytree(shipped / ("run" if name == "bare" else name), root / name)
        (root / "empty").mkdir()
        (root / "file").write_bytes(b"x")
        if "bare" in runs:
            shutil.rmtree(root / "bare" / "checkpoints")
        runs = [str(root / r) for r in (runs if kind != "class-corr" else runs[:1])]
        argv = ["plot", kind, *runs, "--out", str(out / "f.png")]
        argv += ["--max-samples", "40"] if kind == "tsne" else ["--device", "cpu"] if kind != "time-vs-acc" else []
        flags = {
            "tsne": ["--max-samples", "--device", "--data"],
            "logit-diff": ["--teacher", "--device", "--data"],
            "time-vs-acc": ["--metric"],
            "class-corr": ["--classes", "--sample", "--k", "--model", "--teacher", "--device"],
        }[kind]
        extra = data.draw(st.lists(st.sampled_from(flags), min_size=sure == "flag", max_size=2)) if sure else []
    values = {
        "--seeds": SEEDS_TEXT,
        "--epochs": NUMBERS,
        "--split-seed": NUMBERS,
        "--device": DEVICES,
        "--teacher": st.sampled_from([str(teacher), str(root / "missing.pt"), _paths("{garbage}", root, teacher)]),
        "--data": st.sampled_from([str(root / "missing"), str(root), "[x]"]),
        "--max-samples": NUMBERS,
        "--sample": NUMBERS,
        "--k": NUMBERS,
        "--classes": st.sampled_from(["0,1", "1", "x", "", "0,0", "99", "leopard,x", "-1"]),
        "--model": st.sampled_from(["student", "teacher", "x"]),
        "--metric": st.sampled_from(["best", "last", "x"]),
    }
    bad = {"--device": BAD_DEVICES, "--teacher": st.sampled_from([str(root / "missing.pt")]), "--data": st.just("[x]")}
    bad.update(
        {"--max-samples": st.just("x"), "--sample": st.just("1e9"), "--k": st.just("x"), "--classes": st.just("x")}
    )
    bad.update({"--model": st.just("x"), "--metric": st.just("x")})
    for n, flag in enumerate(extra if mistakes else []):
        if flag in ("--resume", "--json"):
            argv.append(flag)
            continue
        choose = bad[flag] if sure == "flag" and n == 0 else values[flag]  # (plot: the first one never valid)
        argv += [flag, data.draw(choose, label=flag)]
    return argv


@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 20))
@given(command=st.sampled_from(["sweep", "tune", "demo", "cache", "plot"]), data=st.data())
def test_commands_that_train_end_in_a_documented_status(shipped, teacher, command, data):
    """rld sweep, tune, demo, cache and plot with generated mistakes (overrides, grids, flags, folders
    that exist or hold a run, paths named like YAML): a refusal leaves every folder as it was, so a
    sweep trains none of its runs before refusing another; a valid case trains a tiny run."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        argv = _training_command(data, command, root, shipped, teacher)
        before = folder_snapshot(root)
        code, out, err = run_cli(argv)
        assert_documented(code, out, err, statuses=(0, 2, 3) if command in ("sweep", "tune") else (0, 2))
        if code == 2:
            assert folder_snapshot(root) == before, argv
