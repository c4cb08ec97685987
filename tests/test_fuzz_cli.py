"""Bad input never ends in a traceback: generated ``KEY=VALUE`` overrides, flags and corrupted files
run through the ``rld`` entry point in-process. Every case must end in a documented exit status
(0, or 2 with one line on stderr), raise nothing, and leave the folder it was pointed at as it was.

The cases are derandomized (the same ones on every run, in CI too) and no example database is
written; ``RLD_FUZZ_EXAMPLES=N`` runs N override cases (and N/8 of each
kind of file and command-line case) instead of 2,000."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import folder_snapshot
from rld.cli import main
from rld.config import key_types
from rld.methods import list_methods

FUZZ = settings(
    max_examples=int(os.environ.get("RLD_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
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
    """``main(argv)`` in-process: its exit status (SystemExit included), stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own exits (status 2 for bad arguments)
            code = stop.code if isinstance(stop.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_documented(code: int, out: str, err: str) -> None:
    """Done (status 0, nothing on stderr, no NaN or infinity accepted) or a user error (status 2,
    one line ``rld…: error: …``)."""
    assert code in (0, 2), (code, err)
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
